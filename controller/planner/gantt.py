"""Per-device timeline plot (matplotlib is an optional extra: ``pip install edgeflow[plot]``)."""

from __future__ import annotations

from pathlib import Path

from controller.planner.simulate import Timeline
from edgeflowd.core.units import CLIENT
from edgeflowd.errors import EdgeFlowError
from edgeflowd.profiles.devices import Cluster

__all__ = ["draw_gantt"]

_COLOURS = {"compute": "#4C72B0", "up": "#DD8452", "down": "#55A868"}


def draw_gantt(timeline: Timeline, cluster: Cluster, title: str, out: str | Path) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency, imported only when drawing
        import matplotlib.patches  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise EdgeFlowError("--gantt needs matplotlib: pip install 'edgeflow[plot]'") from exc
    names = ["client", *(d.id for d in cluster.devices)]
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.7 * len(names)))
    offsets = {"compute": 0.0, "up": 0.28, "down": -0.28}
    heights = {"compute": 0.4, "up": 0.14, "down": 0.14}
    for iv in timeline.intervals:
        row = 0 if iv.device == CLIENT else iv.device + 1
        ax.barh(
            row + offsets[iv.resource],
            (iv.end - iv.start) * 1e3,
            left=iv.start * 1e3,
            height=heights[iv.resource],
            color=_COLOURS[iv.resource],
            linewidth=0,
        )
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.axvline(timeline.latency_s * 1e3, color="black", linestyle="--", linewidth=1)
    ax.set_title(f"{title}: {timeline.latency_s * 1e3:.1f} ms predicted")
    handles = [matplotlib.patches.Patch(color=c) for c in _COLOURS.values()]
    ax.legend(handles, ["compute", "uplink", "downlink"], loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
