"""Whole plans run in one process over the in-memory bus: every node's runtime and the
requester's, exchanging only encoded frames, exactly as they do through a broker. ``edgeflow
verify`` proves exactness this way, on the data path the daemons take."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edgeflowd.errors import PlanError, ProtocolError
from edgeflowd.net.memory import MemoryBus
from edgeflowd.node.runtime import Complete, NodeRuntime, carry_out
from edgeflowd.wire.topics import BusyTopic, ResultTopic, UnitInputTopic

__all__ = ["run_request", "subscribe"]

_MAX_MESSAGES = 1_000_000  # a plan of the zoo passes a few thousand frames; more means a loop


def subscribe(bus: MemoryBus, runtime: NodeRuntime, max_packet: int, done: list[Complete]) -> None:
    def serve(topic: str, payload: bytes) -> None:
        about = runtime.topics.parse(topic)
        if isinstance(about, BusyTopic):  # as the daemon does: the request is dropped here too
            runtime.refused(about, payload, 0.0, topic)
            return
        if not isinstance(about, UnitInputTopic | ResultTopic):
            raise ProtocolError(f"{topic}: not a data-plane topic")
        actions = runtime.receive(about, payload, 0.0, topic)
        done.extend(carry_out(runtime, actions, bus.publish, 0.0, max_packet))

    for topic in sorted(runtime.input_topics()):
        bus.subscribe(topic, serve)


def run_request(
    nodes: Sequence[NodeRuntime], requester: NodeRuntime, x: torch.Tensor, max_packet: int
) -> tuple[list[torch.Tensor], MemoryBus]:
    """The outputs of one request for input ``x``, and the bus (its counts: every frame a broker
    would have carried, the requester's inputs and results included)."""
    bus = MemoryBus()
    done: list[Complete] = []
    for runtime in [*nodes, requester]:
        subscribe(bus, runtime, max_packet, done)
    request = "r1"
    done += carry_out(requester, requester.send(request, x, max_packet), bus.publish, 0.0, max_packet)
    bus.run(_MAX_MESSAGES)
    for complete in done:
        if complete.request == request:
            return complete.outputs, bus
    missing = "; ".join(requester.missing(request)) or "no rows"
    raise PlanError(f"request {request} did not complete: missing {missing}")
