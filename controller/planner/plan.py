"""Plans: a partition turned into execution units with forwarding tables.

A plan prints itself (rows per device per layer), and :meth:`Plan.validate` proves, before
anything runs, that every unit receives exactly the rows it needs and no unit sends rows nobody
needs. Units travel as JSON inside assignments (``edgeflowd.wire``), which round-trip exactly.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from controller.graph.layers import LayerGraph
from controller.planner.partitions import Partition
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import height_of
from edgeflowd.core.units import CLIENT, SINK, ExecutionUnit, Forward, UnitInput, reads_nothing, unit_id
from edgeflowd.errors import PlanError

__all__ = ["Plan", "build_plan"]


@dataclass(frozen=True)
class Plan:
    """``outputs``: the layers delivered to the requester; ``epilogue``: the units it runs on them
    (the model's last layers that only move data, device :data:`CLIENT`), giving ``results``, the
    model's outputs (empty: ``outputs`` are)."""

    model: str
    n_devices: int
    units: tuple[ExecutionUnit, ...]
    outputs: tuple[str, ...]
    epilogue: tuple[ExecutionUnit, ...] = ()
    results: tuple[str, ...] = ()

    def unit(self, uid: str) -> ExecutionUnit:
        for u in self.units:
            if u.uid == uid:
                return u
        raise KeyError(uid)

    def on_device(self, device: int) -> list[ExecutionUnit]:
        return [u for u in self.units if u.device == device]

    def messages(self) -> list[tuple[ExecutionUnit, Forward, int]]:
        """Every forward with its destination device (:data:`CLIENT` for the sink)."""
        device_of = {u.uid: u.device for u in self.units}
        return [(u, f, device_of.get(f.consumer, CLIENT)) for u in self.units for f in u.forwards]

    def validate(self) -> None:
        by_uid = {u.uid: u for u in self.units}
        received: dict[tuple[str, str], list[RowRange]] = defaultdict(list)
        triggers: Counter[str] = Counter()
        for u in self.units:
            for f in u.forwards:
                if f.consumer != SINK and f.consumer not in by_uid:
                    raise PlanError(f"unit {u.uid} forwards to unknown unit {f.consumer}")
                trigger = f.rows.empty and f.consumer != SINK and reads_nothing(by_uid[f.consumer].inputs)
                if not u.rows.contains(f.rows) or (f.rows.empty and not trigger):
                    raise PlanError(f"unit {u.uid} forwards rows {f.rows} it does not hold ({u.rows})")
                triggers[f.consumer] += trigger
                received[(f.consumer, u.layer)].append(f.rows)
        for u in self.units:
            if reads_nothing(u.inputs) and triggers[u.uid] != 1:
                raise PlanError(f"unit {u.uid} reads no row: it needs one empty trigger slice, gets {triggers[u.uid]}")
        wanted = [(u.uid, i.producer, i.rows) for u in self.units for i in u.inputs]
        heights = {u.layer: height_of(u.out_shape) for u in self.units}
        wanted += [(SINK, layer, RowRange(0, heights[layer])) for layer in dict.fromkeys(self.outputs)]
        for consumer, producer, rows in wanted:
            got = sorted(r for r in received.pop((consumer, producer), []) if not r.empty)  # not triggers
            cursor = rows.start
            for r in got:
                if r.start != cursor:
                    raise PlanError(
                        f"{consumer} gets rows {r} of {producer} but needs {rows} (gap or overlap at {cursor})"
                    )
                cursor = r.stop
            if cursor != rows.stop and not rows.empty:
                raise PlanError(f"{consumer} needs rows {rows} of {producer}, receives up to {cursor}")
        if received:
            (consumer, producer), extra = next(iter(received.items()))
            raise PlanError(f"rows {extra} of {producer} are sent to {consumer}, which does not read them")

    def __str__(self) -> str:
        lines = [f"plan for {self.model} on {self.n_devices} devices: {len(self.units)} units"]
        by_layer: dict[str, list[ExecutionUnit]] = defaultdict(list)
        for u in self.units:
            by_layer[u.layer].append(u)
        for layer, units in by_layer.items():
            parts = ", ".join(
                f"{'client' if u.device == CLIENT else f'd{u.device}'}:{u.rows}"
                for u in sorted(units, key=lambda u: u.rows)
            )
            lines.append(f"  {layer:<32} {parts}")
        return "\n".join(lines)


def _subtract(piece: RowRange, taken: RowRange) -> list[RowRange]:
    below = RowRange(piece.start, min(piece.stop, taken.start)) if piece.start < taken.start else None
    above = RowRange(max(piece.start, taken.stop), piece.stop) if taken.stop < piece.stop else None
    return [r for r in (below, above) if r is not None and not r.empty]


def _route(consumer: str, device: int, rows: RowRange, sources: list[dict[str, Any]]) -> None:
    """Add forwards so that ``consumer`` receives each of ``rows`` exactly once: from the unit on
    its own device first (free), then from the other holders in device order."""
    missing = [rows] if not rows.empty else []
    for source in sorted(sources, key=lambda s: (s["device"] != device, s["device"])):
        still: list[RowRange] = []
        for piece in missing:
            overlap = source["rows"].intersect(piece)
            if overlap.empty:
                still.append(piece)
            else:
                source["forwards"].append(Forward(consumer, overlap))
                still += _subtract(piece, overlap)
        missing = still
    if missing:
        raise PlanError(f"{consumer}: rows {missing[0]} are held by no unit")


def _trigger(consumer: str, device: int, sources: list[dict[str, Any]]) -> None:
    """A unit whose windows lie wholly in padding reads no row, yet must learn that a request
    exists: one producer unit (its own device's first) sends it an empty slice."""
    source = min(sources, key=lambda s: (s["device"] != device, s["device"]))
    start = source["rows"].start
    source["forwards"].append(Forward(consumer, RowRange(start, start)))


def epilogue_units(graph: LayerGraph) -> tuple[ExecutionUnit, ...]:
    """The requester's units of the model's epilogue: each of its layers whole, on every row of
    what it reads."""
    shapes = {layer.name: layer.out_shape for layer in (*graph, *graph.epilogue)}
    units = []
    for layer in graph.epilogue:
        inputs = []
        for producer, rule in zip(layer.inputs, layer.rules, strict=True):
            rows = RowRange(0, height_of(shapes[producer]))
            inputs.append(UnitInput(producer, rows, rows, rule, shapes[producer]))
        rows = RowRange(0, layer.height)
        units.append(ExecutionUnit(layer.name, CLIENT, rows, layer.out_shape, tuple(inputs), layer.ops, ()))
    return tuple(units)


def build_plan(graph: LayerGraph, partition: Partition, check: bool = True) -> Plan:
    """Execution units and forwarding tables for ``partition`` of ``graph``; ``check`` proves the
    plan consistent (planners comparing many candidates of their own making may skip it)."""
    if check:
        partition.validate(graph)
    pending: dict[str, dict[str, Any]] = {}
    heights = {layer.name: layer.height for layer in graph}
    shapes = {layer.name: layer.out_shape for layer in graph}
    for layer in graph:
        placed = (
            [(CLIENT, RowRange(0, layer.height))]
            if layer.is_source
            else [(d, r) for d, r in enumerate(partition.rows[layer.name]) if not r.empty]
        )
        for device, rows in placed:
            inputs = []
            for producer, rule in zip(layer.inputs, layer.rules, strict=False):
                needed = rule.needed(rows, heights[producer])
                inputs.append(UnitInput(producer, needed, needed.clip(heights[producer]), rule, shapes[producer]))
            pending[unit_id(layer.name, device)] = {
                "layer": layer.name,
                "device": device,
                "rows": rows,
                "out_shape": layer.out_shape,
                "inputs": tuple(inputs),
                "ops": layer.ops,
                "forwards": [],
            }
    by_layer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for spec in pending.values():
        by_layer[spec["layer"]].append(spec)
    for uid, spec in pending.items():
        for inp in spec["inputs"]:
            _route(uid, spec["device"], inp.rows, by_layer[inp.producer])
        if reads_nothing(spec["inputs"]):
            _trigger(uid, spec["device"], by_layer[spec["inputs"][0].producer])
    for name in dict.fromkeys(graph.outputs):
        _route(SINK, CLIENT, RowRange(0, heights[name]), by_layer[name])
    units = tuple(ExecutionUnit(**{**spec, "forwards": tuple(spec["forwards"])}) for spec in pending.values())
    plan = Plan(graph.model, partition.n_devices, units, graph.outputs, epilogue_units(graph), graph.results)
    if check:
        plan.validate()
    return plan
