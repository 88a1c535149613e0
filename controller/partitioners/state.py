"""Where each layer's rows live and when they are ready, while a plan is built layer by layer.

Shared by the progressive partitioner and the baselines that place layers one at a time: it
evaluates a candidate split of the next layer with the cost model (no link contention; the
simulator accounts for that once the whole plan exists).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.costmodel import compute_s, row_bytes, send
from controller.graph.layers import Layer, LayerGraph
from controller.profiles import Cluster, Link
from edgeflowd.errors import PlanError
from edgeflowd.rows import RowRange
from edgeflowd.units import CLIENT

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
        return copy

    def link(self, device: int) -> Link:
        return self.cluster.client if device == CLIENT else self.cluster.devices[device].link

    def holders(self, producer: str) -> list[tuple[int, RowRange]]:
        """(device, rows) of every unit of ``producer``; the client holds model inputs."""
        if not self.rows[producer]:
            return [(CLIENT, RowRange(0, self.graph[producer].height))]
        return [(d, r) for d, r in enumerate(self.rows[producer]) if not r.empty]

    def arrival(self, layer: Layer, device: int, rows: RowRange, links: dict[tuple[int, str], float]) -> float:
        """When every input row that ``rows`` of ``layer`` on ``device`` reads has arrived; remote
        slices queue on the sender's uplink and the receiver's downlink (``links`` is updated)."""
        ready = 0.0
        for producer, rule in zip(layer.inputs, layer.rules, strict=True):
            p = self.graph[producer]
            missing = [rule.needed(rows, p.height).clip(p.height)]
            holders = sorted(self.holders(producer), key=lambda h: h[0] != device)
            for holder, held in holders:
                still: list[RowRange] = []
                for piece in missing:
                    got = piece.intersect(held)
                    if got.empty:
                        still.append(piece)
                        continue
                    done = self.finish[producer][holder]
                    if holder != device:
                        up, down = (holder, "up"), (device, "down")
                        hop = send(
                            len(got) * row_bytes(p),
                            self.link(holder),
                            self.link(device),
                            done,
                            links.get(up, 0.0),
                            links.get(down, 0.0),
                        )
                        links[up], links[down], done = hop.up_end, hop.down_end, hop.arrival
                    ready = max(ready, done)
                    still += [
                        r for r in (RowRange(piece.start, got.start), RowRange(got.stop, piece.stop)) if not r.empty
                    ]
                missing = still
        return ready

    def evaluate(self, layer: Layer, ranges: tuple[RowRange, ...]) -> Placement:
        finish: dict[int, float] = {}
        links = dict(self.link_free)
        for device, rows in enumerate(ranges):
            if rows.empty:
                continue
            start = max(self.free[device], self.arrival(layer, device, rows, links))
            finish[device] = start + compute_s(layer, len(rows), self.cluster.devices[device])
        return Placement(ranges, finish, links)

    def commit(self, layer: Layer, placement: Placement) -> None:
        self.rows[layer.name] = placement.ranges
        self.finish[layer.name] = placement.finish
        self.link_free = dict(placement.links)
        for device, end in placement.finish.items():
            self.free[device] = end
            self.memory_used[device] += self.memory_need(layer, placement.ranges[device])

    @staticmethod
    def memory_need(layer: Layer, rows: RowRange) -> float:
        return layer.param_bytes + len(rows) * row_bytes(layer)

    def eligible(self, layer: Layer) -> list[int]:
        """Devices with memory left for all of ``layer`` (weights and its whole output)."""
        need = self.memory_need(layer, RowRange(0, layer.height))
        fits = [
            d
            for d, dev in enumerate(self.cluster.devices)
            if self.memory_used[d] + need <= dev.profile.memory_mb * 2**20
        ]
        if not fits:
            room = max(
                dev.profile.memory_mb * 2**20 - used
                for dev, used in zip(self.cluster.devices, self.memory_used, strict=True)
            )
            best = max(
                range(len(self.cluster)),
                key=lambda d: self.cluster.devices[d].profile.memory_mb * 2**20 - self.memory_used[d],
            )
            raise PlanError(
                f"cannot place layer {layer.name}: needs {need / 2**20:.1f} MiB, the most any device has left is "
                f"{room / 2**20:.1f} MiB ({self.cluster.devices[best].id})"
            )
        return fits

    def single(self, layer: Layer, device: int) -> tuple[RowRange, ...]:
        return tuple(RowRange(0, layer.height) if d == device else RowRange(0, 0) for d in range(len(self.cluster)))
