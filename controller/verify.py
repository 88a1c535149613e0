"""Exactness check: run a model's plans unit by unit and compare with the unsplit model."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from controller.executor import execute
from controller.graph.layers import LayerGraph
from controller.partitions import Partition, even_partition, random_partition
from controller.plan import build_plan

__all__ = ["TOLERANCE", "Check", "check_partition", "partitions_to_check", "relative_error"]

TOLERANCE = 1e-4
"""Largest allowed max-abs error relative to the largest output magnitude (float32)."""


@dataclass(frozen=True)
class Check:
    name: str
    units: int
    messages: int
    remote_bytes: int
    max_abs: float
    relative: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.relative <= TOLERANCE


def _abs_diff(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got - want|, counting equal values (infinities included, e.g. a max-pool window that lies
    wholly in padding gives -inf) and NaN against NaN as no error."""
    same = (got == want) | (torch.isnan(got) & torch.isnan(want))
    return torch.where(same, torch.zeros_like(want), (got - want).abs())


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[float, float]:
    """(max absolute error, that error over the largest finite reference magnitude)."""
    max_abs = max(float(_abs_diff(g, w).max()) if w.numel() else 0.0 for g, w in zip(got, want, strict=True))
    finite = [w[torch.isfinite(w)] for w in want]
    scale = max(float(f.abs().max()) if f.numel() else 0.0 for f in finite)
    return max_abs, max_abs / max(scale, 1e-12)


def reference_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def partitions_to_check(
    graph: LayerGraph, devices: int, random_count: int, seed: int
) -> Iterator[tuple[str, Partition]]:
    yield "even", even_partition(graph, devices)
    rng = random.Random(seed)
    for i in range(random_count):
        yield f"random-{i + 1}", random_partition(graph, devices, rng)


def check_partition(
    name: str,
    graph: LayerGraph,
    partition: Partition,
    x: torch.Tensor,
    want: list[torch.Tensor],
    clock: Callable[[], float] = time.perf_counter,
) -> Check:
    start = clock()
    plan = build_plan(graph, partition)
    got, stats = execute(plan, x, graph.tensors, graph.resolve)
    max_abs, rel = relative_error(got, want)
    return Check(name, len(plan.units), stats.messages, stats.remote_bytes, max_abs, rel, clock() - start)
