"""Convolution weights reordered once per plan instead of once per call.

``F.conv2d`` on a CPU hands a spatial convolution (kernel larger than 1x1) to oneDNN, which
reorders the weights into its blocked layout on *every call*: a pass over all of them, whatever
the rows. Every unit of a split layer pays it, so splitting a layer over two devices paid its
weights twice (the cost model's weight pass). Reordered once, when a node takes its plan, the
same convolution runs 1.5-1.8x faster on this project's test machine (a 3x3 of 512 channels on
4 rows of a 7x7 map: 3.3 -> 1.8 ms), and a unit of a few rows costs little more than its rows.

Results move by float rounding only (oneDNN sums in another order; relative 1e-6). Each packed
weight is checked once against ``F.conv2d`` when it is made; where oneDNN is missing, the op is
not there, or the check fails, the convolution runs as ``F.conv2d`` does. 1x1 convolutions stay
on ``F.conv2d`` (a matrix multiply there, no faster packed). Packing is not always faster: on big
maps of few channels (YOLOv5s' first stages) the packed op's layout changes of the rows cost more
than the reorder of small weights saves, so a node times both on each unit's own input, once per
plan, and keeps the faster (``timer``; ``verify`` packs every convolution, to check them all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from edgeflowd.core.ops import Const, OpCall

__all__ = ["PACKED", "conv2d_packed", "pack_convolutions", "packed_name"]

PACKED = "#packed"
"""Suffix of a packed weight's name in a runtime's tensors (never on the wire)."""

_CHECK_TOLERANCE = 1e-4


def packed_name(weight: str) -> str:
    return weight + PACKED


def _available() -> bool:
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and mkldnn is not None
        and hasattr(mkldnn, "_convolution_pointwise")
        and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    )


def conv2d_packed(
    x: torch.Tensor,
    packed: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """``F.conv2d`` with a weight :func:`pack_convolutions` made; the result in the usual layout."""
    out: torch.Tensor = torch.ops.mkldnn._convolution_pointwise(
        x.contiguous(), packed, bias, list(padding), list(stride), list(dilation), groups, "none", [], ""
    )
    return out.contiguous()  # oneDNN writes channels-last; rows are sliced and framed in NCHW


def _faster(plain: Callable[[], object], packed: Callable[[], object], timer: Callable[[], float]) -> bool:
    """Whether ``packed`` beats ``plain`` (best of three each, after a warm-up)."""
    best = []
    for run in (plain, packed):
        run()
        times = []
        for _ in range(3):
            start = timer()
            run()
            times.append(timer() - start)
        best.append(min(times))
    return best[1] < best[0]


def _pack(
    call: OpCall, tensors: Mapping[str, torch.Tensor], shape: Sequence[int], timer: Callable[[], float] | None
) -> torch.Tensor | None:
    kw = call.kwargs
    weight = tensors.get(kw["weight"].name) if isinstance(kw.get("weight"), Const) else None
    if weight is None or weight.dim() != 4 or weight.dtype != torch.float32 or weight.shape[2] * weight.shape[3] == 1:
        return None
    bias = tensors.get(kw["bias"].name) if isinstance(kw.get("bias"), Const) else None
    stride, padding, dilation, groups = kw["stride"], kw["padding"], kw["dilation"], kw["groups"]
    gen = torch.Generator().manual_seed(0)
    rows = dilation[0] * (weight.shape[2] - 1) + 1 + stride[0]  # two output rows: enough to check
    x = torch.randn(1, weight.shape[1] * groups, rows, int(shape[3]), generator=gen)
    try:
        packed: torch.Tensor = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
            weight.to_mkldnn(), list(padding), list(stride), list(dilation), groups, list(shape)
        )
        want = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        got = conv2d_packed(x, packed, bias, stride, padding, dilation, groups)
    except RuntimeError:  # this build's oneDNN refuses the shape or the layout
        return None
    if got.shape != want.shape or float((got - want).abs().max()) > _CHECK_TOLERANCE * float(want.abs().max()):
        return None
    if timer is not None:  # on the unit's own input: big maps of few channels run faster unpacked
        full = torch.randn(*shape, generator=gen)
        if not _faster(
            lambda: F.conv2d(full, weight, bias, stride, padding, dilation, groups),
            lambda: conv2d_packed(full, packed, bias, stride, padding, dilation, groups),
            timer,
        ):
            return None
    return packed


def pack_convolutions(
    calls: Iterable[tuple[OpCall, Sequence[int]]],
    tensors: Mapping[str, torch.Tensor],
    timer: Callable[[], float] | None = None,
) -> dict[str, torch.Tensor]:
    """Packed weights, by :func:`packed_name`, for the spatial convolutions among ``calls``
    (each with the shape of the input it runs on); those that cannot be packed are left out,
    and with ``timer``, those that do not run faster packed on that input."""
    if not _available():
        return {}
    packed: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for call, shape in calls:
            weight = call.kwargs.get("weight")
            if call.target != "F.conv2d" or call.args or not isinstance(weight, Const) or len(shape) != 4:
                continue
            name = packed_name(weight.name)
            if name not in packed and (made := _pack(call, tensors, shape, timer)) is not None:
                packed[name] = made
    return packed
