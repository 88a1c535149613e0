"""Fused blocks as candidates of the progressive pass: a run of consecutive layers whose rows
cross devices only where the block begins.

Inside a block every device computes, from what it read at the block's entry, all the rows its
tiles of the block's outputs depend on (:func:`controller.planner.methods.fused.fused_ranges`):
the halo grows backwards through the block and is recomputed instead of exchanged. A block of
``k`` layers trades the messages (and the waits for them) of ``k - 1`` synchronisation rounds
for redundant rows; the cost model prices both, so the pass compares a block with the layer-by-
layer split at the same point of the model and keeps what finishes first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.graph.layers import Layer, LayerGraph
from controller.planner.methods.fused import fused_ranges
from controller.planner.methods.state import Placement, PlanState
from controller.planner.partitions import split_rows
from edgeflowd.errors import PlanError

__all__ = ["BLOCK_LENGTHS", "block_placements", "fusable_run"]

BLOCK_LENGTHS = (2, 4, 8)
"""Block lengths (in layers) tried from each layer where a block may start: up to a residual
block or a CSP stage, few enough that planning YOLOv5s on 8 devices stays near a second."""


def fusable_run(layers: Sequence[Layer], i: int) -> int:
    """How many layers from ``layers[i]`` on may share a block: splittable layers of more than one row."""
    n = 0
    while i + n < len(layers) and layers[i + n].splittable and layers[i + n].height > 1:
        n += 1
    return n


def _frontier(block: Sequence[Layer], users: Mapping[str, list[str]], outputs: Sequence[str]) -> list[Layer]:
    """Layers of ``block`` read outside it (or model outputs): their tiles are the block's split."""
    inside = {layer.name for layer in block}
    return [layer for layer in block if layer.name in outputs or any(u not in inside for u in users[layer.name])]


def block_placements(
    state: PlanState,
    graph: LayerGraph,
    block: Sequence[Layer],
    shares: Sequence[float],
    users: Mapping[str, list[str]],
    eligible: Sequence[int],
) -> list[Placement] | None:
    """The placements of ``block`` fused, its outputs split by ``shares``, evaluated one after the
    other on a fork of ``state``; None when a device would need memory it does not have."""
    n = len(state.cluster)
    frontier = {layer.name: split_rows(layer.height, list(shares)) for layer in _frontier(block, users, graph.outputs)}
    ranges = fused_ranges(graph, list(block), frontier, n)
    trial = state.fork()
    placed: list[Placement] = []
    for layer in block:
        rows = ranges[layer.name]
        try:
            fits = set(trial.eligible(layer)) & set(eligible)
        except PlanError:
            return None
        if any(not r.empty and d not in fits for d, r in enumerate(rows)):
            return None
        placement = trial.evaluate(layer, rows)
        trial.commit(layer, placement)
        placed.append(placement)
    return placed
