"""Transposed convolution (``F.conv_transpose2d``) of a row range.

Input row i adds its kernel to output rows ``i*s - p + k*d`` (k < kernel height): output row r
reads the rows i with ``r + p - span < i*s <= r + p``, ``span = d*(kh-1) + 1``. A slice runs the op
with no height padding on the input rows from ``first(a)`` to ``end(b)`` (zero rows synthesised
past the map's edges, as they add nothing), whose output starts at ``first(a)*s - p``, and keeps
its rows ``[a, b)``. ``first`` and ``end`` are chosen so that this output covers ``[a, b)`` even
when the stride exceeds the kernel (output rows no input reaches hold the bias alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from edgeflowd.core.rows import RowRange
from edgeflowd.errors import ProtocolError

__all__ = ["SIGNATURE", "transposed_rows", "transposed_table"]

SIGNATURE: tuple[tuple[str, Any], ...] = (
    ("input", None),
    ("weight", None),
    ("bias", None),
    ("stride", 1),
    ("padding", 0),
    ("output_padding", 0),
    ("groups", 1),
    ("dilation", 1),
)


def _geometry(kwargs: Mapping[str, Any], kernel: int) -> tuple[int, int, int]:
    """(stride, padding, span) along the height."""
    return int(kwargs["stride"][0]), int(kwargs["padding"][0]), int(kwargs["dilation"][0]) * (kernel - 1) + 1


def _first(row: int, s: int, p: int, span: int) -> int:
    return (row + p - span + 1) // s


def _end(stop: int, s: int, p: int, span: int) -> int:
    return max(-(-(stop + p - span) // s), (stop - 1 + p) // s) + 1


def transposed_table(kwargs: Mapping[str, Any], kernel: int, out_h: int) -> tuple[int, ...]:
    """The ``table`` row rule of a transposed convolution of kernel height ``kernel``."""
    s, p, span = _geometry(kwargs, kernel)
    return tuple(v for r in range(out_h) for v in (_first(r, s, p, span), _end(r + 1, s, p, span)))


def transposed_rows(
    kwargs: Mapping[str, Any],
    x: torch.Tensor,
    needed: RowRange,
    have: RowRange,
    out: RowRange,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Rows ``out`` of the transposed convolution from ``x`` (rows ``have``, the clipped part of
    ``needed`` = the table's reach of ``out``)."""
    s, p, _ = _geometry(kwargs, int(weight.shape[2]))
    top = len(needed) if have.empty else have.start - needed.start
    bottom = 0 if have.empty else needed.stop - have.stop
    if top or bottom:
        x = F.pad(x[:, :, :0] if have.empty else x, (0, 0, top, bottom))
    y = F.conv_transpose2d(
        x,
        weight,
        bias,
        kwargs["stride"],
        (0, kwargs["padding"][1]),
        (0, kwargs["output_padding"][1]),
        kwargs["groups"],
        kwargs["dilation"],
    )
    offset = out.start - (needed.start * s - p)
    if offset < 0 or offset + len(out) > y.shape[2]:
        raise ProtocolError(f"transposed convolution rows {out} are not within what input rows {needed} give")
    return y[:, :, offset : offset + len(out)]
