"""End-to-end latency on the emulated testbed (run as root): four devices 1x-4x apart as cgroup CPU
quotas, each in its own network namespace behind a tbf-shaped link of 50-200 Mbit/s
(profiles/clusters/testbed-4.yaml), one Mosquitto listening on every link. For each model and
method: deploy, send requests one at a time, and record the median and p95 latency beside the
cost model's prediction. Writes bench/results/e2e.json and e2e.png.

    .venv/bin/python bench/e2e.py [--models yolov5s resnet50 inception_v3] [--requests 20]
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
from save import save_report  # bench/save.py, beside this script

from controller.cli.main import main as edgeflow
from controller.control.requester import InferenceClient
from controller.control.verify import reference_outputs, relative_error
from controller.lab.launch import DaemonProcess, local_broker, unwind_on_signals, wait_online
from controller.lab.testbed import Testbed, slots_for
from controller.terminal import progress_bar
from controller.zoo import build_model
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.profiles.devices import load_cluster

CLUSTER = "testbed-4"
CORES = 1.0  # the four quotas together: one of the machine's two cores; the other runs the broker


def measure(broker: str, model_spec: str, requests: int) -> dict[str, Any]:
    model, shape = build_model(model_spec, None, 0)
    inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(requests)]
    client = InferenceClient.connect(BrokerSettings(broker), CLUSTER, model_spec)
    try:
        m = client.measure(inputs, 1, warmup=2, timeout_s=120.0, on_result=progress_bar(requests, model_spec))
    finally:
        client.close()
    ok = m.latencies_ms
    pairs = [(r.outputs, x) for r, x in zip(m.results, inputs, strict=True) if r.outputs is not None]
    worst = max(relative_error(got, reference_outputs(model, x))[1] for got, x in pairs)
    return {
        "succeeded": m.succeeded,
        "requests": requests,
        "median_ms": statistics.median(ok),
        "p95_ms": ok[round(0.95 * (len(ok) - 1))],
        "predicted_ms": client.info.predicted_ms,
        "max_relative_error": worst,
        "latencies_ms": ok,
    }


def run(models: list[str], methods: list[str], requests: int) -> dict[str, Any]:
    cluster = load_cluster(CLUSTER)
    slots = slots_for(cluster, CORES)
    report: dict[str, Any] = {
        "cluster": CLUSTER,
        "cores": CORES,
        "requests": requests,
        "slots": [s.__dict__ for s in slots],
        "models": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="edgeflow-e2e-") as tmp,
        Testbed(slots) as bed,
        local_broker(Path(tmp), "mosquitto", [bed.host_ip(s) for s in slots]) as broker,
    ):
        daemons = [
            DaemonProcess(
                s.node,
                broker.url_at(bed.host_ip(s)),
                CLUSTER,
                Path(tmp),
                "--profile",
                "local-core",
                prefix=bed.command(s, []),
            )
            for s in slots
        ]
        try:
            wait_online(broker, CLUSTER, [s.node for s in slots], timeout_s=120.0)
            bed.throttle()
            for model in models:
                report["models"][model] = {}
                for method in methods:
                    t0 = time.monotonic()
                    code = edgeflow(
                        [
                            "deploy",
                            "--model",
                            model,
                            "--cluster",
                            CLUSTER,
                            "--broker",
                            broker.url,
                            "--method",
                            method,
                            "--timeout",
                            "300",
                        ]
                    )
                    if code != 0:
                        raise SystemExit(f"deploy of {model} with {method} failed")
                    row = measure(broker.url, model, requests)
                    report["models"][model][method] = row
                    print(
                        f"{model} {method}: median {row['median_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, "
                        f"predicted {row['predicted_ms']:.0f} ms ({time.monotonic() - t0:.0f} s)",
                        flush=True,
                    )
        finally:
            for daemon in daemons:
                daemon.terminate()
    return report


def table(report: dict[str, Any]) -> list[str]:
    lines = [f"{'model':<13} {'method':<9} {'median ms':>10} {'p95 ms':>8} {'predicted':>10} {'pred/meas':>9}  ok"]
    for model, rows in report["models"].items():
        for method, r in rows.items():
            lines.append(
                f"{model:<13} {method:<9} {r['median_ms']:>10.0f} {r['p95_ms']:>8.0f} "
                f"{r['predicted_ms']:>10.0f} {r['predicted_ms'] / r['median_ms']:>9.2f}  "
                f"{r['succeeded']}/{r['requests']}"
            )
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = list(report["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = report["models"][model]
        names = list(rows)
        ax.bar(names, [rows[n]["median_ms"] for n in names], color="#4c72b0", label="measured median")
        ax.errorbar(
            names,
            [rows[n]["median_ms"] for n in names],
            fmt="none",
            ecolor="k",
            capsize=3,
            yerr=[[0] * len(names), [rows[n]["p95_ms"] - rows[n]["median_ms"] for n in names]],
        )
        ax.scatter(names, [rows[n]["predicted_ms"] for n in names], color="#dd8452", zorder=3, label="predicted")
        ax.set_title(model)
        ax.set_ylabel("latency, ms (bar: median, whisker: p95)")
        ax.legend(fontsize=8)
    fig.suptitle("testbed-4: 4 devices 1x-4x (cgroup quotas), 50-200 Mbit/s (tbf)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["yolov5s", "resnet50", "inception_v3"])
    parser.add_argument("--methods", nargs="+", default=["edgeflow", "single", "equal", "coedge", "ftp"])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    unwind_on_signals()
    report = run(args.models, args.methods, args.requests)
    print("\n".join(table(report)))
    save_report(report, args.out, "e2e", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
