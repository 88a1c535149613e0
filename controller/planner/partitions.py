"""Partitions: for every compute layer, the row range each device computes (pure data).

A splittable layer's ranges cover ``[0, H)`` in any device order; empty ranges mean the device
holds no unit of that layer. Ranges may overlap: a device then computes rows that another device
also computes, which fused-tile plans use to avoid exchanging halos. An unsplittable layer has all
its rows on one device.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from controller.graph.layers import LayerGraph
from edgeflowd.core.rows import RowRange
from edgeflowd.errors import PlanError

__all__ = ["Partition", "even_partition", "on_one_device", "random_partition", "split_rows"]


@dataclass(frozen=True)
class Partition:
    n_devices: int
    rows: Mapping[str, tuple[RowRange, ...]]

    def validate(self, graph: LayerGraph) -> None:
        """Raise :class:`PlanError` naming the first layer whose ranges are not a valid split."""
        for layer in graph.compute_layers:
            ranges = self.rows.get(layer.name)
            if ranges is None:
                raise PlanError(f"partition has no rows for layer {layer.name}")
            if len(ranges) != self.n_devices:
                raise PlanError(f"layer {layer.name}: {len(ranges)} ranges for {self.n_devices} devices")
            used = sorted(r for r in ranges if not r.empty)
            if not layer.splittable and len(used) != 1:
                raise PlanError(
                    f"layer {layer.name} cannot be split by rows ({layer.note or layer.kind}) "
                    f"but is on {len(used)} devices"
                )
            cursor = 0
            for r in used:
                if r.start > cursor:
                    raise PlanError(f"layer {layer.name}: rows {RowRange(cursor, r.start)} are on no device")
                cursor = max(cursor, r.stop)
            if cursor > layer.height:
                raise PlanError(f"layer {layer.name}: rows reach {cursor}, the layer has {layer.height}")
            if cursor < layer.height:
                raise PlanError(f"layer {layer.name}: rows {RowRange(cursor, layer.height)} are on no device")
        extra = set(self.rows) - {layer.name for layer in graph.compute_layers}
        if extra:
            raise PlanError(f"partition names layers the graph lacks: {sorted(extra)[:3]}")


def split_rows(height: int, shares: list[float]) -> tuple[RowRange, ...]:
    """Contiguous ranges in device order with sizes proportional to ``shares`` (largest
    remainder, ties to the lower device index, so the split is deterministic)."""
    total = sum(shares)
    if total <= 0:
        raise PlanError("at least one device needs a positive share")
    exact = [height * s / total for s in shares]
    sizes = [int(e) for e in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: height - sum(sizes)]:
        sizes[i] += 1
    ranges, start = [], 0
    for size in sizes:
        ranges.append(RowRange(start, start + size) if size else RowRange(0, 0))
        start += size
    return tuple(ranges)


def on_one_device(height: int, device: int, n: int) -> tuple[RowRange, ...]:
    """All ``height`` rows on ``device`` of ``n``."""
    return tuple(RowRange(0, height) if d == device else RowRange(0, 0) for d in range(n))


def even_partition(graph: LayerGraph, n_devices: int) -> Partition:
    """Every splittable layer cut into equal parts; unsplittable layers on device 0."""
    rows = {
        layer.name: split_rows(layer.height, [1.0] * n_devices)
        if layer.splittable
        else on_one_device(layer.height, 0, n_devices)
        for layer in graph.compute_layers
    }
    return Partition(n_devices, rows)


def random_partition(graph: LayerGraph, n_devices: int, rng: random.Random, overlap: bool = True) -> Partition:
    """Random cuts per layer, devices in random order, some devices empty, 1-row ranges often,
    and (with ``overlap``) ranges widened into their neighbours' rows now and then: the
    adversarial partitions that exactness must survive."""
    rows: dict[str, tuple[RowRange, ...]] = {}
    for layer in graph.compute_layers:
        height = layer.height
        if not layer.splittable or height == 1:
            rows[layer.name] = on_one_device(height, rng.randrange(n_devices), n_devices)
            continue
        parts = rng.randint(1, min(n_devices, height))
        cuts: set[int] = set()
        if parts > 2 and rng.random() < 0.4:  # a one-row range in the middle
            c = rng.randrange(1, height - 1)
            cuts = {c, c + 1}
        cuts |= set(rng.sample([v for v in range(1, height) if v not in cuts], parts - 1 - len(cuts)))
        bounds = [0, *sorted(cuts), height]
        devices = rng.sample(range(n_devices), len(bounds) - 1)
        assigned = [RowRange(0, 0)] * n_devices
        for device, start, stop in zip(devices, bounds, bounds[1:], strict=False):
            grow = rng.randint(0, 2) if overlap and rng.random() < 0.3 else 0
            assigned[device] = RowRange(max(0, start - grow), min(height, stop + grow))
        rows[layer.name] = tuple(assigned)
    return Partition(n_devices, rows)
