"""Discrete-event simulation of one request through a plan: per device one compute resource, one
uplink and one downlink (each used by one thing at a time), the broker in between.

Units start when all their input slices have arrived and their device is free, in order of
readiness; each forward occupies the sender's uplink, then the receiver's downlink. The client
holds the input and receives the outputs over its own link. Pure: plans and profiles in, a
timeline out.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial

from controller.graph.layers import LayerGraph
from controller.planner.costmodel import compute_s, send
from controller.planner.plan import Plan
from edgeflowd.core.rows import RowRange
from edgeflowd.core.sizes import ELEMENT_BYTES
from edgeflowd.core.slicing import row_numel
from edgeflowd.core.units import CLIENT, SINK, halo_first
from edgeflowd.profiles.devices import Cluster, Link

__all__ = ["Interval", "Timeline", "simulate"]


@dataclass(frozen=True)
class Interval:
    device: int  # CLIENT for the requester
    resource: str  # compute | up | down
    start: float
    end: float
    label: str


@dataclass
class Timeline:
    latency_s: float
    intervals: list[Interval] = field(default_factory=list)

    def busy_s(self, device: int, resource: str = "compute") -> float:
        return sum(i.end - i.start for i in self.intervals if i.device == device and i.resource == resource)


def _on_device(device_of: dict[str, int], device: int, consumer: str) -> bool:
    return device_of.get(consumer, CLIENT) == device


def simulate(plan: Plan, graph: LayerGraph, cluster: Cluster) -> Timeline:
    units = {u.uid: u for u in plan.units}
    device_of = {u.uid: u.device for u in plan.units}
    order = {u.uid: i for i, u in enumerate(plan.units)}
    expected = {uid: 0 for uid in units}
    for u in plan.units:
        for f in u.forwards:
            if f.consumer != SINK:
                expected[f.consumer] += 1
    arrived: dict[str, int] = defaultdict(int)
    ready_at: dict[str, float] = defaultdict(float)
    free: dict[tuple[int, str], float] = defaultdict(float)
    intervals: list[Interval] = []
    heap: list[tuple[float, int, str]] = []
    for uid, n in expected.items():
        if n == 0:
            heapq.heappush(heap, (0.0, order[uid], uid))

    def link(device: int) -> Link:
        return cluster.client if device == CLIENT else cluster.devices[device].link

    latency = 0.0
    while heap:
        ready, _, uid = heapq.heappop(heap)
        unit = units[uid]
        edges: list[tuple[RowRange, float]] = []  # halo-first pieces and when each is done
        if unit.device == CLIENT:
            finish = 0.0
        else:
            layer, device = graph[unit.layer], cluster.devices[unit.device]
            start = finish = max(ready, free[(unit.device, "compute")])
            pieces, n_edges = halo_first(unit, partial(_on_device, device_of, unit.device))
            for k, rows in enumerate(pieces):
                finish += compute_s(layer, len(rows), device)
                if k < n_edges:
                    edges.append((rows, finish))
            free[(unit.device, "compute")] = finish
            intervals.append(Interval(unit.device, "compute", start, finish, uid))
        row_bytes = float(ELEMENT_BYTES * row_numel(unit.out_shape))
        for fwd in unit.forwards:
            dst = CLIENT if fwd.consumer == SINK else units[fwd.consumer].device
            if dst == unit.device:
                arrival = finish
            else:
                sent = next((done for rows, done in edges if rows.contains(fwd.rows)), finish)
                nbytes = row_bytes * len(fwd.rows)
                up_start, down_start = max(sent, free[(unit.device, "up")]), free[(dst, "down")]
                hop = send(nbytes, link(unit.device), link(dst), sent, free[(unit.device, "up")], free[(dst, "down")])
                free[(unit.device, "up")], free[(dst, "down")], arrival = hop.up_end, hop.down_end, hop.arrival
                label = f"{uid}->{fwd.consumer}"
                intervals.append(Interval(unit.device, "up", up_start, hop.up_end, label))
                intervals.append(Interval(dst, "down", max(down_start, up_start), hop.down_end, label))
            if fwd.consumer == SINK:
                latency = max(latency, arrival)
                continue
            ready_at[fwd.consumer] = max(ready_at[fwd.consumer], arrival)
            arrived[fwd.consumer] += 1
            if arrived[fwd.consumer] == expected[fwd.consumer]:
                heapq.heappush(heap, (ready_at[fwd.consumer], order[fwd.consumer], fwd.consumer))
    return Timeline(latency, intervals)
