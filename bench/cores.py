"""The runtime's efficiency figure, with no emulation and nothing to calibrate: N ``edgeflowd``
pinned one per core (N = 1 .. this machine's cores), one torch thread each, on a loopback
Mosquitto, against the same model in one process on 1 and on N torch threads, all in one run.

    .venv/bin/python bench/cores.py [--models resnet50 yolov5s inception_v3 mobilenet_v2]
        [--methods edgeflow equal] [--schedules auto whole] [--requests 20] [--rates learned|measured]
        [--out bench/results]

For each model, N and method it reports the median latency at 1 request in flight and the
throughput at 4, each also as a ratio to one process (``x_1thread``: daemons / one thread,
``x_nthreads``: daemons / N threads; below 1 is faster), and the worst relative error of every
output; and, at 1 in flight, the CPU each daemon, the broker and the requester spent per
request, the nodes' sum as a ratio to one thread (``cpu_x_1thread``: what the split costs in
work, apart from any wait), and each daemon's split of it between the worker that runs its units
and its other threads (``threads_ms``: network and engine). Writes ``cores.json`` and
``cores.png`` into ``--out``. The one-process reference runs in the same rounds as the
requests (each request follows the same input through the model here, on 1 and N threads), and
each ratio is the median of the rounds' ratios: this machine's speed drifts by tens of percent
within minutes.

Plans rest on measurements only: with ``--rates learned`` (the default) the controller runs while
warm-up requests flow and fits each node's cost model from its real unit times, and every method
is planned on that fit (as ``edgeflow demo`` does); ``--rates measured`` plans on the nodes'
start-up benchmarks alone, as a one-shot ``edgeflow deploy`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from local_daemons import measure  # bench/local_daemons.py, beside this script
from save import save_report  # bench/save.py, beside this script

from controller.cli.main import main as edgeflow
from controller.control.deploy import deploy_plans
from controller.graph.trace import trace_model
from controller.lab.launch import Broker, DaemonProcess, controller_process, mosquitto_broker, wait_online
from controller.lab.learn import PlaneWatch, fitted_cluster, learn_costs, planned_as_learned
from controller.planner.methods import SCHEDULES
from controller.zoo import build_model
from edgeflowd.profiles.devices import Cluster, load_cluster
from edgeflowd.wire.messages import Costs

MODELS = ("resnet50", "yolov5s", "inception_v3", "mobilenet_v2")
TELEMETRY_S = 1.0
"""The daemons' telemetry interval: the load they report follows the benchmark's own pauses."""


def cluster_file(tmp: Path, n: int) -> Path:
    """A cluster of ``n`` local cores (``local-core`` profile) named ``cores-N``, written under ``tmp``."""
    path = tmp / f"cores-{n}.yaml"
    devices = "".join(f"  - {{id: node-{i}, profile: local-core}}\n" for i in range(n))
    path.write_text(
        f"schema: edgeflow.cluster/1\nname: cores-{n}\ndevices:\n{devices}"
        "client: {up_mbps: 3000, down_mbps: 3000, latency_ms: 0.2}\n"
    )
    return path


def _variants(methods: list[str], schedules: list[str], n: int) -> list[tuple[str, str, str]]:
    """(key, method, schedule) to deploy on ``n`` daemons; one daemon sends no halo, so it gets the
    first schedule only."""
    out = []
    for method in methods:
        for k, schedule in enumerate(schedules if n > 1 else schedules[:1]):
            out.append((f"{n}/{method}" if k == 0 else f"{n}/{method}/{schedule}", method, schedule))
    return out


def _learned(broker: Broker, tmp: Path, cluster: Path, model: str, nodes: list[str]) -> tuple[Cluster, Costs]:
    """The cluster as the controller fitted it from warm-up requests (controller.lab.learn), and
    what it published."""
    _, shape = build_model(model, None, 0)
    inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(6)]
    watch = PlaneWatch(broker, cluster.stem, model)
    try:
        with controller_process(broker, tmp, str(cluster), model, "--method", "edgeflow", "--rates", "measured"):
            costs = learn_costs(watch, broker, model, inputs, nodes)
    finally:
        watch.close()
    print("  learned: " + ", ".join(f"{n} {c.source} {c.gflops:.1f} GFLOP/s" for n, c in costs.nodes.items()))
    if costs.alone:
        print(
            f"  the controller measured {costs.alone} alone faster than its split: EdgeFlow's plan is that node alone"
        )
    return fitted_cluster(load_cluster(str(cluster)), costs), costs


def _deploy(
    broker: Broker, cluster: Path, model: str, method: str, schedule: str, learned: tuple[Cluster, Costs] | None
) -> None:
    """Deploy ``method``'s plan: on ``learned`` when given, else as ``edgeflow deploy`` plans (on
    what the nodes' start-up benchmarks measured)."""
    if learned is None:
        deploy = ["deploy", "--model", model, "--cluster", str(cluster), "--broker", broker.url]
        if edgeflow([*deploy, "--method", method, "--schedule", schedule, "--timeout", "120"]) != 0:
            raise SystemExit(f"{model}: deploy with {method} ({schedule}) failed")
        return
    net, shape = build_model(model, None, 0)
    graph = trace_model(net, torch.zeros(shape), model)
    fitted, costs = learned
    planned = planned_as_learned(graph, fitted, costs, method, schedule)
    nodes = [d.id for d in fitted.devices]
    deploy_plans(broker.settings, fitted.name, [(planned, graph)], nodes, timeout_s=120.0)


def _run_model(
    model: str, cores: list[int], methods: list[str], schedules: list[str], requests: int, rates: str, tmp: Path
) -> dict[str, Any]:
    n_max = len(cores)
    threads = tuple(sorted({1, n_max}))
    result: dict[str, Any] = {"one_process_ms": {}, "daemons": {}}
    for n in range(1, n_max + 1):
        cluster = cluster_file(tmp, n)
        with mosquitto_broker(tmp) as broker:
            flags = ["--profile", "local-core", "--telemetry-interval-s", str(TELEMETRY_S)]
            daemons = [
                DaemonProcess(f"node-{i}", broker.url, f"cores-{n}", tmp, *flags, cpus=[cores[i]]) for i in range(n)
            ]
            try:
                wait_online(broker, f"cores-{n}", [d.node for d in daemons], timeout_s=120.0)
                learned = (
                    _learned(broker, tmp, cluster, model, [d.node for d in daemons]) if rates == "learned" else None
                )
                for key, method, schedule in _variants(methods, schedules, n):
                    # The reference just run here loaded the nodes' cores: let their telemetry say
                    # they are free again before the plan is made on what they report.
                    time.sleep(2.5 * TELEMETRY_S)
                    _deploy(broker, cluster, model, method, schedule, learned)
                    processes = {"broker": broker.process.pid, **{d.node: d.process.pid for d in daemons if d.process}}
                    got = measure(broker.url, model, requests, f"cores-{n}", threads, processes)
                    reference = got.pop("one_process_ms")  # measured in the same rounds as the requests
                    result["one_process_ms"][key] = reference
                    one, four = got["in_flight_1"], got["in_flight_4"]
                    one["x_nthreads"] = one[f"x_{n_max}thread"]
                    four["x_1thread_rps"] = four["throughput_rps"] * reference["1"] / 1e3
                    four["x_nthreads_rps"] = four["throughput_rps"] * reference[str(n_max)] / 1e3
                    result["daemons"][key] = got
                    print(
                        f"  {key:<18} p50 {one['p50_ms']:7.1f} ms = {one['x_1thread']:.2f}x one thread,"
                        f" {one['x_nthreads']:.2f}x {n_max} threads (one process: {reference} ms);"
                        f" predicted {got['predicted_ms']:.1f} ms;"
                        f" {four['throughput_rps']:.2f} req/s at 4 in flight; error {one['max_relative_error']:.1e}"
                    )
                    spent = ", ".join(f"{k} {v:.0f}" for k, v in one.get("cpu_ms", {}).items())
                    work = one.get("cpu_x_1thread", 0.0)
                    print(f"  {'':<18} CPU ms per request: {spent}; the nodes' = {work:.2f}x one thread")
                    split = ", ".join(
                        f"{k} {v['busiest']:.0f} + {v['others']:.0f}"
                        for k, v in one.get("threads_ms", {}).items()
                        if k != "broker"
                    )
                    print(f"  {'':<18} of which the busiest thread (the worker) + the other threads: {split}")
            finally:
                for daemon in daemons:
                    daemon.terminate()
    return result


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = list(report["models"])
    keys = list(next(iter(report["models"].values()))["daemons"])
    n_max = report["cores"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / (len(keys) + 1)
    for k, key in enumerate(keys):
        ratios = [report["models"][m]["daemons"][key]["in_flight_1"]["x_1thread"] for m in models]
        ax.bar(
            [i + k * width for i in range(len(models))],
            ratios,
            width,
            label=key.replace("/", " daemon(s), ", 1).replace("/", ", "),
        )
    last = keys[-1]  # the reference measured in the rounds of the last variant (n_max daemons)
    threads = [
        report["models"][m]["one_process_ms"][last][str(n_max)] / report["models"][m]["one_process_ms"][last]["1"]
        for m in models
    ]
    ax.bar(
        [i + len(keys) * width for i in range(len(models))],
        threads,
        width,
        color="k",
        label=f"one process, {n_max} threads",
    )
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="one process, 1 thread")
    ax.set_xticks([i + len(keys) * width / 2 for i in range(len(models))], models)
    ax.set_ylabel("median latency / one process on 1 thread")
    ax.set_title(f"Daemons pinned one per core vs one process ({n_max} cores, 1 request in flight)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=["edgeflow", "equal"])
    parser.add_argument(
        "--schedules", nargs="+", choices=SCHEDULES, default=["auto"], help="the first is each method's own figure"
    )
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument(
        "--rates",
        choices=["learned", "measured"],
        default="learned",
        help="plan on the cost model the controller fits from warm-up requests (default), or on the "
        "nodes' start-up benchmarks alone (as `edgeflow deploy` does)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    report: dict[str, Any] = {
        "cores": len(cores),
        "requests": args.requests,
        "methods": args.methods,
        "schedules": args.schedules,
        "rates": args.rates,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            report["models"][model] = _run_model(
                model, cores, args.methods, args.schedules, args.requests, args.rates, Path(tmp)
            )
    print(
        json.dumps(
            {
                m: {k: v["in_flight_1"]["x_1thread"] for k, v in r["daemons"].items()}
                for m, r in report["models"].items()
            }
        )
    )
    save_report(report, args.out, "cores", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
