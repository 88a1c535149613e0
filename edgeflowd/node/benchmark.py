"""The micro-benchmark a daemon runs at start: achieved GFLOP/s per op kind (dense convolution,
depthwise convolution, matrix multiply) and the rate of a pass over a layer's weights, with the
torch threads it will compute with. The
controller combines it with the declared profile and live load (see controller/control/registry.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["run_benchmark"]


def _gflops(op: Callable[[], torch.Tensor], flops: float, repeats: int) -> float:
    op()  # warm-up: first-call allocation and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        op()
        times.append(time.perf_counter() - start)
    return round(flops / max(statistics.median(times), 1e-9) / 1e9, 2)


def _per_call_s(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, weights: list[torch.Tensor], repeats: int
) -> float:
    for w in weights:  # warm-up
        op(x, w)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for w in weights:
            op(x, w)
        times.append((time.perf_counter() - start) / len(weights))
    return statistics.median(times)


def weights_gbps(repeats: int = 3) -> float:
    """GB/s of one pass over a layer's weights: a 1x1 convolution with 8 MiB of weights on one
    row and on eight, the fixed part of its time being the pass. The weights rotate over 48 MiB,
    more than a board's cache holds, as a model's layers do (0 when the fit is not positive)."""
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(2048, 1024, 1, 1, generator=gen) for _ in range(6)]
    one, eight = torch.randn(1, 1024, 1, 7, generator=gen), torch.randn(1, 1024, 8, 7, generator=gen)
    t1 = _per_call_s(F.conv2d, one, weights, repeats)
    t8 = _per_call_s(F.conv2d, eight, weights, repeats)
    fixed = t1 - (t8 - t1) / 7
    return round(weights[0].numel() * 4 / fixed / 1e9, 2) if fixed > 0 else 0.0


def run_benchmark(repeats: int = 5) -> dict[str, float]:
    """Median rates of three representative ops and the weight-pass rate (about 0.6 s on one
    core of a 2020s x86)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.randn(1, 64, 56, 56, generator=gen)
        w = torch.randn(64, 64, 3, 3, generator=gen)
        xd = torch.randn(1, 256, 56, 56, generator=gen)
        wd = torch.randn(256, 1, 3, 3, generator=gen)
        a = torch.randn(512, 512, generator=gen)
        return {
            "conv_gflops": _gflops(lambda: F.conv2d(x, w, padding=1), 2.0 * 64 * 64 * 9 * 56 * 56, repeats),
            "dwconv_gflops": _gflops(lambda: F.conv2d(xd, wd, padding=1, groups=256), 2.0 * 256 * 9 * 56 * 56, repeats),
            "matmul_gflops": _gflops(lambda: a @ a, 2.0 * 512**3, repeats),
            "weights_gbps": weights_gbps(),
            "threads": float(torch.get_num_threads()),
        }
