"""Execution units: one layer's row range on one device, with its input requirements, operator
and forwarding table. Pure data plus :func:`run_unit`; no I/O, no threads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from edgeflowd.core.ops import OpCall, Resolver, allowed_resolver
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import RowRule, rows_shape, run_layer_rows
from edgeflowd.errors import ProtocolError

__all__ = ["CLIENT", "SINK", "ExecutionUnit", "Forward", "UnitInput", "reads_nothing", "run_unit", "unit_id"]

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

    @property
    def uid(self) -> str:
        return unit_id(self.layer, self.device)

    def const_names(self) -> list[str]:
        return sorted({name for call in self.ops for name in call.const_names()})


def run_unit(
    unit: ExecutionUnit,
    inputs: Sequence[torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    resolve: Resolver = allowed_resolver,
) -> torch.Tensor:
    """Compute the unit's rows from ``inputs[k]`` = rows ``unit.inputs[k].rows`` of producer k."""
    if len(inputs) != len(unit.inputs):
        raise ProtocolError(f"unit {unit.uid}: expected {len(unit.inputs)} inputs, got {len(inputs)}")
    for spec, tensor in zip(unit.inputs, inputs, strict=True):
        if tuple(tensor.shape) != spec.slice_shape():
            raise ProtocolError(
                f"unit {unit.uid}: input {spec.producer} rows {spec.rows} has shape {tuple(tensor.shape)}, "
                f"expected {spec.slice_shape()}"
            )
    result = run_layer_rows(
        unit.ops,
        [i.rule for i in unit.inputs],
        inputs,
        [i.needed for i in unit.inputs],
        [i.rows for i in unit.inputs],
        unit.rows,
        unit.out_shape,
        tensors,
        resolve,
    )
    if len(unit.out_shape) == 4 and result.shape[2] != len(unit.rows):
        raise ProtocolError(f"unit {unit.uid}: produced {result.shape[2]} rows, expected {len(unit.rows)}")
    return result
