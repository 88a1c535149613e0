"""Plan quality benchmark: predicted latency of every partition method over a grid of zoo models
x clusters (2-8 devices, 1x-8x heterogeneity) x bandwidths (1-1000 Mbit/s), the shipped example
clusters, planning time per model, and the progressive plan's gap to the MILP optimum on graphs
small enough to solve.

    .venv/bin/python bench/plan_quality.py [--quick] [--out bench/results]

Writes ``plan_quality.json`` and ``plan_quality.png`` (needs matplotlib) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from save import save_report  # bench/save.py, beside this script

from controller.graph.trace import trace_model
from controller.planner.methods import METHODS, lower_bound_s, plan_model
from controller.planner.methods.evaluate import predicted_latency
from controller.planner.methods.optimal import model_latency, solve_optimal
from controller.planner.partitions import Partition
from controller.zoo import ZOO, build_model
from edgeflowd.profiles.devices import Cluster, Device, DeviceProfile, Link, load_cluster

BASELINES = ["single", "equal", "coedge", "ftp", "chain"]


def synthetic_cluster(
    n: int, heterogeneity: float, mbps: float, latency_ms: float = 1.0, base_gflops: float = 5.0
) -> Cluster:
    """``n`` devices with rates spread geometrically from ``base_gflops`` to ``heterogeneity`` times that."""
    devices = []
    for i in range(n):
        gflops = base_gflops * heterogeneity ** (i / max(1, n - 1))
        link = Link(mbps, mbps, latency_ms)
        devices.append(Device(f"d{i}", DeviceProfile(f"{gflops:.1f}gflops", gflops, 8000.0, 4, link)))
    return Cluster(f"n{n}-h{heterogeneity:g}-{mbps:g}mbps", tuple(devices), client=Link(mbps, mbps, latency_ms))


def run_config(graph: Any, cluster: Cluster) -> dict[str, Any]:
    methods = {}
    for name in ["edgeflow", "progressive", *BASELINES]:
        planned = plan_model(graph, cluster, name)
        methods[name] = {"latency_s": planned.latency_s, "plan_time_s": planned.plan_time_s}
    best_name = min(BASELINES, key=lambda n: methods[n]["latency_s"])
    edge = methods["edgeflow"]["latency_s"]
    return {
        "cluster": cluster.name,
        "devices": len(cluster),
        "lower_bound_s": lower_bound_s(graph, cluster),
        "methods": methods,
        "best_baseline": best_name,
        "reduction_vs_best_baseline": 1.0 - edge / methods[best_name]["latency_s"],
        "progressive_reduction_vs_best_baseline": 1.0
        - methods["progressive"]["latency_s"] / methods[best_name]["latency_s"],
        "slower_than_single": edge > methods["single"]["latency_s"] + 1e-12,
    }


def milp_gaps(quick: bool) -> list[dict[str, Any]]:
    """The progressive plan against the MILP optimum of the same layer-synchronous model, on
    small_dag with slow devices on fast links, where splitting pays."""
    out = []
    configs = [(24, 2), (32, 2)] if quick else [(24, 2), (32, 2), (24, 3)]
    for size, n in configs:
        model, _ = build_model("small_dag", (1, 3, size, size))
        graph = trace_model(model, torch.zeros(1, 3, size, size), "small_dag")
        cluster = synthetic_cluster(n, 2.0, 1000.0, 0.2, base_gflops=0.5)
        start = time.perf_counter()
        best = solve_optimal(graph, cluster, time_limit_s=60.0)
        solve_s = time.perf_counter() - start
        planned = plan_model(graph, cluster, "progressive")
        prog = model_latency(graph, cluster, planned.partition)
        out.append(
            {
                "input": size,
                "devices": n,
                "milp_s": solve_s,
                "proven_optimal": best.proven,
                "optimal_model_s": best.objective_s,
                "progressive_model_s": prog,
                "gap": None if prog is None else prog / best.objective_s - 1.0,
                "optimal_simulated_s": predicted_latency(graph, cluster, Partition(len(cluster), best.rows)),
                "progressive_simulated_s": planned.latency_s,
            }
        )
        gap = "n/a" if prog is None else f"{prog * 1e3:.2f} ms, gap {(prog / best.objective_s - 1) * 100:.1f}%"
        print(
            f"  milp small_dag@{size} on {n} devices: optimum {best.objective_s * 1e3:.2f} ms "
            f"({'proven' if best.proven else 'best found in the time limit'}, {solve_s:.1f} s), "
            f"progressive {gap}",
            flush=True,
        )
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = ["edgeflow", "progressive", *BASELINES]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    models = sorted({r["model"] for r in report["grid"]})
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        values = []
        for model in models:
            rows = [r for r in report["grid"] if r["model"] == model]
            ratios = [r["methods"][name]["latency_s"] / r["methods"]["single"]["latency_s"] for r in rows]
            values.append(sum(ratios) / len(ratios))
        ax.bar([i + j * width for i in range(len(models))], values, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(models))], models)
    ax.set_ylabel("predicted latency / best single device (mean over grid)")
    ax.set_title("Plan quality over the cluster x bandwidth grid (lower is better)")
    ax.legend(fontsize=8)
    times = report["planning_time_s"]
    ax2.barh(list(times), [v for v in times.values()], color="#4C72B0")
    ax2.set_xlabel("edgeflow planning time, 8 devices (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid (three models, fewer clusters)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = ["resnet50", "inception_v3", "yolov5s"] if args.quick else [m for m in ZOO if m != "small_dag"]
    sizes, hets = ([2, 8], [8.0]) if args.quick else ([2, 4, 8], [1.0, 4.0, 8.0])
    bandwidths = [1.0, 10.0, 100.0, 1000.0]
    report: dict[str, Any] = {"grid": [], "shipped": [], "planning_time_s": {}, "milp": []}
    for model_name in models:
        model, shape = build_model(model_name)
        graph = trace_model(model, torch.zeros(shape), model_name)
        print(f"{graph.summary()}", flush=True)
        for n in sizes:
            for het in hets:
                for mbps in bandwidths:
                    row = run_config(graph, synthetic_cluster(n, het, mbps))
                    report["grid"].append({"model": model_name, **row})
        for name in ("paper-4", "lab-8", "home-3"):
            row = run_config(graph, load_cluster(name))
            report["shipped"].append({"model": model_name, **row})
            print(
                f"  {name:8} edgeflow {row['methods']['edgeflow']['latency_s'] * 1e3:8.1f} ms, best baseline "
                f"{row['best_baseline']} {row['methods'][row['best_baseline']]['latency_s'] * 1e3:8.1f} ms "
                f"({row['reduction_vs_best_baseline'] * 100:+.1f}% reduction)",
                flush=True,
            )
        start = time.perf_counter()
        METHODS["edgeflow"](graph, load_cluster("lab-8"))
        report["planning_time_s"][model_name] = time.perf_counter() - start
        print(f"  planning on lab-8 (8 devices): {report['planning_time_s'][model_name]:.2f} s", flush=True)
    report["milp"] = milp_gaps(args.quick)
    rows = report["grid"] + report["shipped"]
    report["summary"] = {
        "configs": len(rows),
        "edgeflow_slower_than_single": sum(r["slower_than_single"] for r in rows),
        "edgeflow_below_every_baseline": sum(r["reduction_vs_best_baseline"] > 0 for r in rows),
        "progressive_below_every_baseline": sum(r["progressive_reduction_vs_best_baseline"] > 0 for r in rows),
        "progressive_slower_than_single": sum(
            r["methods"]["progressive"]["latency_s"] > r["methods"]["single"]["latency_s"] + 1e-12 for r in rows
        ),
    }
    print(json.dumps(report["summary"]), flush=True)
    save_report(report, out, "plan_quality", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
