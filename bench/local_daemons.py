"""Real execution on three local daemons: a model deployed with several partition methods on the
``local-3`` cluster (Mosquitto + three ``edgeflowd`` processes on this machine, one torch thread
each), against the same model in one process. Latency at 1 request in flight, throughput at 4,
and the broker's data traffic per request.

    .venv/bin/python bench/local_daemons.py [--model yolov5s] [--requests 20] [--out bench/results]

Writes ``local_daemons.json`` and ``local_daemons.png`` (needs matplotlib) into ``--out``. All
daemons share this machine's cores, so this measures the runtime's overhead and exactness on real
processes, not the speed-up of separate boards (that is the testbed's job).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from save import save_report  # bench/save.py, beside this script

from controller.cli.main import main as edgeflow
from controller.control.requester import InferenceClient
from controller.control.verify import reference_outputs, relative_error
from controller.lab.launch import DaemonProcess, mosquitto_broker
from controller.zoo import build_model
from edgeflowd.net.settings import BrokerSettings

NODES = ("node-a", "node-b", "node-c")


def single_process_ms(model_spec: str, threads: int, runs: int) -> float:
    """Median ms of the model in this process on ``threads`` torch threads."""
    model, shape = build_model(model_spec, None, 0)
    x = torch.randn(shape)
    _forward_ms(model, x, threads)
    return statistics.median(_forward_ms(model, x, threads) for _ in range(runs))


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _threads_s(process: psutil.Process) -> dict[int, float]:
    """CPU seconds of each of ``process``'s threads, by thread id."""
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def _other_threads_s() -> float:
    """CPU seconds of this process's threads other than the calling one (the broker client's)."""
    me = threading.get_native_id()
    return sum(spent for tid, spent in _threads_s(psutil.Process()).items() if tid != me)


def _forward_ms(model: torch.nn.Module, x: torch.Tensor, threads: int) -> float:
    torch.set_num_threads(threads)
    with torch.no_grad():
        t0 = time.perf_counter()
        model(x)
        return (time.perf_counter() - t0) * 1e3


def measure(
    broker: str,
    model_spec: str,
    requests: int,
    cluster: str = "local-3",
    threads: tuple[int, ...] = (1, 2),
    processes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Latency at 1 request in flight and throughput at 4, the broker traffic, and the worst
    relative error of every output against the local model. ``processes`` (name -> pid: the
    daemons, the broker): the CPU each spent per request at 1 in flight (``cpu_ms``), the
    requester's threads but the one that runs the reference (``requester``), and the nodes' sum
    as a ratio to one thread (``cpu_x_1thread``: what splitting costs in work, whatever the wait);
    and of each process, its busiest thread's and the others' (``threads_ms``: a daemon's busiest
    is the worker that runs its units, the others its network and engine threads).

    This machine's speed drifts by tens of percent within minutes, so the reference runs in the
    same rounds: each timed request is preceded by the same input through the model in this
    process on each of ``threads`` torch threads (the daemons idle meanwhile), and the ratios are
    per round (``x_<t>thread``, median over rounds). Timed requests run untapped: a tap receives
    and decodes every frame between the nodes, which loads the broker and the cores the nodes run
    on. The traffic is counted in a separate tapped pass of a few requests."""
    model, shape = build_model(model_spec, None, 0)
    inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(requests)]
    out: dict[str, Any] = {}
    settings = BrokerSettings(broker)
    tapped = InferenceClient.connect(settings, cluster, model_spec, tap=True)
    try:
        traffic = tapped.measure(inputs[: min(3, requests)], 1, warmup=1)
    finally:
        tapped.close()
    out["predicted_ms"] = tapped.info.predicted_ms
    client = InferenceClient.connect(settings, cluster, model_spec)
    try:
        client.run(iter(inputs[:2]), 1, 60.0)  # warm-up: first-touch allocations on every node
        for t in threads:
            _forward_ms(model, inputs[0], t)
        rounds: list[dict[str, float]] = []
        results = []
        watched = {name: psutil.Process(pid) for name, pid in (processes or {}).items()}
        cpu = dict.fromkeys([*watched, "requester"], 0.0)
        per_thread: dict[str, dict[int, float]] = {name: {} for name in watched}
        for x in inputs:
            # Most threads first: torch's pool spin-waits a few ms after its last parallel op, and
            # that must not overlap the request (whose requester runs torch on one thread).
            sample = {f"{t}": _forward_ms(model, x, t) for t in sorted(threads, reverse=True)}
            before = {name: (_cpu_s(p), _threads_s(p)) for name, p in watched.items()}
            mine = time.thread_time()  # this thread's: the requester's others are its broker client's
            others = _other_threads_s()
            (result,) = client.run(iter([x]), 1, 60.0)
            # Read before the other processes: reading them is this thread's work, not the request's.
            cpu["requester"] += time.thread_time() - mine + _other_threads_s() - others
            for name, p in watched.items():
                total, threads_before = before[name]
                cpu[name] += _cpu_s(p) - total
                for tid, spent in _threads_s(p).items():
                    per_thread[name][tid] = per_thread[name].get(tid, 0.0) + spent - threads_before.get(tid, 0.0)
            results.append((result, x))
            if result.ok:
                sample["daemons"] = result.latency_s * 1e3
                rounds.append(sample)
        four = client.measure(inputs, 4, warmup=0)
    finally:
        client.close()
    pairs = [(r.outputs, x) for r, x in results if r.outputs is not None]
    pairs += [(r.outputs, x) for r, x in zip(four.results, inputs, strict=True) if r.outputs is not None]
    worst = max((relative_error(got, reference_outputs(model, x))[1] for got, x in pairs), default=float("inf"))
    common = {"max_relative_error": worst, "messages_per_request": traffic.messages, "mib_per_request": traffic.mib}
    out["one_process_ms"] = {f"{t}": statistics.median(r[f"{t}"] for r in rounds) for t in threads} if rounds else {}
    one: dict[str, Any] = {"succeeded": len(rounds), "requests": requests, **common}
    if rounds:
        latencies = sorted(r["daemons"] for r in rounds)
        one["p50_ms"] = statistics.median(latencies)
        one["p90_ms"] = latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))]
        for t in threads:
            one[f"x_{t}thread"] = statistics.median(r["daemons"] / r[f"{t}"] for r in rounds)
    if processes and inputs:
        one["cpu_ms"] = {name: round(s * 1e3 / len(inputs), 1) for name, s in cpu.items()}
        busiest = {name: max(spent.values(), default=0.0) for name, spent in per_thread.items()}
        one["threads_ms"] = {
            name: {
                "busiest": round(busiest[name] * 1e3 / len(inputs), 1),
                "others": round(max(0.0, cpu[name] - busiest[name]) * 1e3 / len(inputs), 1),
            }
            for name in per_thread
        }
        nodes = sum(v for k, v in one["cpu_ms"].items() if k not in ("broker", "requester"))
        if "1" in out["one_process_ms"]:  # the ratio is to one thread: only when that was measured
            one["cpu_x_1thread"] = round(nodes / out["one_process_ms"]["1"], 3)
    out["in_flight_1"] = one
    out["in_flight_4"] = {
        "succeeded": four.succeeded,
        "requests": requests,
        "p50_ms": four.p50_ms,
        "p90_ms": four.p90_ms,
        "throughput_rps": four.throughput_rps,
        **common,
    }
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(report["methods"])
    p50 = [report["methods"][n]["in_flight_1"]["p50_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, p50, color="#4c72b0", label="3 local daemons, p50 (1 in flight)")
    for threads, style in (("1", "--"), ("2", ":")):
        ax.axhline(
            report["single_process_ms"][threads],
            color="k",
            linestyle=style,
            label=f"one process, {threads} torch thread(s)",
        )
    ax.set_ylabel("latency, ms")
    ax.set_title(f"{report['model']} on {os.cpu_count()} cores: daemons vs one process")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov5s")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["single", "equal", "edgeflow"])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    report: dict[str, Any] = {"model": args.model, "cores": os.cpu_count(), "requests": args.requests, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp, mosquitto_broker(Path(tmp)) as broker:
        daemons = [DaemonProcess(n, broker.url, "local-3", Path(tmp), "--profile", "local-core") for n in NODES]
        try:
            for method in args.methods:
                code = edgeflow(
                    [
                        "deploy",
                        "--model",
                        args.model,
                        "--cluster",
                        "local-3",
                        "--broker",
                        broker.url,
                        "--method",
                        method,
                    ]
                )
                if code != 0:
                    raise SystemExit(f"deploy with {method} failed")
                report["methods"][method] = measure(broker.url, args.model, args.requests)
                report["single_process_ms"] = report["methods"][method].pop("one_process_ms")  # the latest rounds'
                print(method, json.dumps(report["methods"][method], indent=1))
        finally:
            for daemon in daemons:
                daemon.terminate()
    save_report(report, args.out, "local_daemons", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
