"""Exactness check: run a model's plans through the daemons' own node runtime, every slice
encoded into frames and carried by the in-memory bus, and compare with the unsplit model."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from controller.graph.layers import LayerGraph
from controller.planner.partitions import Partition, even_partition, random_partition
from controller.planner.plan import Plan, build_plan
from controller.planner.schedule import with_halo_first
from edgeflowd.core.ops import Resolver
from edgeflowd.core.sizes import PACKET_BYTES
from edgeflowd.core.units import CLIENT, run_epilogue
from edgeflowd.node.in_memory import run_request
from edgeflowd.node.runtime import NodeRuntime
from edgeflowd.node.slices import output_needs
from edgeflowd.wire.frames import FrameKeys
from edgeflowd.wire.topics import Topics

__all__ = ["TOLERANCE", "Check", "check_partition", "partitions_to_check", "relative_error", "run_plan"]

TOLERANCE = 1e-4
"""Largest allowed max-abs error relative to the largest output magnitude (float32)."""


@dataclass(frozen=True)
class Check:
    name: str
    units: int
    messages: int  # frames a broker would carry: the input, slices between devices, the results
    bytes: int  # their payload bytes, frame headers included
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
    # Every unit the planner may mark halo first is marked: its pieces must give exactly its rows.
    plan = with_halo_first(build_plan(graph, partition))
    got, messages, nbytes = run_plan(plan, x, graph.tensors, graph.resolve)
    max_abs, rel = relative_error(got, want)
    return Check(name, len(plan.units), messages, nbytes, max_abs, rel, clock() - start)


def plan_runtimes(
    plan: Plan, tensors: Mapping[str, torch.Tensor], resolve: Resolver, timer: Callable[[], float] | None = None
) -> tuple[list[NodeRuntime], NodeRuntime]:
    """One node runtime per device of ``plan`` and a requester's, as a cluster would hold them
    (``timer``: packs convolutions only where faster, as a daemon does; without, all of them)."""
    topics = Topics("verify")
    devices = sorted({u.device for u in plan.units} - {CLIENT})
    sources = plan.on_device(CLIENT)
    keys = FrameKeys.fresh(sources[0].uid if sources else "")  # every frame signed and checked, as on a cluster
    nodes = [
        NodeRuntime(
            _PLAN, topics, plan.on_device(d), tensors, _BUFFER_BYTES, _TTL_S, keys, resolve=resolve, timer=timer
        )
        for d in devices
    ]
    shapes = {u.layer: u.out_shape for u in plan.units}
    outputs = output_needs([(layer, shapes[layer]) for layer in plan.outputs])
    mine = FrameKeys(None, keys.request, keys.client)  # the requester's: no plan key
    requester = NodeRuntime(_PLAN, topics, sources, {}, _BUFFER_BYTES, _TTL_S, mine, outputs=outputs)
    return nodes, requester


def run_plan(
    plan: Plan,
    x: torch.Tensor,
    tensors: Mapping[str, torch.Tensor],
    resolve: Resolver,
    max_packet: int = PACKET_BYTES,
) -> tuple[list[torch.Tensor], int, int]:
    """The model's outputs for ``x`` computed by one node runtime per device and a requester's,
    exchanging frames no larger than ``max_packet``; with the frames and bytes that took.
    ``verify`` resolves ops through the traced model (``graph.resolve``), so models with ops only
    this process can run verify too; a board resolves them through the allow-list."""
    nodes, requester = plan_runtimes(plan, tensors, resolve)
    got, bus = run_request(nodes, requester, x, max_packet)
    if plan.results:  # as a requester finishes the model on what the plan delivered
        got = run_epilogue(plan.epilogue, plan.results, dict(zip(plan.outputs, got, strict=True)), resolve)
    return got, bus.messages, bus.bytes


_PLAN = "verify"
_BUFFER_BYTES = 1 << 40  # one request at a time, nothing to bound
_TTL_S = float("inf")  # no clock runs here
