"""Execution units: one layer's row range on one device, with its input requirements, operator
and forwarding table. Pure data plus :func:`run_unit`; no I/O, no threads."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from edgeflowd.core.ops import OpCall, Resolver, allowed_resolver, check_call
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import RowRule, height_of, rows_shape, run_layer_rows, take_rows
from edgeflowd.errors import ProtocolError

__all__ = [
    "CLIENT",
    "SINK",
    "ExecutionUnit",
    "Forward",
    "UnitInput",
    "check_epilogue",
    "halo_first",
    "reads_nothing",
    "run_epilogue",
    "run_unit",
    "unit_id",
]

CLIENT = -1
"""Device index of the requester, which holds the model input and receives the output."""
SINK = "@output"
"""Consumer id of the requester's result collector in forwarding tables."""


def reads_nothing(inputs: Sequence[UnitInput]) -> bool:
    """Every window of the unit lies wholly in padding: no producer sends it a row, so one sends an
    empty trigger slice to tell it that a request exists."""
    return bool(inputs) and all(i.rows.empty for i in inputs)


def unit_id(layer: str, device: int) -> str:
    return f"{layer}@client" if device == CLIENT else f"{layer}@d{device}"  # a valid MQTT topic level


@dataclass(frozen=True)
class UnitInput:
    """Rows this unit needs of one producer layer's output.

    ``needed`` is where the op's windows reach (may extend into padding); ``rows`` is the clipped
    part that producers actually send; ``shape`` is the producer's full output shape."""

    producer: str
    needed: RowRange
    rows: RowRange
    rule: RowRule
    shape: tuple[int, ...]

    def slice_shape(self) -> tuple[int, ...]:
        """Shape of the tensor this input arrives as: the producer's, with only ``rows``."""
        return rows_shape(self.shape, self.rows)


@dataclass(frozen=True)
class Forward:
    """One forwarding-table entry: rows ``rows`` (absolute, of this unit's layer) go to
    ``consumer`` (a unit id, or :data:`SINK`)."""

    consumer: str
    rows: RowRange


@dataclass(frozen=True)
class ExecutionUnit:
    """Rows ``rows`` of layer ``layer`` (full output shape ``out_shape``) computed on ``device``.

    Invariant: ``inputs[k]`` matches the layer's k-th input; every op after ``ops[0]`` is
    row-local, so running the ops on the assembled input slices yields exactly these rows."""

    layer: str
    device: int
    rows: RowRange
    out_shape: tuple[int, ...]
    inputs: tuple[UnitInput, ...]
    ops: tuple[OpCall, ...]
    forwards: tuple[Forward, ...]
    halo_first: bool = False  # the plan's choice: see :func:`halo_first`
    # What :func:`run_unit` reads on every request, worked out once (a unit is immutable).
    _arrives: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    _rules: tuple[RowRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_arrives", tuple(i.slice_shape() for i in self.inputs))
        object.__setattr__(self, "_rules", tuple(i.rule for i in self.inputs))

    @property
    def uid(self) -> str:
        return unit_id(self.layer, self.device)

    def const_names(self) -> list[str]:
        return sorted({name for call in self.ops for name in call.const_names()})


def _merge(ranges: Sequence[RowRange]) -> list[RowRange]:
    """Overlapping or touching ranges joined, in row order (empty ones dropped)."""
    merged: list[RowRange] = []
    for r in sorted(r for r in ranges if not r.empty):
        if merged and r.start <= merged[-1].stop:
            merged[-1] = merged[-1].union_hull(r)
        else:
            merged.append(r)
    return merged


def halo_first(unit: ExecutionUnit, local: Callable[[str], bool]) -> tuple[tuple[RowRange, ...], int]:
    """The order in which to compute ``unit``'s rows, and how many of the first pieces leave the node.

    A unit the plan marks ``halo_first`` computes the rows other nodes read (its halo rows,
    typically) first and publishes them, then its interior while they travel: the neighbour's
    next unit then finds them waiting instead of waiting a message for them. ``local`` says
    whether a consumer runs on the same node. Any other unit is one piece: ``((rows,), 0)``.
    Pure, so that the runtime and the simulator agree on what is computed when."""
    whole = ((unit.rows,), 0)
    splittable = any(i.rule.pattern != "whole" for i in unit.inputs)  # an all-whole layer mixes rows
    if not unit.halo_first or not splittable or len(unit.out_shape) != 4:
        return whole
    remote = _merge([f.rows.intersect(unit.rows) for f in unit.forwards if not local(f.consumer)])
    if not remote or remote == [unit.rows]:
        return whole
    interior, cursor = [], unit.rows.start
    for r in remote:
        if r.start > cursor:
            interior.append(RowRange(cursor, r.start))
        cursor = r.stop
    if cursor < unit.rows.stop:
        interior.append(RowRange(cursor, unit.rows.stop))
    return (*remote, *interior), len(remote)


def run_unit(
    unit: ExecutionUnit,
    inputs: Sequence[torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    resolve: Resolver = allowed_resolver,
    rows: RowRange | None = None,
) -> torch.Tensor:
    """Compute the unit's rows from ``inputs[k]`` = rows ``unit.inputs[k].rows`` of producer k;
    with ``rows`` (inside ``unit.rows``), only those: exactly what a unit of those rows computes."""
    if len(inputs) != len(unit.inputs):
        raise ProtocolError(f"unit {unit.uid}: expected {len(unit.inputs)} inputs, got {len(inputs)}")
    for spec, tensor, expected in zip(unit.inputs, inputs, unit._arrives, strict=True):
        if tensor.shape != expected:
            raise ProtocolError(
                f"unit {unit.uid}: input {spec.producer} rows {spec.rows} has shape {tuple(tensor.shape)}, "
                f"expected {expected}"
            )
    out = unit.rows if rows is None else rows
    if not unit.rows.contains(out):
        raise ProtocolError(f"unit {unit.uid}: rows {out} are not among its rows {unit.rows}")
    needed, have, sliced = [], [], []
    for spec, tensor in zip(unit.inputs, inputs, strict=True):
        if out == unit.rows:
            needed.append(spec.needed)
            have.append(spec.rows)
            sliced.append(tensor)
            continue
        height = height_of(spec.shape)
        part = spec.rule.needed(out, height)
        needed.append(part)
        have.append(part.clip(height))
        sliced.append(take_rows(tensor, part.clip(height), spec.rows))
    shapes = [i.shape for i in unit.inputs]
    result = run_layer_rows(unit.ops, unit._rules, sliced, needed, have, out, unit.out_shape, tensors, resolve, shapes)
    if len(unit.out_shape) >= 4 and result.shape[2] != len(out):
        raise ProtocolError(f"unit {unit.uid}: produced {result.shape[2]} rows, expected {len(out)}")
    return result


def run_epilogue(
    units: Sequence[ExecutionUnit],
    results: Sequence[str],
    delivered: Mapping[str, torch.Tensor],
    resolve: Resolver = allowed_resolver,
) -> list[torch.Tensor]:
    """The model's outputs ``results`` from the tensors a plan ``delivered`` (by layer): each
    epilogue unit, in order, on whole tensors (a requester's; the units name no weight)."""
    values = dict(delivered)
    for unit in units:
        try:
            out = run_unit(unit, [values[i.producer] for i in unit.inputs], {}, resolve)
        except (KeyError, RuntimeError) as exc:  # a summary :func:`check_epilogue` did not see
            raise ProtocolError(f"epilogue unit {unit.layer}: {type(exc).__name__}: {exc}") from exc
        if tuple(out.shape) != tuple(unit.out_shape):
            raise ProtocolError(f"epilogue unit {unit.layer} gave shape {tuple(out.shape)}, not {unit.out_shape}")
        values[unit.layer] = out
    missing = [r for r in results if r not in values]
    if missing:
        raise ProtocolError(f"the plan's results name {missing[0]!r}, which neither it nor its epilogue gives")
    return [values[r] for r in results]


def check_epilogue(
    units: Sequence[ExecutionUnit], results: Sequence[str], delivered: Mapping[str, Sequence[int]], where: str
) -> None:
    """Refuse an epilogue a requester should not run: an op outside the allow-list or writing in
    place, one naming a weight (a requester holds none), an input neither delivered nor made by an
    earlier unit (or of another shape), or results that name what nothing gives."""
    shapes = {name: tuple(shape) for name, shape in delivered.items()}
    for i, unit in enumerate(units):
        at = f"{where}.epilogue[{i}] ({unit.layer})"
        for k, call in enumerate(unit.ops):
            check_call(call, f"{at}.ops[{k}]")
            if call.const_names():
                raise ProtocolError(f"{at}.ops[{k}]: names weight {call.const_names()[0]!r}; an epilogue has none")
        for k, spec in enumerate(unit.inputs):
            if shapes.get(spec.producer) != tuple(spec.shape):
                raise ProtocolError(
                    f"{at}.inputs[{k}]: {spec.producer!r} {spec.shape} is neither delivered nor made before"
                )
        shapes[unit.layer] = tuple(unit.out_shape)
    if units and not results:
        raise ProtocolError(f"{where}.results: empty, but the plan has an epilogue")
    unknown = [r for r in results if r not in shapes]
    if unknown:
        raise ProtocolError(f"{where}.results: {unknown[0]!r} is neither delivered nor made by the epilogue")
