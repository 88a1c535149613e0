"""Resampling (``F.interpolate``) of a row range, for every mode, size, scale and corner rule.

Interpolation is separable: an output row is a weighted sum of a few input rows, with weights
that depend only on the two heights and the call's arguments. Rather than restate PyTorch's
index arithmetic (scales in float32, clamping, bicubic's A = -0.75, antialiasing), the weights
are read off the op itself: interpolating a one-hot stack (one channel per input row)
gives, for each output row, exactly the weights PyTorch applies. A slice then resamples its
rows along the height with those taps and along the width with the op as written, whose height
pass is then the identity (a scale of exactly 1).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from edgeflowd.core.rows import RowRange
from edgeflowd.errors import ProtocolError

__all__ = ["resample_rows", "resample_table"]

_HEIGHT_ARGS = ("mode", "align_corners", "recompute_scale_factor", "antialias")


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def _second(value: Any) -> Any:
    return value[-1] if isinstance(value, (tuple, list)) else value


def _height_key(kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """The arguments that decide the height pass, hashable."""
    size, scale = kwargs.get("size"), kwargs.get("scale_factor")
    return (
        None if size is None else int(_first(size)),
        None if scale is None else float(_first(scale)),
        *(kwargs.get(name) for name in _HEIGHT_ARGS),
    )


@functools.lru_cache(maxsize=256)
def _taps(in_h: int, out_h: int, key: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Row indices ``(out_h, T)``, their weights, and the per-row reach ``(first, end)`` flattened."""
    size, scale, mode, align_corners, recompute, antialias = key
    # Two columns, not one: a map one column wide is also "channels last", and PyTorch's
    # antialiased kernels then read it in the wrong order.
    onehot = torch.eye(in_h).view(1, in_h, in_h, 1).expand(1, in_h, in_h, 2).contiguous()
    weights = F.interpolate(
        onehot,
        size=None if size is None else (size, 2),
        scale_factor=None if scale is None else (scale, 1.0),
        mode=mode,
        align_corners=align_corners,
        recompute_scale_factor=recompute,
        antialias=bool(antialias),
    )[0, :, :, 0].T  # (out_h, in_h); the width pass is the identity
    if weights.shape[0] != out_h:
        raise ProtocolError(f"interpolate gives {weights.shape[0]} rows from {in_h}, expected {out_h}")
    nonzero = weights != 0
    rows = torch.arange(in_h)
    first = torch.where(nonzero, rows, in_h).amin(dim=1).clamp(max=in_h - 1)
    end = torch.where(nonzero, rows + 1, 0).amax(dim=1).clamp(min=1)
    end = torch.maximum(end, first + 1)
    width = int((end - first).max())
    index = (first[:, None] + torch.arange(width)).clamp(max=in_h - 1)
    index = torch.minimum(index, (end - 1)[:, None])
    taps = torch.gather(weights, 1, index)
    taps = torch.where(first[:, None] + torch.arange(width) < end[:, None], taps, 0.0)
    # A weight can be exactly zero (bicubic at a whole source row): the reach of a range of rows is
    # the hull of its rows' reaches, so the table keeps the running minimum from below and maximum.
    lows = torch.flip(torch.cummin(torch.flip(first, (0,)), 0).values, (0,))
    highs = torch.cummax(end, 0).values
    table = tuple(int(v) for pair in zip(lows.tolist(), highs.tolist(), strict=True) for v in pair)
    return index, taps, table


def resample_table(kwargs: Mapping[str, Any], in_h: int, out_h: int) -> tuple[int, ...]:
    """The ``table`` row rule of an ``F.interpolate`` call from ``in_h`` to ``out_h`` rows."""
    return _taps(in_h, out_h, _height_key(kwargs))[2]


def resample_rows(
    kwargs: Mapping[str, Any], x: torch.Tensor, have: RowRange, in_h: int, out: RowRange, out_shape: tuple[int, ...]
) -> torch.Tensor:
    """Rows ``out`` of ``F.interpolate(input, **kwargs)`` from ``x``, rows ``have`` of its input."""
    index, taps, _ = _taps(in_h, int(out_shape[2]), _height_key(kwargs))
    index, taps = index[out.start : out.stop] - have.start, taps[out.start : out.stop].to(x.dtype)
    if len(out) and (int(index.min()) < 0 or int(index.max()) >= x.shape[2]):
        raise ProtocolError(f"interpolate rows {out} read rows outside the {have} this unit holds")
    rows = taps[:, 0].view(1, 1, -1, 1) * x.index_select(2, index[:, 0])
    for t in range(1, index.shape[1]):
        rows = rows + taps[:, t].view(1, 1, -1, 1) * x.index_select(2, index[:, t])
    scale, size = kwargs.get("scale_factor"), kwargs.get("size")
    if scale is not None and not kwargs.get("recompute_scale_factor"):
        # PyTorch maps columns with 1/scale, not with the ratio of widths: keep the scale.
        width: dict[str, Any] = {"scale_factor": (1.0, float(_second(scale)))}
    elif x.shape[3] == out_shape[3] and size is not None:
        return rows  # the width is kept: its pass is the identity
    else:
        width = {"size": (len(out), int(out_shape[3]))}
    result: torch.Tensor = F.interpolate(
        rows,
        mode=kwargs.get("mode", "nearest"),
        align_corners=kwargs.get("align_corners"),
        recompute_scale_factor=kwargs.get("recompute_scale_factor") if "scale_factor" in width else None,
        antialias=bool(kwargs.get("antialias")),
        **width,
    )
    return result
