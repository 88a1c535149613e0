"""Row rules and slice-exact execution: compute rows ``[a, b)`` of a layer from only the input
rows that those output rows depend on.

Padding rows are synthesised here, never sent: zeros for convolution and average pooling, ``-inf``
for max pooling (PyTorch's max pooling ignores padding, which ``-inf`` reproduces exactly).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from edgeflowd.core.ops import Const, OpCall, Prev, Resolver, allowed_resolver, run_call
from edgeflowd.core.packed import conv2d_packed, packed_name
from edgeflowd.core.pooling import avg_pool2d_rows
from edgeflowd.core.resample import resample_rows
from edgeflowd.core.rows import RowRange
from edgeflowd.core.transposed import transposed_rows
from edgeflowd.errors import ProtocolError

__all__ = ["WINDOW_TARGETS", "RowRule", "height_of", "row_numel", "rows_shape", "run_layer_rows", "take_rows"]

RulePattern = Literal["window", "upsample", "table", "identity", "whole"]
WINDOW_TARGETS = frozenset({"F.conv2d", "F.max_pool2d", "F.avg_pool2d"})


@dataclass(frozen=True)
class RowRule:
    """Which rows of one input the output rows ``[a, b)`` read.

    - ``window``: rows ``[a*stride - pad, (b-1)*stride - pad + span)`` (``span`` is the dilated
      kernel height); the range may reach into padding.
    - ``upsample``: nearest upsampling by an integer ``factor``: rows ``[a//f, (b-1)//f + 1)``.
    - ``table``: ``table`` holds, for each output row r, the first and the end of the input rows it
      reads (``table[2r]``, ``table[2r+1]``, in row order): output rows ``[a, b)`` read
      ``[table[2a], table[2b-1])``. For maps whose reach has no short formula, computed once from
      the op itself (resampling to any size, transposed convolution); may reach into padding.
    - ``identity``: the same rows (element-wise ops, channel concat).
    - ``whole``: every row (the input is broadcast, or the op mixes rows).
    """

    pattern: RulePattern
    span: int = 1
    stride: int = 1
    pad: int = 0
    factor: int = 1
    table: tuple[int, ...] = ()

    def needed(self, out: RowRange, in_height: int) -> RowRange:
        """Input rows, unclipped, that output rows ``out`` depend on."""
        if out.empty:
            return RowRange(0, 0)
        return RowRange(*self._reach(out.start, out.stop, in_height))

    def needed_clipped(self, start: int, stop: int, in_height: int) -> tuple[int, int]:
        """``needed(RowRange(start, stop)).clip(in_height)`` as plain ints (planners' hot loop)."""
        if stop <= start:
            return 0, 0
        lo, hi = self._reach(start, stop, in_height)
        return max(lo, 0), min(hi, in_height)

    def _reach(self, start: int, stop: int, in_height: int) -> tuple[int, int]:
        if self.pattern == "whole":
            return 0, in_height
        if self.pattern == "identity":
            return start, stop
        if self.pattern == "window":
            return start * self.stride - self.pad, (stop - 1) * self.stride - self.pad + self.span
        if self.pattern == "table":
            return self.table[2 * start], self.table[2 * stop - 1]
        return start // self.factor, (stop - 1) // self.factor + 1

    def affine(self) -> tuple[float, float, float]:
        """``(ratio, lo, hi)`` with which the linear planners model the reach of rows ``[a, b)`` as
        ``[ratio*a + lo, ratio*b + hi)``: exact for windows, the continuous relaxation of
        ``[a//f, (b-1)//f + 1)`` for upsampling, and a bound that holds for every range of a table."""
        if self.pattern == "window":
            return float(self.stride), float(-self.pad), float(self.span - self.stride - self.pad)
        if self.pattern == "upsample":
            return 1.0 / self.factor, 0.0, 1.0
        if self.pattern == "table":
            return _table_affine(self.table)
        return 1.0, 0.0, 0.0


@functools.lru_cache(maxsize=1024)
def _table_affine(table: tuple[int, ...]) -> tuple[float, float, float]:
    rows = len(table) // 2
    starts, stops = table[0::2], table[1::2]
    ratio = (starts[-1] - starts[0]) / (rows - 1) if rows > 1 else float(stops[0] - starts[0])
    lo = min(s - ratio * r for r, s in enumerate(starts))
    hi = max(e - ratio * (r + 1) for r, e in enumerate(stops))
    return ratio, lo, hi


def height_of(shape: Sequence[int]) -> int:
    """Rows of a tensor: its third dimension when it has four or more (the height of an NCHW map,
    or of a map some per-pixel ops moved into another layout, such as a detection head's
    ``N, anchors, H, W, outputs``); anything else is one indivisible row."""
    return int(shape[2]) if len(shape) >= 4 else 1


def rows_shape(shape: Sequence[int], rows: RowRange) -> tuple[int, ...]:
    """Shape of rows ``rows`` of a tensor of full shape ``shape`` (tensors of fewer than four
    dimensions travel whole)."""
    if len(shape) < 4:
        return tuple(shape)
    return (shape[0], shape[1], len(rows), *shape[3:])


def row_numel(shape: Sequence[int]) -> int:
    """Elements in one row of a tensor of ``shape`` (the whole tensor when it is one row)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n // height_of(shape)


def take_rows(tensor: torch.Tensor, rows: RowRange, held: RowRange) -> torch.Tensor:
    """Rows ``rows`` (absolute) of ``tensor``, which holds rows ``held`` of its layer."""
    if tensor.dim() < 4:
        return tensor
    return tensor[:, :, rows.start - held.start : rows.stop - held.start]


def _pads(needed: RowRange, have: RowRange) -> tuple[int, int]:
    """Rows of padding to synthesise above and below the rows we have."""
    if have.empty:  # the window lies wholly in padding
        return len(needed), 0
    return have.start - needed.start, needed.stop - have.stop


def _conv(
    call: OpCall, x: torch.Tensor, padding: tuple[int, int], tensors: Mapping[str, torch.Tensor], resolve: Resolver
) -> torch.Tensor:
    """``F.conv2d`` as ``call`` has it on ``x`` with ``padding``; with the weight the runtime
    packed for it where there is one (:mod:`edgeflowd.core.packed`)."""
    kw = call.kwargs
    weight = kw.get("weight")
    packed = tensors.get(packed_name(weight.name)) if isinstance(weight, Const) else None
    if packed is None:
        conv: torch.Tensor = run_call(call, [x], None, tensors, resolve, padding=padding)
        return conv
    bias = tensors[kw["bias"].name] if isinstance(kw.get("bias"), Const) else None
    return conv2d_packed(x, packed, bias, kw["stride"], padding, kw["dilation"], kw["groups"])


def _window(
    call: OpCall,
    x: torch.Tensor,
    needed: RowRange,
    have: RowRange,
    out: RowRange,
    out_width: int,
    in_shape: Sequence[int],
    tensors: Mapping[str, torch.Tensor],
    resolve: Resolver,
) -> torch.Tensor:
    top, bottom = _pads(needed, have)
    kw = call.kwargs
    if call.target == "F.conv2d":
        if top != bottom:  # a convolution pads both sides alike: the uneven case needs a padded copy
            x, top = F.pad(x, (0, 0, top, bottom)), 0
        return _conv(call, x, (top, kw["padding"][1]), tensors, resolve)
    if call.target == "F.avg_pool2d":
        return avg_pool2d_rows(kw, x, top, bottom, (int(in_shape[2]), int(in_shape[3])), out.start)
    # max pooling: pad both axes with -inf to exactly the extent the windows cover.
    pw, sw = kw["padding"][1], kw["stride"][1]
    need_w = (out_width - 1) * sw + kw["dilation"][1] * (kw["kernel_size"][1] - 1) + 1
    right = need_w - x.shape[3] - pw
    x = F.pad(x, (pw, max(right, 0), top, bottom), value=float("-inf"))
    x = x[..., :need_w] if right < 0 else x
    pooled: torch.Tensor = run_call(call, [x], None, tensors, resolve, padding=0, ceil_mode=False)
    return pooled


_ADAPTIVE = frozenset({"F.adaptive_avg_pool2d", "F.adaptive_max_pool2d"})


def _table(
    call: OpCall,
    x: torch.Tensor,
    needed: RowRange,
    have: RowRange,
    out: RowRange,
    out_shape: Sequence[int],
    in_shape: Sequence[int],
    tensors: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Rows ``out`` of an op whose reach is a table: resampling or a transposed convolution."""
    kw = call.kwargs
    if call.target == "F.interpolate":
        return resample_rows(kw, x, have, int(in_shape[2]), out, tuple(out_shape))
    if call.target == "F.conv_transpose2d" and isinstance(kw.get("weight"), Const):
        bias = tensors[kw["bias"].name] if isinstance(kw.get("bias"), Const) else None
        return transposed_rows(kw, x, needed, have, out, tensors[kw["weight"].name], bias)
    raise ProtocolError(f"op {call.target} has no slice of rows by table")


_IN_PLACE = frozenset(
    {"F.relu", "F.relu6", "F.silu", "F.hardswish", "F.hardsigmoid", "F.leaky_relu", "F.elu", "F.hardtanh"}
)
"""Activations that take ``inplace=True``; the graph always records them out of place."""


def _owned(result: object, inputs: Sequence[torch.Tensor]) -> bool:
    """Whether ``result`` is a tensor none of ``inputs`` (the unit's inputs and the weights its
    ops name: an op may return one of them as it is) shares memory with, so nobody else reads it."""
    if not isinstance(result, torch.Tensor) or result.requires_grad:
        return False
    mine = result.untyped_storage().data_ptr()
    return all(i.untyped_storage().data_ptr() != mine for i in inputs)


def run_layer_rows(
    ops: Sequence[OpCall],
    rules: Sequence[RowRule],
    inputs: Sequence[torch.Tensor],
    needed: Sequence[RowRange],
    have: Sequence[RowRange],
    out: RowRange,
    out_shape: Sequence[int],
    tensors: Mapping[str, torch.Tensor],
    resolve: Resolver = allowed_resolver,
    in_shapes: Sequence[Sequence[int]] = (),
) -> torch.Tensor:
    """Rows ``out`` of a layer whose first op reads ``inputs`` (input k holds rows ``have[k]``
    of its producer, whose full shape is ``in_shapes[k]``, the clipped part of ``needed[k]``);
    the remaining ops are row-local."""
    first, patterns = ops[0], {rule.pattern for rule in rules}
    window = "window" in patterns and first.target in WINDOW_TARGETS
    pad = first.kwargs.get("padding", (None,))[0] if window else None
    full = len(out) == height_of(out_shape)
    # A pool's ceil_mode may add a row at a slice's end: only a unit of all its rows runs it as is.
    as_is = first.target == "F.conv2d" or full
    if window and as_is and _pads(needed[0], have[0]) == (pad, pad):
        # The rows to synthesise are the op's own padding (all of its input's rows, as a unit of
        # the whole layer reads them, or none): it pads them itself, with no padded copy.
        if first.target == "F.conv2d":
            result = _conv(first, inputs[0], first.kwargs["padding"], tensors, resolve)
        else:
            result = run_call(first, inputs, None, tensors, resolve)
    elif window:
        result = _window(first, inputs[0], needed[0], have[0], out, int(out_shape[3]), in_shapes[0], tensors, resolve)
    elif "table" in patterns and not (full and have[0] == RowRange(0, int(in_shapes[0][2]))):
        result = _table(first, inputs[0], needed[0], have[0], out, out_shape, in_shapes[0], tensors)
    elif "upsample" in patterns and first.target == "F.interpolate":
        factors = (float(rules[0].factor), float(out_shape[3] // inputs[0].shape[3]))
        result = run_call(first, inputs, None, tensors, resolve, size=None, scale_factor=factors)
        result = result[:, :, out.start - have[0].start * rules[0].factor :][:, :, : len(out)]
    elif "upsample" in patterns:  # pixel shuffle: rows [a//f, ...) give rows from (a//f)*f on
        result = run_call(first, inputs, None, tensors, resolve)
        result = result[:, :, out.start - have[0].start * rules[0].factor :][:, :, : len(out)]
    elif "window" in patterns and not full and first.target in _ADAPTIVE:  # rows k-to-1
        result = run_call(first, inputs, None, tensors, resolve, output_size=(len(out), int(out_shape[3])))
    else:
        result = run_call(first, inputs, None, tensors, resolve, rows=out)
    # Every op after the first maps each row to itself: each computes rows ``out`` (of its constants
    # that go with the rows, it reads those).
    for call in ops[1:]:
        if (
            call.target in _IN_PLACE
            and len(call.args) == 1
            and isinstance(call.args[0], Prev)
            and _owned(result, [*inputs, *(tensors[n] for op in ops for n in op.const_names() if n in tensors)])
        ):
            # The previous op made this tensor here: the activation may overwrite it, sparing an
            # allocation and a pass over memory (same values bit for bit).
            result = run_call(call, inputs, result, tensors, resolve, rows=out, inplace=True)
        else:
            result = run_call(call, inputs, result, tensors, resolve, rows=out)
    if not isinstance(result, torch.Tensor):
        raise ProtocolError(f"layer op {ops[-1].node or ops[-1].target} returned {type(result).__name__}, not a tensor")
    return result
