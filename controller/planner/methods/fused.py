"""Fused tiles: a block of consecutive layers in which every device computes, by itself, all the
rows its tile of the block's outputs depends on (DeepThings' fused tile partitioning, applied to a
DAG). Halos are recomputed instead of exchanged: more compute, no messages inside the block."""

from __future__ import annotations

from collections.abc import Mapping

from controller.graph.layers import Layer, LayerGraph
from edgeflowd.core.rows import RowRange

__all__ = ["fusable_prefix", "fused_ranges"]


def fusable_prefix(graph: LayerGraph) -> list[Layer]:
    """Compute layers in topological order up to the first one that cannot be split by rows."""
    prefix: list[Layer] = []
    for layer in graph.compute_layers:
        if not layer.splittable:
            break
        prefix.append(layer)
    return prefix


def _fill_gaps(ranges: list[RowRange], height: int) -> list[RowRange]:
    """Stretch ranges over rows nobody needs (a stride skips them) so the union covers [0, H)."""
    order = sorted((r.start, d) for d, r in enumerate(ranges) if not r.empty)
    cursor = 0
    for i, (_, d) in enumerate(order):
        r = ranges[d]
        start = min(r.start, cursor) if i else 0
        stop = height if i == len(order) - 1 else r.stop
        ranges[d] = RowRange(start, max(stop, r.stop))
        cursor = max(cursor, ranges[d].stop)
    return ranges


def fused_ranges(
    graph: LayerGraph, block: list[Layer], frontier: Mapping[str, tuple[RowRange, ...]], n_devices: int
) -> dict[str, tuple[RowRange, ...]]:
    """Rows per device for every layer of ``block``: each frontier layer's own tile, grown by what
    the device's later layers in the block read (walking the block backwards)."""
    inside = {layer.name for layer in block}
    need: dict[str, list[RowRange]] = {layer.name: [RowRange(0, 0)] * n_devices for layer in block}
    out: dict[str, tuple[RowRange, ...]] = {}
    for layer in reversed(block):
        ranges = list(need[layer.name])
        if layer.name in frontier:
            ranges = [a.union_hull(b) for a, b in zip(ranges, frontier[layer.name], strict=True)]
        ranges = _fill_gaps(ranges, layer.height)
        out[layer.name] = tuple(ranges)
        for producer, rule in zip(layer.inputs, layer.rules, strict=True):
            if producer not in inside:
                continue
            height = graph[producer].height
            need[producer] = [
                have.union_hull(rule.needed(r, height).clip(height)) if not r.empty else have
                for have, r in zip(need[producer], ranges, strict=True)
            ]
    return out
