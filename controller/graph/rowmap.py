"""Row maps: for the first op of a layer, which rows of each input its output rows read.

Rules implemented (H = output height, NCHW tensors; anything that is not NCHW is one row; the
formulas are in docs/graph.md):
- conv2d, max_pool2d, avg_pool2d (partial windows too), pixel_unshuffle, adaptive pooling to a
  divisor of the height: a window;
- conv_transpose2d, and interpolate but for nearest by whole factors: a table computed from
  the op (:mod:`edgeflowd.core.transposed`, :mod:`edgeflowd.core.resample`);
- interpolate nearest by whole factors, pixel_shuffle: upsampling, row ``r`` reads ``r // f``;
- element-wise ops (activations, batchnorm, add/mul/sub/div with broadcasting): identity for
  inputs of height H, whole for inputs broadcast along rows (height 1);
- concat, split and chunk along channels, channel slicing: identity;
- everything else (linear or flatten over the rows, global pooling, softmax, unknown ops):
  whole. Per-pixel ops in other layouts are followed by :mod:`controller.graph.layout`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from edgeflowd.core.ops import ELEMENTWISE, Const, OpCall
from edgeflowd.core.resample import resample_table
from edgeflowd.core.slicing import RowRule
from edgeflowd.core.transposed import transposed_table

__all__ = ["IDENTITY", "WHOLE", "Classified", "classify", "row_extent", "row_local"]

WHOLE = RowRule("whole")
IDENTITY = RowRule("identity")
_CHANNEL_SPLITS = {"torch.split", "torch.chunk", "method.split", "method.chunk"}
_ANY_LAYOUT = frozenset({"torch.cat", "operator.getitem", "method.__getitem__", *_CHANNEL_SPLITS})
"""Ops whose row rule holds whatever the layout, as long as rows are dim 2 and they leave it alone."""


@dataclass(frozen=True)
class Classified:
    kind: str
    rules: tuple[RowRule, ...]
    splittable: bool
    note: str = ""


def _whole(kind: str, n_inputs: int, note: str = "") -> Classified:
    return Classified(kind, (WHOLE,) * n_inputs, False, note)


def row_extent(shape: Sequence[int], from_end: int = 2) -> int:
    """Size of the dimension that broadcasting aligns with the rows, ``from_end`` dimensions from
    the last (2 in an NCHW map): 1 when the operand has fewer dimensions."""
    return int(shape[-from_end]) if len(shape) >= from_end else 1


def _kind(call: OpCall, in_shapes: Sequence[tuple[int, ...]], consts: Mapping[str, torch.Tensor]) -> str:
    target = call.target
    if target in ("F.conv2d", "F.conv_transpose2d"):
        weight = call.kwargs.get("weight")
        groups = int(call.kwargs.get("groups", 1))
        depthwise = isinstance(weight, Const) and groups > 1 and consts[weight.name].shape[1] == 1
        return "dwconv" if depthwise else "conv"
    if target in ("F.linear", "torch.matmul", "torch.bmm"):
        return "matmul"
    if target in ("F.max_pool2d", "F.avg_pool2d", "F.adaptive_avg_pool2d", "F.adaptive_max_pool2d"):
        return "pool"
    if target in ("F.interpolate", "F.pixel_shuffle"):
        return "upsample"
    if target == "torch.cat":
        return "concat"
    if target in ELEMENTWISE:
        return "eltwise"
    return "unknown" if target.startswith("local.") else "reshape"


def classify(
    call: OpCall,
    in_shapes: Sequence[tuple[int, ...]],
    out_shape: tuple[int, ...],
    consts: Mapping[str, torch.Tensor],
) -> Classified:
    """Row rules of ``call`` (the first op of a layer) for each of its ``In`` inputs."""
    n = len(in_shapes)
    kind = _kind(call, in_shapes, consts)
    if call.target.startswith("local."):
        return _whole(kind, n, f"op {call.target} is unknown to EdgeFlow; its layer runs whole")
    ndim = len(out_shape)
    if ndim < 4 or any(len(s) != ndim for s in in_shapes):
        return _whole(kind, n)
    height, kw = out_shape[2], call.kwargs
    if ndim > 4 and call.target not in _ANY_LAYOUT and call.target not in ELEMENTWISE:
        return _whole(kind, n)  # rows at dim 2 of another layout: only ops that leave it alone split
    if call.target in ("F.conv2d", "F.max_pool2d") and "padding" in kw and isinstance(kw["padding"], tuple):
        if call.target == "F.conv2d" and not isinstance(kw.get("weight"), Const):
            return _whole(kind, n, "convolution with a computed weight")
        k = consts[kw["weight"].name].shape[2] if call.target == "F.conv2d" else kw["kernel_size"][0]
        span = kw["dilation"][0] * (k - 1) + 1
        return Classified(kind, (RowRule("window", span=span, stride=kw["stride"][0], pad=kw["padding"][0]),), True)
    if call.target == "F.avg_pool2d" and isinstance(kw.get("padding"), tuple):
        # Partial windows too: a slice divides by the divisor of the unsplit map (core.pooling).
        rule = RowRule("window", span=kw["kernel_size"][0], stride=kw["stride"][0], pad=kw["padding"][0])
        return Classified(kind, (rule,), True)
    if call.target in ("F.adaptive_avg_pool2d", "F.adaptive_max_pool2d"):
        h_in = in_shapes[0][2]
        if height == 1 or h_in % height:
            why = "global pooling" if height == 1 else f"adaptive pooling of {h_in} rows to {height}"
            return _whole(kind, n, f"{why} mixes rows")
        k = h_in // height
        return Classified(kind, (RowRule("window", span=k, stride=k),), True)
    if call.target == "F.conv_transpose2d":
        if not isinstance(kw.get("weight"), Const) or not isinstance(kw.get("padding"), tuple):
            return _whole(kind, n, "transposed convolution with a computed weight")
        table = transposed_table(kw, int(consts[kw["weight"].name].shape[2]), height)
        return Classified(kind, (RowRule("table", table=table),), True)
    if call.target == "F.interpolate":
        (h_in, w_in) = in_shapes[0][2:]
        if kw.get("mode") == "nearest" and _integer_factors(kw, (h_in, w_in), out_shape[2:]):
            return Classified(kind, (RowRule("upsample", factor=height // h_in),), True)
        if kw.get("antialias") and out_shape[3] == 1:
            # PyTorch 2.13's antialiased resampling to one column is not the separable filter it
            # is for wider maps (off by up to 30%): a slice could not reproduce it row by row.
            return _whole(kind, n, "antialiased resampling to one column (not separable in PyTorch)")
        return Classified(kind, (RowRule("table", table=resample_table(kw, h_in, height)),), True)
    if call.target == "F.pixel_shuffle":
        return Classified(kind, (RowRule("upsample", factor=int(call.arg(1, "upscale_factor"))),), True)
    if call.target == "F.pixel_unshuffle":
        r = int(call.arg(1, "downscale_factor"))
        return Classified(kind, (RowRule("window", span=r, stride=r),), True)
    if call.target == "torch.cat" or call.target in _CHANNEL_SPLITS:
        # cat(tensors, dim), split(x, size, dim), chunk(x, chunks, dim): dim is the third for splits
        position = 1 if call.target == "torch.cat" else 2
        dim = call.arg(position, "dim", 0)
        same_rows = all(s[2] == height for s in in_shapes)
        if isinstance(dim, int) and dim % ndim != 2 and same_rows:
            return Classified(kind, (IDENTITY,) * n, True)
        return _whole(kind, n)
    if call.target in ("operator.getitem", "method.__getitem__"):
        return Classified(kind, (IDENTITY,), True) if _keeps_rows(call.args[1]) else _whole(kind, n)
    if call.target in ELEMENTWISE:
        return _elementwise(call, kind, in_shapes, height, consts, ndim - 2)
    return _whole(kind, n)


def _integer_factors(kw: Mapping[str, Any], size: Sequence[int], out: Sequence[int]) -> bool:
    """Whether nearest resampling repeats each row and column a whole number of times: the sizes
    divide, and a scale given (and used: PyTorch maps indices by 1/scale) is that number."""
    if any(o % i for o, i in zip(out, size, strict=True)):
        return False
    scale = kw.get("scale_factor")
    if scale is None or kw.get("recompute_scale_factor"):
        return True
    scales = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    return all(float(s) == o // i for s, o, i in zip(scales, out, size, strict=True))


def _keeps_rows(index: Any) -> bool:
    """Indexing that keeps every row in place: plain slices, none on the rows (dim 2)."""
    index = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, slice) for i in index):
        return False
    return len(index) < 3 or index[2] == slice(None)


def _elementwise(
    call: OpCall,
    kind: str,
    in_shapes: Sequence[tuple[int, ...]],
    height: int,
    consts: Mapping[str, torch.Tensor],
    from_end: int = 2,
) -> Classified:
    rules: list[RowRule] = []
    for _k, shape in enumerate(in_shapes):
        extent = row_extent(shape, from_end)
        if extent == height:
            rules.append(IDENTITY)
        elif extent == 1:
            rules.append(WHOLE)
        else:
            return _whole(kind, len(in_shapes))
    if not row_local(call, consts, from_end):
        return _whole(kind, len(in_shapes), "element-wise op with a constant that varies along rows")
    if all(rule.pattern == "whole" for rule in rules) and height != 1:
        return _whole(kind, len(in_shapes))
    return Classified(kind, tuple(rules), True)


def row_local(call: OpCall, consts: Mapping[str, torch.Tensor], from_end: int = 2) -> bool:
    """Whether an element-wise op applied to a row slice (its only tensor input) gives those
    rows of its output: no constant operand may vary along the rows (``from_end`` dimensions
    from the last, 2 in an NCHW map)."""
    return call.target in ELEMENTWISE and all(row_extent(consts[n].shape, from_end) == 1 for n in call.const_names())
