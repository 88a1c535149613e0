"""Text summaries of plans for people (pure: values in, strings out)."""

from __future__ import annotations

from typing import Any

from controller.graph.layers import LayerGraph
from controller.planner.methods import Planned
from edgeflowd.core.sizes import ELEMENT_BYTES
from edgeflowd.core.slicing import row_numel
from edgeflowd.core.units import CLIENT
from edgeflowd.profiles.devices import Cluster

__all__ = ["compare_table", "method_summary", "plan_figures", "split_summary"]


def plan_figures(planned: Planned) -> dict[str, Any]:
    """Figures of one planned method, as written to ``--json``."""
    remote = [(u, f) for u, f, dst in planned.plan.messages() if dst != u.device]
    row_bytes = {u.uid: ELEMENT_BYTES * row_numel(u.out_shape) for u in planned.plan.units}
    return {
        "latency_s": planned.latency_s,
        "plan_time_s": planned.plan_time_s,
        "units": sum(1 for u in planned.plan.units if u.device != CLIENT),
        "remote_messages": len(remote),
        "remote_bytes": sum(row_bytes[u.uid] * len(f.rows) for u, f in remote),
    }


def split_summary(graph: LayerGraph, cluster: Cluster, planned: Planned) -> list[str]:
    """Consecutive layers with the same shares per device, one line per run of layers."""
    lines: list[str] = []
    run: list[str] = []
    last: tuple[int, ...] | None = None

    def flush() -> None:
        if run and last is not None:
            head = run[0] if len(run) == 1 else f"{run[0]} .. {run[-1]} ({len(run)} layers)"
            shares = "  ".join(f"{cluster.devices[d].id} {p:>3d}%" for d, p in enumerate(last) if p)
            lines.append(f"  {head:<46} {shares}")

    for layer in graph.compute_layers:
        ranges = planned.partition.rows[layer.name]
        shares = tuple(round(100 * len(r) / layer.height) for r in ranges)
        if shares != last:
            flush()
            run, last = [], shares
        run.append(layer.name)
    flush()
    return lines


def method_summary(graph: LayerGraph, cluster: Cluster, planned: Planned) -> list[str]:
    fig = plan_figures(planned)
    lines = [
        f"method {planned.method}: predicted latency {planned.latency_s * 1e3:.1f} ms, planned in "
        f"{planned.plan_time_s:.2f} s; {fig['units']} units, {fig['remote_messages']} messages between "
        f"devices ({fig['remote_bytes'] / 2**20:.2f} MiB)",
        f"{'device':<12} {'units':>6} {'GFLOP':>8} {'busy ms':>8} {'up ms':>7} {'down ms':>8}",
    ]
    for d, dev in enumerate(cluster.devices):
        units = planned.plan.on_device(d)
        gflop = sum(graph[u.layer].flops * len(u.rows) / graph[u.layer].height for u in units) / 1e9
        tl = planned.timeline
        lines.append(
            f"{dev.id:<12} {len(units):>6} {gflop:>8.2f} {tl.busy_s(d) * 1e3:>8.1f} "
            f"{tl.busy_s(d, 'up') * 1e3:>7.1f} {tl.busy_s(d, 'down') * 1e3:>8.1f}"
        )
    lines.append("rows per device (share of each layer's rows; runs of layers with the same split):")
    return lines + split_summary(graph, cluster, planned)


def compare_table(results: dict[str, Planned], lower_bound_s: float) -> list[str]:
    lines = [
        f"{'method':<12} {'latency ms':>11} {'x bound':>8} {'plan s':>8} {'units':>6} {'messages':>9} {'MiB sent':>9}",
        f"{'bound':<12} {lower_bound_s * 1e3:>11.1f} {1.0:>8.2f}",
    ]
    for name, planned in results.items():
        fig = plan_figures(planned)
        lines.append(
            f"{name:<12} {planned.latency_s * 1e3:>11.1f} {planned.latency_s / lower_bound_s:>8.2f} "
            f"{planned.plan_time_s:>8.3f} {fig['units']:>6} {fig['remote_messages']:>9} "
            f"{fig['remote_bytes'] / 2**20:>9.2f}"
        )
    baselines = {n: p.latency_s for n, p in results.items() if n not in ("edgeflow", "progressive", "optimal")}
    if "edgeflow" in results and baselines:
        best = min(baselines, key=lambda n: baselines[n])
        change = (results["edgeflow"].latency_s - baselines[best]) / baselines[best]
        if abs(change) < 5e-4:
            lines.append(f"edgeflow is as fast as the best baseline ({best}), predicted")
        else:
            verdict = "faster" if change < 0 else "slower"
            lines.append(f"edgeflow is {abs(change) * 100:.1f}% {verdict} than the best baseline ({best}), predicted")
    return lines
