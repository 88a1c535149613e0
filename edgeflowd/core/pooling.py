"""Max pooling as a separable running maximum: the node's ``F.max_pool2d``.

On a CPU, PyTorch's max pooling of a contiguous NCHW map visits every window element by element
on one thread: ResNet's 3x3 stride-2 pool of 64x112x112 takes ~5 ms, as long as its 7x7
convolution, and each 5x5 stride-1 pool of YOLOv5s' SPPF ~4.5 ms on 256x20x20. A maximum is
separable and exact in any order: the max over the window's rows (strided views of the padded
map, ``kh - 1`` elementwise maxima), then over its columns (``kw - 1`` more) gives every output the
same element torch picks, including NaN (``torch.maximum`` propagates it, as pooling does), in
0.1-0.2 of the time. Anything else (indices, dilation, integer maps, arguments torch would
refuse) runs as ``F.max_pool2d``, errors included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["max_pool2d"]

_Size = int | Sequence[int]
_torch_max_pool2d: Callable[..., Any] = F.max_pool2d


def _pair(value: _Size) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    items = tuple(int(v) for v in value)
    if len(items) not in (1, 2):
        raise ValueError(f"expected 1 or 2 sizes, got {len(items)}")
    return (items[0], items[0]) if len(items) == 1 else (items[0], items[1])


def _out(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """torch's output size (``pooling_output_shape``, dilation 1)."""
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:  # the last window would start in the padding
        out -= 1
    return out


def _running_max(x: torch.Tensor, dim: int, kernel: int, stride: int, count: int) -> torch.Tensor:
    """Output ``i`` along ``dim`` is the max of ``x[i*stride : i*stride + kernel]`` there."""

    def shifted(k: int) -> torch.Tensor:
        return x.narrow(dim, k, (count - 1) * stride + 1)[
            (slice(None),) * (dim % x.dim()) + (slice(None, None, stride),)
        ]

    # A copy whatever the layout: ``contiguous()`` of a view that already is (one plane, one
    # window along ``dim``) would return the caller's own tensor, which the maxima below overwrite.
    out = shifted(0).clone(memory_format=torch.contiguous_format)
    for k in range(1, kernel):
        torch.maximum(out, shifted(k), out=out)
    return out


def max_pool2d(
    input: torch.Tensor,
    kernel_size: _Size,
    stride: _Size | None = None,
    padding: _Size = 0,
    dilation: _Size = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Any:
    """``F.max_pool2d`` with the same arguments and the same result (with ``return_indices``,
    torch's pair)."""
    try:
        kh, kw = _pair(kernel_size)
        sh, sw = _pair(stride) if stride is not None and stride not in ([], ()) else (kh, kw)
        ph, pw = _pair(padding)
        dilated = _pair(dilation) != (1, 1)
    except (TypeError, ValueError):  # sizes torch would refuse: let it, with its own message
        return _torch_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    usual = (
        not return_indices
        and not dilated
        and input.is_floating_point()
        and input.dim() in (3, 4)
        and min(kh, kw, sh, sw) > 0
        and 0 <= 2 * ph <= kh
        and 0 <= 2 * pw <= kw
    )
    if not usual:
        return _torch_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    height, width = input.shape[-2:]
    oh, ow = _out(height, kh, sh, ph, ceil_mode), _out(width, kw, sw, pw, ceil_mode)
    if oh <= 0 or ow <= 0:
        return _torch_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    bottom = max(0, (oh - 1) * sh + kh - height - ph)  # ceil_mode's last windows reach past the padding
    right = max(0, (ow - 1) * sw + kw - width - pw)
    x = input
    if ph or pw or bottom or right:
        x = F.pad(input, (pw, right, ph, bottom), value=-math.inf)
    rows = _running_max(x, -2, kh, sh, oh)
    return _running_max(rows, -1, kw, sw, ow)
