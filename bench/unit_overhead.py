"""A daemon's cost per execution unit: ``tiny_chain`` (200 convolutions of almost no compute)
deployed whole on one ``edgeflowd`` pinned to one core, on a loopback Mosquitto, against the same
model in this process and the same units run in this process through the node runtime, in one run.

    .venv/bin/python bench/unit_overhead.py [--requests 50] [--out bench/results]

Per-unit overhead = (median latency - the bare model's time) / units: what one unit costs beyond
its arithmetic, in the daemon (threads, queues, broker round trip of input and result shared
over the units) and in-process (``run_plan``: the runtime alone). Writes ``unit_overhead.json``
and ``unit_overhead.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_daemons import measure, single_process_ms  # bench/local_daemons.py, beside this script
from save import save_report  # bench/save.py, beside this script

from controller.cli.main import main as edgeflow
from controller.control.verify import plan_runtimes
from controller.graph.trace import trace_model
from controller.lab.launch import DaemonProcess, mosquitto_broker
from controller.planner.partitions import even_partition
from controller.planner.plan import build_plan
from controller.zoo import build_model
from edgeflowd.core.ops import allowed_resolver
from edgeflowd.core.sizes import PACKET_BYTES
from edgeflowd.node.in_memory import run_request

MODEL = "tiny_chain"


def in_process_ms(runs: int) -> tuple[float, int]:
    """Median time of one request through one node runtime and the requester's (no broker)."""
    model, shape = build_model(MODEL, None, 0)
    x = torch.randn(shape)
    graph = trace_model(model, x, MODEL)
    plan = build_plan(graph, even_partition(graph, 1))
    nodes, requester = plan_runtimes(plan, graph.tensors, allowed_resolver, time.perf_counter)  # once, as a node
    run_request(nodes, requester, x, PACKET_BYTES)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run_request(nodes, requester, x, PACKET_BYTES)
        times.append(time.perf_counter() - t0)
    units = sum(1 for u in plan.units if u.device >= 0)
    return statistics.median(times) * 1e3, units


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = ["in process (runtime only)", "daemon (1 in flight)"]
    values = [report["in_process_us_per_unit"], report["daemon_us_per_unit"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, values, color=["#55a868", "#4c72b0"])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f} µs", ha="center", va="bottom")
    ax.set_ylabel("overhead per unit, µs")
    ax.set_title(f"{report['units']} units of {MODEL} on one core")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    bare_ms = single_process_ms(MODEL, 1, 50)
    runtime_ms, units = in_process_ms(20)
    report: dict[str, Any] = {"model": MODEL, "units": units, "bare_ms": bare_ms, "in_process_ms": runtime_ms}
    with tempfile.TemporaryDirectory() as tmp, mosquitto_broker(Path(tmp)) as broker:
        daemon = DaemonProcess("node-a", broker.url, "one", Path(tmp), "--profile", "local-core", cpus=[0])
        try:
            cluster = Path(tmp) / "one.yaml"
            cluster.write_text(
                "schema: edgeflow.cluster/1\nname: one\ndevices:\n  - {id: node-a, profile: local-core}\n"
                "client: {up_mbps: 3000, down_mbps: 3000, latency_ms: 0.2}\n"
            )
            deploy = ["deploy", "--model", MODEL, "--cluster", str(cluster), "--broker", broker.url]
            if edgeflow([*deploy, "--method", "single", "--timeout", "120"]) != 0:
                raise SystemExit("deploy failed")
            report["daemon"] = measure(broker.url, MODEL, args.requests, "one")
        finally:
            daemon.terminate()
    daemon_ms = report["daemon"]["in_flight_1"]["p50_ms"]
    report["in_process_us_per_unit"] = (runtime_ms - bare_ms) / units * 1e3
    report["daemon_us_per_unit"] = (daemon_ms - bare_ms) / units * 1e3
    print(
        f"{units} units: bare {bare_ms:.1f} ms, in process {runtime_ms:.1f} ms, daemon p50 {daemon_ms:.1f} ms; "
        f"overhead per unit: {report['in_process_us_per_unit']:.0f} µs in process, "
        f"{report['daemon_us_per_unit']:.0f} µs in the daemon"
    )
    save_report(report, args.out, "unit_overhead", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
