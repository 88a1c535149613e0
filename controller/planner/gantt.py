"""Per-device timeline plots (matplotlib is an optional extra: ``pip install edgeflow[plot]``):
the simulator's prediction of a plan, and beside it what one request measured on the nodes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from controller.planner.simulate import Timeline
from edgeflowd.core.units import CLIENT
from edgeflowd.errors import EdgeFlowError
from edgeflowd.profiles.devices import Cluster

__all__ = ["draw_gantt", "draw_timelines"]

_COLOURS = {"compute": "#4C72B0", "up": "#DD8452", "down": "#55A868"}


def draw_gantt(timeline: Timeline, cluster: Cluster, title: str, out: str | Path) -> None:
    """The predicted timeline of a plan on ``cluster``."""
    draw_timelines([("predicted", timeline)], [d.id for d in cluster.devices], title, out)


def draw_timelines(panels: Sequence[tuple[str, Timeline]], nodes: Sequence[str], title: str, out: str | Path) -> None:
    """One panel per (what, timeline), on one time axis: a row for the requester, one per node
    (``nodes[d]`` is device ``d``)."""
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency, imported only when drawing
        import matplotlib.patches  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise EdgeFlowError("drawing a timeline needs matplotlib: pip install 'edgeflow[plot]'") from exc
    names = ["client", *nodes]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(11, (1.0 + 0.7 * len(names)) * len(panels)), sharex=True, squeeze=False
    )
    offsets = {"compute": 0.0, "up": 0.28, "down": -0.28}
    heights = {"compute": 0.4, "up": 0.14, "down": 0.14}
    for ax, (what, timeline) in zip(axes[:, 0], panels, strict=True):
        for iv in timeline.intervals:
            row = 0 if iv.device == CLIENT else iv.device + 1
            ax.barh(
                row + offsets[iv.resource],
                max(iv.end - iv.start, 0.0) * 1e3,
                left=iv.start * 1e3,
                height=heights[iv.resource],
                color=_COLOURS[iv.resource],
                linewidth=0,
            )
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.axvline(timeline.latency_s * 1e3, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{title}: {timeline.latency_s * 1e3:.1f} ms {what}", fontsize=10)
    axes[-1, 0].set_xlabel("time since the request was sent (ms)")
    handles = [matplotlib.patches.Patch(color=c) for c in _COLOURS.values()]
    axes[0, 0].legend(handles, ["compute", "sending (uplink)", "receiving (downlink)"], loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
