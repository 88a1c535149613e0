"""Pooling on the node: max pooling as a separable running maximum (the node's
``F.max_pool2d``), and the rows of an average pooling computed from a slice
(:func:`avg_pool2d_rows`, which keeps the unsplit map's divisors).

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["avg_pool2d_rows", "max_pool2d"]

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


def _divisors(count: int, size: int, kernel: int, stride: int, pad: int, start: int, include_pad: bool) -> list[int]:
    """PyTorch's divisor along one axis for outputs ``start..start+count`` (``avg_pool2d``'s
    kernel: the window clipped to the padded map, or to the map without ``count_include_pad``)."""
    out = []
    for r in range(start, start + count):
        lo = r * stride - pad
        hi = min(lo + kernel, size + pad)
        out.append(hi - lo if include_pad else min(hi, size) - max(lo, 0))
    return out


def avg_pool2d_rows(
    kwargs: Mapping[str, Any], x: torch.Tensor, top: int, bottom: int, in_size: tuple[int, int], first_row: int
) -> torch.Tensor:
    """Rows of ``F.avg_pool2d(input, **kwargs)`` from ``first_row`` on, from ``x``: the input rows
    their windows reach, less ``top`` and ``bottom`` rows of padding. Windows that are partial
    (ceil mode, ``count_include_pad=False``) keep the divisor of the unsplit map: sums of the
    zero-padded slice divided by the divisors PyTorch computes from the true window."""
    (kh, kw), (sh, sw), (ph, pw) = kwargs["kernel_size"], kwargs["stride"], kwargs["padding"]
    height, width = in_size
    rows = (top + x.shape[2] + bottom - kh) // sh + 1
    cols = _out(width, kw, sw, pw, bool(kwargs["ceil_mode"]))
    right = (cols - 1) * sw + kw - width - pw
    x = F.pad(x, (pw, max(right, 0), top, bottom))
    x = x[..., : (cols - 1) * sw + kw] if right < 0 else x
    sums = F.avg_pool2d(x, (kh, kw), (sh, sw), 0, False, True, 1)
    if kwargs.get("divisor_override"):
        return sums / int(kwargs["divisor_override"])
    include = bool(kwargs["count_include_pad"])
    down = torch.tensor(_divisors(rows, height, kh, sh, ph, first_row, include), dtype=x.dtype)
    across = torch.tensor(_divisors(cols, width, kw, sw, pw, 0, include), dtype=x.dtype)
    return sums / (down[:, None] * across[None, :])
