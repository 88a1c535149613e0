"""End-to-end latency on the emulated testbed (run as root): the devices of a cluster file as
cgroup CPU quotas in proportion to their declared speeds, each in its own network namespace behind
a tbf-shaped link at its declared rates (default profiles/clusters/testbed-4.yaml: four devices
1x-4x apart, 50-200 Mbit/s). For each model, ``edgeflow demo``'s run: the controller learns every
node's cost model from what the nodes measure (their benchmarks, their units' times, the requests'
latencies), then every method is planned on that model, deployed, and sent the same requests one
at a time; the median and p90 latency are recorded beside the prediction. The declared speeds only
set the emulation. Writes bench/results/e2e.json and e2e.png.

    .venv/bin/python bench/e2e.py [--models yolov5s resnet50] [--requests 20] [--cluster FILE] [--cores 1.0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from save import save_report  # bench/save.py, beside this script

from controller.lab.demo import CLUSTER, CORES, run_demo
from controller.lab.launch import unwind_on_signals
from edgeflowd.profiles.devices import load_cluster


def run(models: list[str], methods: list[str], requests: int, cluster: str, cores: float) -> dict[str, Any]:
    report: dict[str, Any] = {"cluster": load_cluster(cluster).name, "cores": cores, "requests": requests, "models": {}}
    baselines = [m for m in methods if m != "edgeflow"]
    for model in models:
        rows = run_demo(model, baselines, requests, cluster_spec=cluster, cores=cores)
        report["models"][model] = {
            r.method: {
                "succeeded": r.succeeded,
                "requests": r.requests,
                "median_ms": r.p50_ms,
                "p90_ms": r.p90_ms,
                "predicted_ms": r.predicted_ms,
                "max_relative_error": r.relative_error,
                "messages": r.messages,
                "mib": r.mib,
            }
            for r in rows
        }
    return report


def table(report: dict[str, Any]) -> list[str]:
    lines = [f"{'model':<13} {'method':<9} {'median ms':>10} {'p90 ms':>8} {'predicted':>10} {'pred/meas':>9}  ok"]
    for model, rows in report["models"].items():
        for method, r in rows.items():
            lines.append(
                f"{model:<13} {method:<9} {r['median_ms']:>10.0f} {r['p90_ms']:>8.0f} "
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
            yerr=[[0] * len(names), [rows[n]["p90_ms"] - rows[n]["median_ms"] for n in names]],
        )
        ax.scatter(names, [rows[n]["predicted_ms"] for n in names], color="#dd8452", zorder=3, label="predicted")
        ax.set_title(model)
        ax.set_ylabel("latency, ms (bar: median, whisker: p90)")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{report['cluster']}: devices as cgroup quotas of {report['cores']:g} core in all, tbf links; "
        "planned on measured costs",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["yolov5s", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=["edgeflow", "single", "equal", "coedge", "ftp"])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--cluster", default=CLUSTER, help="cluster file to emulate")
    parser.add_argument("--cores", type=float, default=CORES, help="cores the devices' quotas add up to")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    unwind_on_signals()
    report = run(args.models, args.methods, args.requests, args.cluster, args.cores)
    print("\n".join(table(report)))
    save_report(report, args.out, "e2e", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
