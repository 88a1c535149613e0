"""The micro-benchmark a daemon runs at start: achieved GFLOP/s per op kind (dense convolution,
depthwise convolution, matrix multiply) with the torch threads it will compute with. The
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


def run_benchmark(repeats: int = 5) -> dict[str, float]:
    """Median rates of three representative ops (about 0.3 s on one core of a 2020s x86)."""
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
            "threads": float(torch.get_num_threads()),
        }
