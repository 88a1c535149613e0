"""Where each layer's rows live and when they are ready, while a plan is built layer by layer.

Shared by the progressive partitioner and the baselines that place layers one at a time: it
evaluates a candidate split of the next layer with the cost model (no link contention; the
simulator accounts for that once the whole plan exists).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.graph.layers import Layer, LayerGraph
from controller.planner.costmodel import memory_bytes, per_row_s, row_bytes, send, unit_fixed_s
from controller.planner.partitions import on_one_device
from edgeflowd.core.rows import RowRange
from edgeflowd.core.units import CLIENT
from edgeflowd.errors import PlanError
from edgeflowd.profiles.devices import Cluster, Link

__all__ = ["Placement", "PlanState"]


@dataclass
class Placement:
    """A candidate split of one layer and the finish time it gives on each device."""

    ranges: tuple[RowRange, ...]
    finish: dict[int, float]
    links: dict[tuple[int, str], float] = field(default_factory=dict)  # link free times after it

    @property
    def end(self) -> float:
        return max(self.finish.values(), default=0.0)


@dataclass
class PlanState:
    graph: LayerGraph
    cluster: Cluster
    rows: dict[str, tuple[RowRange, ...]] = field(default_factory=dict)
    finish: dict[str, dict[int, float]] = field(default_factory=dict)
    free: list[float] = field(default_factory=list)
    memory_used: list[float] = field(default_factory=list)
    link_free: dict[tuple[int, str], float] = field(default_factory=dict)  # (device, up|down)
    _held: dict[str, list[tuple[int, RowRange]]] = field(default_factory=dict)  # cache of holders()
    _compute: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)  # (row s, overhead s)

    def __post_init__(self) -> None:
        n = len(self.cluster)
        self.free = [0.0] * n
        self.memory_used = [0.0] * n
        for source in self.graph.sources:
            self.rows[source.name] = ()
            self.finish[source.name] = {CLIENT: 0.0}

    def fork(self) -> PlanState:
        """A copy to try placements on (committed entries are never mutated, so shallow is enough)."""
        copy = PlanState.__new__(PlanState)
        copy.graph, copy.cluster = self.graph, self.cluster
        copy.rows, copy.finish = dict(self.rows), dict(self.finish)
        copy.free, copy.memory_used, copy.link_free = list(self.free), list(self.memory_used), dict(self.link_free)
        copy._held, copy._compute = dict(self._held), self._compute  # the compute cache never changes
        return copy

    def link(self, device: int) -> Link:
        return self.cluster.client if device == CLIENT else self.cluster.devices[device].link

    def holders(self, producer: str, first: int | None = None) -> list[tuple[int, RowRange]]:
        """(device, rows) of every unit of ``producer``, ``first``'s own unit first; the client
        holds model inputs."""
        held = self._held.get(producer)
        if held is None:
            ranges = self.rows[producer]
            if not ranges:
                held = [(CLIENT, RowRange(0, self.graph[producer].height))]
            else:
                held = [(d, r) for d, r in enumerate(ranges) if not r.empty]
            self._held[producer] = held
        if first is not None and len(held) > 1 and held[0][0] != first:
            return [h for h in held if h[0] == first] + [h for h in held if h[0] != first]
        return held

    def arrival(self, layer: Layer, device: int, rows: RowRange, links: dict[tuple[int, str], float]) -> float:
        """When every input row that ``rows`` of ``layer`` on ``device`` reads has arrived; remote
        slices queue on the sender's uplink and the receiver's downlink (``links`` is updated).
        Hot loop of planning: rows are plain ints here."""
        ready = 0.0
        for producer, rule in zip(layer.inputs, layer.rules, strict=True):
            p = self.graph[producer]
            lo, hi = rule.needed_clipped(rows.start, rows.stop, p.height)
            own = self.rows[producer][device] if self.rows[producer] else None
            if own is not None and own.start <= lo and hi <= own.stop:  # all on this device: no message
                ready = max(ready, self.finish[producer][device]) if lo < hi else ready
                continue
            missing = [(lo, hi)] if lo < hi else []
            for holder, held in self.holders(producer, first=device):
                still: list[tuple[int, int]] = []
                for lo, hi in missing:
                    start, stop = max(lo, held.start), min(hi, held.stop)
                    if start >= stop:
                        still.append((lo, hi))
                        continue
                    done = self.finish[producer][holder]
                    if holder != device:
                        up, down = (holder, "up"), (device, "down")
                        hop = send(
                            (stop - start) * row_bytes(p),
                            self.link(holder),
                            self.link(device),
                            done,
                            links.get(up, 0.0),
                            links.get(down, 0.0),
                        )
                        links[up], links[down], done = hop.up_end, hop.down_end, hop.arrival
                    ready = max(ready, done)
                    if lo < start:
                        still.append((lo, start))
                    if stop < hi:
                        still.append((stop, hi))
                missing = still
                if not missing:
                    break
        return ready

    def evaluate(self, layer: Layer, ranges: tuple[RowRange, ...]) -> Placement:
        finish: dict[int, float] = {}
        links = dict(self.link_free)
        for device, rows in enumerate(ranges):
            if rows.empty:
                continue
            start = max(self.free[device], self.arrival(layer, device, rows, links))
            key = (layer.name, device)
            if key not in self._compute:
                dev = self.cluster.devices[device]
                self._compute[key] = (per_row_s(layer, dev), unit_fixed_s(layer, dev))
            per_row, overhead = self._compute[key]
            finish[device] = start + overhead + per_row * len(rows)  # = compute_s(), cached
        return Placement(ranges, finish, links)

    def commit(self, layer: Layer, placement: Placement) -> None:
        self.rows[layer.name] = placement.ranges
        self._held.pop(layer.name, None)
        self.finish[layer.name] = placement.finish
        self.link_free = dict(placement.links)
        for device, end in placement.finish.items():
            self.free[device] = end
            self.memory_used[device] += memory_bytes(layer, len(placement.ranges[device]))

    def eligible(self, layer: Layer) -> list[int]:
        """Devices with memory left for all of ``layer`` (weights and its whole output)."""
        need = memory_bytes(layer, layer.height)
        left = [
            dev.profile.memory_mb * 2**20 - used
            for dev, used in zip(self.cluster.devices, self.memory_used, strict=True)
        ]
        fits = [d for d, room in enumerate(left) if need <= room]
        if not fits:
            best = max(range(len(left)), key=left.__getitem__)
            room = left[best]
            raise PlanError(
                f"cannot place layer {layer.name}: needs {need / 2**20:.1f} MiB, the most any device has left is "
                f"{room / 2**20:.1f} MiB ({self.cluster.devices[best].id})"
            )
        return fits

    def single(self, layer: Layer, device: int) -> tuple[RowRange, ...]:
        return on_one_device(layer.height, device, len(self.cluster))
