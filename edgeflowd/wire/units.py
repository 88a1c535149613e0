"""Execution units on the wire: the documents an assignment and the plan summary carry, and
their conversion to and from the core's values. Op arguments are trees of JSON values in which
anything JSON lacks (a tuple, a slice, a dtype, a layer input, a constant) is a one-key
``{"$kind": ...}`` object; only allow-listed op names are ever rebuilt into calls."""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import msgspec
import torch

from edgeflowd.core.ops import Const, In, OpCall, Prev, RowConst
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import RowRule
from edgeflowd.core.units import ExecutionUnit, Forward, UnitInput
from edgeflowd.errors import ProtocolError

__all__ = ["UnitDoc", "decode_value", "encode_value", "unit_doc", "unit_of"]

Rows = tuple[int, int]


class RuleDoc(msgspec.Struct, frozen=True):
    # "kind" on the wire, as protocol v1 has always said; the core calls it the rule's pattern
    pattern: Literal["window", "upsample", "table", "identity", "whole"] = msgspec.field(name="kind")
    span: int = 1
    stride: int = 1
    pad: int = 0
    factor: int = 1
    table: tuple[int, ...] = ()  # kind "table": first and end input row of each output row


class InputDoc(msgspec.Struct, frozen=True):
    producer: str
    needed: Rows
    rows: Rows
    rule: RuleDoc
    shape: tuple[int, ...]


class ForwardDoc(msgspec.Struct, frozen=True):
    consumer: str
    rows: Rows


class OpDoc(msgspec.Struct, frozen=True):
    target: str
    args: Any = msgspec.field(default_factory=lambda: {"$tuple": []})
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    node: str = ""


class UnitDoc(msgspec.Struct, frozen=True):
    """One :class:`ExecutionUnit` as JSON: rows as ``[start, stop]``."""

    layer: str
    device: int
    rows: Rows
    out_shape: tuple[int, ...]
    inputs: tuple[InputDoc, ...]
    ops: tuple[OpDoc, ...]
    forwards: tuple[ForwardDoc, ...]
    halo_first: bool = False


def _rows(rows: RowRange) -> Rows:
    return (rows.start, rows.stop)


def unit_doc(unit: ExecutionUnit) -> UnitDoc:
    return UnitDoc(
        unit.layer,
        unit.device,
        _rows(unit.rows),
        unit.out_shape,
        tuple(
            InputDoc(
                i.producer,
                _rows(i.needed),
                _rows(i.rows),
                RuleDoc(i.rule.pattern, i.rule.span, i.rule.stride, i.rule.pad, i.rule.factor, i.rule.table),
                i.shape,
            )
            for i in unit.inputs
        ),
        tuple(
            OpDoc(op.target, encode_value(op.args), {k: encode_value(v) for k, v in op.kwargs.items()}, op.node)
            for op in unit.ops
        ),
        tuple(ForwardDoc(f.consumer, _rows(f.rows)) for f in unit.forwards),
        unit.halo_first,
    )


def _range(rows: Rows, where: str) -> RowRange:
    try:
        return RowRange(*rows)
    except ValueError as exc:
        raise ProtocolError(f"{where}: {exc}") from exc


def _rule(doc: RuleDoc, where: str, out_shape: tuple[int, ...]) -> RowRule:
    """The core's rule; a table must give every output row a non-empty reach, in row order (the
    reach of a range is read from its first and last row)."""
    if doc.pattern == "table":
        rows = out_shape[2] if len(out_shape) == 4 else 0
        starts, stops = doc.table[0::2], doc.table[1::2]
        if len(doc.table) != 2 * rows or rows == 0:
            raise ProtocolError(
                f"{where}: field 'table' has {len(doc.table)} entries; {rows} output rows need {2 * rows}"
            )
        ordered = all(a <= b for a, b in itertools.pairwise(starts)) and all(
            a <= b for a, b in itertools.pairwise(stops)
        )
        if not ordered or any(a >= b for a, b in zip(starts, stops, strict=True)):
            raise ProtocolError(f"{where}: field 'table' is not a row-ordered reach of non-empty ranges")
    return RowRule(doc.pattern, doc.span, doc.stride, doc.pad, doc.factor, doc.table)


def unit_of(doc: UnitDoc, where: str) -> ExecutionUnit:
    """The core's unit; ``where`` (``$.units[3]``) prefixes every error."""
    where = f"{where}[{doc.layer}#{doc.device}]"
    inputs = tuple(
        UnitInput(
            i.producer,
            _range(i.needed, f"{where}.inputs[{k}].needed"),
            _range(i.rows, f"{where}.inputs[{k}].rows"),
            _rule(i.rule, f"{where}.inputs[{k}].rule", doc.out_shape),
            i.shape,
        )
        for k, i in enumerate(doc.inputs)
    )
    ops = []
    for k, op in enumerate(doc.ops):
        args = decode_value(op.args, f"{where}.ops[{k}].args")
        if not isinstance(args, tuple):
            raise ProtocolError(f"{where}.ops[{k}]: 'args' must encode a tuple")
        kwargs = {name: decode_value(v, f"{where}.ops[{k}].kwargs.{name}") for name, v in op.kwargs.items()}
        ops.append(OpCall(op.target, args, kwargs, op.node))
    forwards = tuple(
        Forward(f.consumer, _range(f.rows, f"{where}.forwards[{k}].rows")) for k, f in enumerate(doc.forwards)
    )
    rows = _range(doc.rows, f"{where}.rows")
    return ExecutionUnit(doc.layer, doc.device, rows, doc.out_shape, inputs, tuple(ops), forwards, doc.halo_first)


def encode_value(value: Any) -> Any:
    """JSON form of an argument tree. Non-JSON leaves get a ``{"$kind": ...}`` wrapper."""
    if isinstance(value, In):
        return {"$in": value.index}
    if isinstance(value, Prev):
        return {"$prev": 0}
    if isinstance(value, RowConst):
        return {"$trows": [value.name, value.dim]}
    if isinstance(value, Const):
        return {"$t": value.name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, slice):
        return {"$slice": [encode_value(value.start), encode_value(value.stop), encode_value(value.step)]}
    if value is Ellipsis:
        return {"$ellipsis": 0}
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"$device": str(value)}
    raise ProtocolError(f"cannot encode argument of type {type(value).__name__}: {value!r}")


def decode_value(value: Any, where: str) -> Any:
    """Inverse of :func:`encode_value`; ``where`` names the field in errors."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict) or len(value) != 1:
        raise ProtocolError(f"{where}: expected a value or a one-key {{'$kind': ...}} object")
    ((kind, body),) = value.items()
    try:
        if kind == "$in":
            return In(int(body))
        if kind == "$prev":
            return Prev()
        if kind == "$t":
            return Const(str(body))
        if kind == "$trows":
            name, dim = body
            if not isinstance(name, str) or not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
                raise ValueError(body)
            return RowConst(name, dim)
        if kind == "$tuple":
            return tuple(decode_value(v, f"{where}[{i}]") for i, v in enumerate(body))
        if kind == "$slice":
            start, stop, step = (decode_value(v, where) for v in body)
            return slice(start, stop, step)
        if kind == "$ellipsis":
            return Ellipsis
        if kind == "$float":
            if body not in ("inf", "-inf", "nan"):
                raise ValueError(body)
            return float(body)
        if kind == "$dtype":
            dtype = getattr(torch, str(body), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(body)
            return dtype
        if kind == "$device":
            return torch.device(str(body))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{where}: bad {kind} value {body!r}") from exc
    raise ProtocolError(f"{where}: unknown value kind {kind!r}")
