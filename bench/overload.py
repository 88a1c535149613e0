"""Overload on three local daemons: a burst of requests far beyond what the cluster can hold (1,000
224x224 inputs at once by default) against its throughput at its best concurrency, in one run.

    .venv/bin/python bench/overload.py [--model resnet18] [--flood 1000] [--max-requests 8] [--out bench/results]

Mosquitto and three ``edgeflowd`` processes (``local-3``, one torch thread each) on this machine, a
plan by ``--method`` (default ``equal``). First the throughput at each of ``--concurrency``
(``--requests`` each; the best is the cluster's capacity), then the burst: every request sent at
once, each one completing or failing (once by a requester that honours what the plan admits, once by
one that sends everything and leaves the refusing to the nodes). Reported: how many completed
against what the capacity completes in the burst's time (the issue's goal: at least 80%), how fast
refusals came (the goal: within a second), every daemon's peak RSS against its model + ``buffer_mb``
+ 200 MB, and, with ``--unlimited``, the same burst on daemons that admit every request (admission
control off in effect), for the before-and-after. Writes ``overload.json`` and ``overload.png`` into
``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from save import save_report  # bench/save.py, beside this script

from controller.cli.main import main as edgeflow
from controller.control.requester import InferenceClient, Result
from controller.lab.launch import DaemonProcess, mosquitto_broker
from controller.zoo import build_model
from edgeflowd.net.settings import BrokerSettings

NODES = ("node-a", "node-b", "node-c")
CLUSTER = "local-3"


class PeakRss:
    """Samples the daemons' resident memory every 0.2 s in a thread; ``peak`` per node, in MiB."""

    def __init__(self, daemons: list[DaemonProcess]) -> None:
        self.processes = {d.node: psutil.Process(d.process.pid) for d in daemons if d.process}
        self.peak = dict.fromkeys(self.processes, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for node, process in self.processes.items():
                with contextlib.suppress(psutil.Error):  # a daemon that just exited
                    self.peak[node] = max(self.peak[node], process.memory_info().rss / 2**20)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(2.0)
        return {n: round(v, 1) for n, v in self.peak.items()}


def _inputs(shape: tuple[int, ...], n: int) -> Iterator[torch.Tensor]:
    """``n`` inputs cycling through 16 distinct ones: a burst of 1,000 holds 16 tensors, not 1,000."""
    pool = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    return itertools.islice(itertools.cycle(pool), n)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def burst(client: InferenceClient, shape: tuple[int, ...], n: int, timeout_s: float, greedy: bool) -> dict[str, Any]:
    """All ``n`` requests at once: what became of them, and in what time. ``greedy``: the client
    ignores what the plan admits and sends all of them (the nodes alone refuse)."""
    info = client.info
    if greedy:
        client.info = msgspec.structs.replace(info, admits=0)
    start = time.perf_counter()
    try:
        results: list[Result] = client.run(_inputs(shape, n), n, timeout_s)
    finally:
        client.info = info
    wall = time.perf_counter() - start
    busy = [r.latency_s for r in results if r.error.startswith("busy: ")]
    other = [r.error for r in results if not r.ok and not r.error.startswith("busy: ")]
    return {
        "requests": n,
        "completed": sum(r.ok for r in results),
        "refused_busy": len(busy),
        "failed_otherwise": len(other),
        "first_other_errors": other[:3],
        "wall_s": round(wall, 3),
        "refusal_s": {
            "p50": round(statistics.median(busy), 3) if busy else 0.0,
            "p99": round(_percentile(busy, 0.99), 3),
            "max": round(max(busy, default=0.0), 3),
        },
    }


def run_cluster(args: argparse.Namespace, max_requests: int, sweep: bool) -> dict[str, Any]:
    """One cluster whose daemons admit ``max_requests`` each: its capacity (``sweep``) and the burst."""
    model, shape = build_model(args.model, None, 0)
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    out: dict[str, Any] = {"max_requests": max_requests}
    with tempfile.TemporaryDirectory() as tmp, mosquitto_broker(Path(tmp)) as broker:
        flags = ("--profile", "local-core", "--max-requests", str(max_requests), "--buffer-mb", str(args.buffer_mb))
        daemons = [DaemonProcess(n, broker.url, CLUSTER, Path(tmp), *flags) for n in NODES]
        try:
            deploy = ["deploy", "--model", args.model, "--cluster", CLUSTER, "--broker", broker.url]
            if edgeflow([*deploy, "--method", args.method, "--timeout", "180"]) != 0:
                raise SystemExit(f"deploy with {args.method} failed")
            rss = PeakRss(daemons)
            client = InferenceClient.connect(BrokerSettings(broker.url), CLUSTER, args.model)
            try:
                client.run(_inputs(shape, 2), 1, 60.0)  # first-touch allocations on every node
                if sweep:
                    out["capacity"] = {}
                    for c in args.concurrency:
                        t0 = time.perf_counter()
                        results = client.run(_inputs(shape, args.requests), c, 60.0)
                        wall = time.perf_counter() - t0
                        ok = sum(r.ok for r in results)
                        out["capacity"][str(c)] = {"completed": ok, "requests": len(results), "rps": ok / wall}
                        print(f"concurrency {c}: {ok}/{len(results)} in {wall:.1f} s, {ok / wall:.2f} requests/s")
                out["burst"] = burst(client, shape, args.flood, args.timeout, greedy=False)
                if sweep:  # the nodes' own refusals, for a requester that does not honour the plan's admits
                    out["burst_greedy"] = burst(client, shape, args.flood, args.timeout, greedy=True)
            finally:
                client.close()
            out["peak_rss_mib"] = rss.stop()
            out["rss_budget_mib"] = round(model_mib + args.buffer_mb + 200, 1)
        finally:
            for daemon in daemons:
                daemon.terminate()
    print(f"max_requests {max_requests}: {json.dumps(out, indent=1)}")
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    runs = report["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    capacity = runs[0]["capacity"]
    levels = list(capacity)
    left.bar([f"{c}\nin flight" for c in levels], [capacity[c]["rps"] for c in levels], color="#4c72b0")
    bursts = [(run, k) for run in runs for k in ("burst", "burst_greedy") if k in run]
    for run, key in bursts:
        b = run[key]
        rate = b["completed"] / b["wall_s"] if b["wall_s"] else 0.0
        who = "nodes\nrefuse" if key == "burst_greedy" else "requester\nrefuses"
        label = f"burst,\n{who}" if run["max_requests"] < report["flood"] else "burst, no\nadmission"
        left.bar([label], [rate], color="#c44e52" if run["max_requests"] >= report["flood"] else "#dd8452")
    left.set_ylabel("completed requests / s")
    left.set_title(f"{report['model']}: capacity, and {report['flood']} requests at once (3 daemons)", fontsize=10)
    names = list(runs[0]["peak_rss_mib"])
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        xs = [j + i * width for j in range(len(names))]
        right.bar(xs, [run["peak_rss_mib"][n] for n in names], width, label=f"admit {run['max_requests']}")
    right.axhline(runs[0]["rss_budget_mib"], color="k", linestyle="--", label="model + buffer_mb + 200 MiB")
    right.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(names))], names)
    right.set_ylabel("peak RSS, MiB")
    right.set_title("daemon memory during the run")
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--method", default="equal")
    parser.add_argument("--flood", type=int, default=1000, help="requests sent at once")
    parser.add_argument("--max-requests", type=int, default=8, help="what each daemon admits")
    parser.add_argument("--buffer-mb", type=float, default=256.0)
    parser.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a burst request fails")
    parser.add_argument("--unlimited", action="store_true", help="also burst daemons that admit every request")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    report: dict[str, Any] = {"model": args.model, "method": args.method, "cores": os.cpu_count(), "flood": args.flood}
    runs = [run_cluster(args, args.max_requests, sweep=True)]
    if args.unlimited:
        runs.append(run_cluster(args, args.flood, sweep=False))
    best = max(v["rps"] for v in runs[0]["capacity"].values())
    for run in runs:
        for b in (run[k] for k in ("burst", "burst_greedy") if k in run):
            b["completed_vs_capacity"] = round(b["completed"] / (best * b["wall_s"]), 3) if b["wall_s"] else 0.0
    report["best_rps"] = round(best, 3)
    report["runs"] = runs
    save_report(report, args.out, "overload", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
