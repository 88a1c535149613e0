"""The ceiling of a row split on this machine, with no runtime at all: each device's units of a
plan run in their own process, pinned one per core, from inputs computed beforehand, all devices
at once, no message, no broker, no daemon. Against the same model in one process on 1 and on N
threads, in the same run, alternating.

    .venv/bin/python bench/split_bound.py [--models resnet50 yolov5s] [--method equal] [--rounds 5]
        [--out bench/results]

What the daemons add on top of this figure is the runtime's cost (messages, waits, Python);
what this figure adds on top of 1/N is the split's own (halo rows, every device reading every
weight, a partial last row, the cores slowing each other). Writes ``split_bound.json`` and
``split_bound.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cores import cluster_file  # bench/cores.py, beside this script
from save import save_report  # bench/save.py, beside this script

REPO = Path(__file__).resolve().parent.parent

_WORKER = """
import json, statistics, sys, time, torch
sys.path.insert(0, {repo!r})
from controller.graph.trace import trace_model
from controller.planner.methods import METHODS
from controller.planner.plan import build_plan
from controller.zoo import build_model
from edgeflowd.core.packed import pack_convolutions
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import height_of, take_rows
from edgeflowd.core.units import run_unit
from edgeflowd.profiles.devices import load_cluster

model_name, method, cluster_file, device, runs = sys.argv[1:6]
torch.set_num_threads(1)
model, shape = build_model(model_name, None, 0)
x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
graph = trace_model(model, x, model_name)
plan = build_plan(graph, METHODS[method](graph, load_cluster(cluster_file)))
whole = build_plan(graph, METHODS["single"](graph, load_cluster(cluster_file)))
outputs = {{s.name: x for s in graph.sources}}
with torch.no_grad():
    for unit in whole.units:  # every layer's whole output, to slice each unit's inputs from
        if unit.device >= 0:
            ins = [take_rows(outputs[i.producer], i.rows, RowRange(0, height_of(i.shape))) for i in unit.inputs]
            outputs[unit.layer] = run_unit(unit, ins, graph.tensors)
    mine = [
        (u, [take_rows(outputs[i.producer], i.rows, RowRange(0, height_of(i.shape))).contiguous() for i in u.inputs])
        for u in plan.units
        if u.device == int(device)
    ]
    # The convolutions' weights packed as a node packs them for its units (edgeflowd.core.packed).
    convs = [(u.ops[0], tuple(ins[0].shape)) for u, ins in mine if u.ops and ins]
    tensors = {{**graph.tensors, **pack_convolutions(convs, graph.tensors, time.perf_counter)}}
    times = []
    print("ready", flush=True)
    sys.stdin.readline()  # every device starts together
    for _ in range(int(runs)):
        t0 = time.perf_counter()
        for unit, ins in mine:
            run_unit(unit, ins, tensors)
        times.append(time.perf_counter() - t0)
print(json.dumps({{"median_ms": statistics.median(times) * 1e3, "units": len(mine)}}))
"""

_MODEL = """
import json, statistics, sys, time, torch
sys.path.insert(0, {repo!r})
from controller.zoo import build_model
torch.set_num_threads(int(sys.argv[2]))
model, shape = build_model(sys.argv[1], None, 0)
x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
times = []
with torch.no_grad():
    model(x)
    for _ in range(int(sys.argv[3])):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
print(json.dumps({{"median_ms": statistics.median(times) * 1e3}}))
"""


def one_process_ms(model: str, threads: int, runs: int, cpus: list[int]) -> float:
    pin = ["taskset", "-c", ",".join(map(str, cpus))]
    code = _MODEL.format(repo=str(REPO))
    done = subprocess.run(
        [*pin, sys.executable, "-c", code, model, str(threads), str(runs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["median_ms"])


def devices_ms(model: str, method: str, cluster: Path, cores: list[int], runs: int) -> list[float]:
    """Each device's median time for its units, all devices running at once."""
    code = _WORKER.format(repo=str(REPO))
    procs = [
        subprocess.Popen(
            ["taskset", "-c", str(core), sys.executable, "-c", code, model, method, str(cluster), str(d), str(runs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for d, core in enumerate(cores)
    ]
    for proc in procs:  # wait until every device has its inputs ready
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{model}: a device process failed to start")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"{model}: a device process failed")
        out.append(float(json.loads(stdout.strip().splitlines()[-1])["median_ms"]))
    return out


def _run_model(model: str, method: str, cores: list[int], rounds: int, tmp: Path) -> dict[str, Any]:
    n = len(cores)
    cluster = cluster_file(tmp, n)
    one, many, split = [], [], []
    for r in range(rounds):  # alternating, because this machine's speed drifts within minutes
        one.append(one_process_ms(model, 1, 5, cores[:1]))
        split.append(max(devices_ms(model, method, cluster, cores, 5)))
        many.append(one_process_ms(model, n, 5, cores))
        print(
            f"  round {r + 1}: one thread {one[-1]:.1f} ms, {n} devices {split[-1]:.1f} ms, {n} threads {many[-1]:.1f}"
        )
    ratios = [s / o for s, o in zip(split, one, strict=True)]
    return {
        "one_thread_ms": one,
        "n_threads_ms": many,
        "slowest_device_ms": split,
        "x_1thread": statistics.median(ratios),
        "x_1thread_n_threads": statistics.median(m / o for m, o in zip(many, one, strict=True)),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = list(report["models"])
    n = report["cores"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = range(len(models))
    ax.bar(
        [i - 0.2 for i in xs],
        [report["models"][m]["x_1thread"] for m in models],
        0.4,
        label=f"{n} pinned processes, no runtime",
    )
    ax.bar(
        [i + 0.2 for i in xs],
        [report["models"][m]["x_1thread_n_threads"] for m in models],
        0.4,
        color="k",
        label=f"one process, {n} threads",
    )
    ax.axhline(1 / n, color="grey", linestyle=":", label=f"1/{n}")
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="one process, 1 thread")
    ax.set_xticks(list(xs), models)
    ax.set_ylabel("median time / one process on 1 thread")
    ax.set_title(f"The ceiling of the {report['method']} row split on {n} cores, no runtime")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "yolov5s"])
    parser.add_argument("--method", default="equal")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    report: dict[str, Any] = {"cores": len(cores), "method": args.method, "rounds": args.rounds, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            print(model, flush=True)
            t0 = time.monotonic()
            report["models"][model] = _run_model(model, args.method, cores, args.rounds, Path(tmp))
            print(f"  {model}: x_1thread {report['models'][model]['x_1thread']:.2f} ({time.monotonic() - t0:.0f} s)")
    print(json.dumps({m: r["x_1thread"] for m, r in report["models"].items()}))
    save_report(report, args.out, "split_bound", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
