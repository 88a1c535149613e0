"""Floating-point operation counts per op (multiply and add count as two)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from edgeflowd.core.ops import Const, OpCall

__all__ = ["op_flops"]

_FREE = {
    "method.view",
    "method.reshape",
    "method.permute",
    "method.transpose",
    "method.flatten",
    "method.contiguous",
    "method.unsqueeze",
    "method.squeeze",
    "method.expand",
    "torch.flatten",
    "torch.reshape",
    "torch.permute",
    "torch.transpose",
    "torch.unsqueeze",
    "torch.squeeze",
    "operator.getitem",
    "identity",
    "torch.cat",
    "torch.split",
    "torch.chunk",
    "method.split",
    "method.chunk",
}


def op_flops(
    call: OpCall,
    in_shapes: Sequence[tuple[int, ...]],
    out_shape: tuple[int, ...],
    consts: Mapping[str, torch.Tensor],
) -> float:
    out = math.prod(out_shape)
    kw = call.kwargs
    if call.target == "F.conv2d" and isinstance(kw.get("weight"), Const):
        w = consts[kw["weight"].name].shape
        return 2.0 * out * w[1] * w[2] * w[3]
    if call.target == "F.conv_transpose2d" and isinstance(kw.get("weight"), Const) and in_shapes:
        w = consts[kw["weight"].name].shape  # (in, out / groups, kh, kw): every input pixel adds a kernel
        return 2.0 * math.prod(in_shapes[0]) * w[1] * w[2] * w[3]
    if call.target == "F.linear" and isinstance(call.args[1], Const):
        return 2.0 * out * consts[call.args[1].name].shape[1]
    if call.target in ("torch.matmul", "torch.bmm") and in_shapes:
        return 2.0 * out * in_shapes[0][-1]
    if call.target in ("F.max_pool2d", "F.avg_pool2d") and "kernel_size" in kw:
        k = kw["kernel_size"]
        return float(out * (k[0] * k[1] if isinstance(k, tuple) else k * k))
    if call.target in ("F.adaptive_avg_pool2d", "F.adaptive_max_pool2d") and in_shapes:
        return float(math.prod(in_shapes[0]))
    if call.target in _FREE:
        return 0.0
    return float(out)
