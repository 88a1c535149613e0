"""Per-pixel ops in any layout: follow the row axis through layout changes.

A layer's rows are the height of an NCHW map, but many models work on each pixel in another
layout for a while: channel shuffle (a view to N,g,C/g,H,W, a transpose, a view back), ConvNeXt's
``permute → layer_norm → linear → GELU → linear → permute``. Every op there maps a row of its input
to the same row of its output, wherever the height sits. :func:`pixel_axis` says where the row
axis is after such an op, or None when the op mixes rows (or its effect on them is unknown);
the tracer fuses these ops into the layer before them while it can follow the axis, and keeps the
layer split by rows when the chain ends in NCHW again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from controller.graph.rowmap import row_extent
from edgeflowd.core.ops import ELEMENTWISE, Const, In, OpCall, Prev, RowConst

__all__ = ["free_rows", "pixel_axis", "whole_consts"]

_RESHAPES = frozenset({"method.view", "method.reshape", "torch.reshape"})
_SAME_ORDER = _RESHAPES | {"method.flatten", "torch.flatten", "method.unsqueeze", "torch.unsqueeze"}
_PERMUTES = frozenset({"method.permute", "torch.permute"})
_TRANSPOSES = frozenset({"method.transpose", "torch.transpose"})
_REDUCTIONS = frozenset({"method.mean", "method.sum", "method.amax", "torch.mean", "torch.sum", "torch.amax"})
_ALONG_DIM = frozenset({"F.softmax", "F.log_softmax", "F.normalize", "method.softmax", "torch.softmax"})
_SQUEEZES = frozenset({"method.squeeze", "torch.squeeze"})


def _rows_along(call: OpCall, consts: Mapping[str, torch.Tensor], from_end: int, rows: int) -> bool:
    """Whether each constant operand of an element-wise op broadcasts along the rows or has as
    many as the result (a unit then reads its own rows of it: :class:`RowConst`)."""
    return all(row_extent(consts[n].shape, from_end) in (1, rows) for n in call.const_names())


def _ints(args: Sequence[Any]) -> list[int] | None:
    """Dimensions given as varargs or as one sequence."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    return [int(a) for a in args] if all(isinstance(a, int) for a in args) else None


def _same_order(in_shape: Sequence[int], axis: int, out_shape: Sequence[int]) -> int | None:
    """Where the row axis lands when the elements keep their order (a view): the dimension of the
    same size after as many elements as before it."""
    before = math.prod(in_shape[:axis])
    for j, size in enumerate(out_shape):
        if size == in_shape[axis] and math.prod(out_shape[:j]) == before:
            return j
    return None


def _reduced(call: OpCall, ndim: int, axis: int) -> int | None:
    dims = call.arg(1, "dim")
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (tuple, list)) or not dims or not all(isinstance(d, int) for d in dims):
        return None
    dims = [d % ndim for d in dims]
    if axis in dims:
        return None
    keep = bool(call.arg(2, "keepdim", False))
    return axis if keep else axis - sum(d < axis for d in dims)


def pixel_axis(
    call: OpCall,
    in_shape: tuple[int, ...],
    axis: int,
    out_shape: tuple[int, ...],
    consts: Mapping[str, torch.Tensor],
) -> int | None:
    """The row axis of ``call``'s output when it maps each row of its one input (``in_shape``, row
    axis ``axis``; the previous op's result, or the layer's input for a first op) to a row of its
    output and to nothing else; None otherwise."""
    ndim, target = len(in_shape), call.target
    new: int | None = None
    if target not in ELEMENTWISE and (not call.args or not isinstance(call.args[0], (Prev, In))):
        return None  # (an element-wise op may take its input anywhere: 0.5 * x)
    if target in ELEMENTWISE:
        local = _rows_along(call, consts, ndim - axis, in_shape[axis])
        new = axis if out_shape == in_shape and local else None
    elif target in _RESHAPES and _ints(call.args[1:]) is None and "shape" not in call.kwargs:
        new = None  # view(dtype) reinterprets bits; only sizes keep the elements in order
    elif target in _SAME_ORDER:
        new = _same_order(in_shape, axis, out_shape)
    elif target in _SQUEEZES:
        # squeeze(dim) of the rows: a no-op on the traced map, but it drops the axis of a 1-row slice
        dim = call.arg(1, "dim")
        new = None if not isinstance(dim, int) or dim % ndim == axis else _same_order(in_shape, axis, out_shape)
    elif target in _PERMUTES:
        dims = _ints(call.args[1:]) if len(call.args) > 1 else _ints([call.kwargs.get("dims", ())])
        new = [d % ndim for d in dims].index(axis) if dims and len(dims) == ndim else None
    elif target in _TRANSPOSES:
        pair = _ints(call.args[1:3])
        if pair is not None and len(pair) == 2:
            a, b = (d % ndim for d in pair)
            new = b if axis == a else a if axis == b else axis
    elif target in _REDUCTIONS:
        new = _reduced(call, ndim, axis)
    elif target in _ALONG_DIM:
        dim = call.arg(1, "dim")
        new = axis if isinstance(dim, int) and dim % ndim != axis else None
    elif target == "F.layer_norm":
        normalized = call.arg(1, "normalized_shape", ())
        new = axis if axis < ndim - len(normalized) else None
    elif target == "F.linear":
        new = axis if axis < ndim - 1 and isinstance(call.arg(1, "weight"), Const) else None
    elif target in ("operator.getitem", "method.__getitem__"):
        new = axis if _keeps_axis(call.args[1], axis) else None
    if new is None or new >= len(out_shape) or out_shape[new] != in_shape[axis]:
        return None
    return new


def _keeps_axis(index: Any, axis: int) -> bool:
    index = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, slice) for i in index) and (len(index) <= axis or index[axis] == slice(None))


def free_rows(
    call: OpCall, out_shape: tuple[int, ...], axis: int, consts: Mapping[str, torch.Tensor] | None = None
) -> OpCall:
    """``call`` with the sizes of a view or reshape written for any number of rows (-1 on the row
    axis, every other size as traced), and each constant of an element-wise op that has as many
    rows as the result read by the unit's rows (:class:`RowConst`): a unit runs it on its slice,
    not on the traced map."""
    if call.target in ELEMENTWISE and consts is not None:
        from_end, rows = len(out_shape) - axis, out_shape[axis]

        def sliced(value: Any) -> Any:
            if isinstance(value, Const) and not isinstance(value, RowConst):
                shape = consts[value.name].shape
                if rows > 1 and row_extent(shape, from_end) == rows:
                    return RowConst(value.name, len(shape) - from_end)
            if isinstance(value, (tuple, list)):
                return type(value)(sliced(v) for v in value)
            return value

        args = tuple(sliced(a) for a in call.args)
        kwargs = {k: sliced(v) for k, v in call.kwargs.items()}
        return (
            call if (args, kwargs) == (call.args, dict(call.kwargs)) else OpCall(call.target, args, kwargs, call.node)
        )
    if call.target not in _RESHAPES:
        return call
    sizes = tuple(-1 if j == axis else int(d) for j, d in enumerate(out_shape))
    target = "method.reshape" if call.target == "method.view" else call.target  # a slice may not be viewable
    return OpCall(target, (call.args[0], sizes), {}, call.node)


def whole_consts(ops: list[OpCall]) -> list[OpCall]:
    """``ops`` reading every constant whole: the ops of a layer that runs whole (a unit of all its
    rows), where a :class:`RowConst` made for a slice of an intermediate result would miscount."""

    def whole(value: Any) -> Any:
        if isinstance(value, RowConst):
            return Const(value.name)
        if isinstance(value, (tuple, list)):
            return type(value)(whole(v) for v in value)
        return value

    return [
        OpCall(c.target, tuple(whole(a) for a in c.args), {k: whole(v) for k, v in c.kwargs.items()}, c.node)
        for c in ops
    ]
