"""What a node does with its assignment, as values in and values out: slices arrive, units whose
inputs are complete become :class:`Ready`, computing one yields the slices its forwarding table
names. The daemon adds the threads and the broker; tests drive this directly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from edgeflowd.assignment import Assignment
from edgeflowd.inbox import Inbox, needs_of
from edgeflowd.ops import allowed_resolver
from edgeflowd.protocol import Topics, encode_frames
from edgeflowd.rows import RowRange
from edgeflowd.slicing import take_rows
from edgeflowd.units import SINK, ExecutionUnit, Forward, run_unit

__all__ = ["NodeRuntime", "Ready", "frames_for"]


@dataclass(frozen=True)
class Ready:
    """A unit with every input of one request."""

    request: str
    unit: ExecutionUnit
    inputs: list[torch.Tensor]


class NodeRuntime:
    """The units of one assignment, their weights and their input buffers."""

    def __init__(self, assignment: Assignment, tensors: Mapping[str, torch.Tensor], max_bytes: int, ttl_s: float):
        self.assignment = assignment
        self.tensors = dict(tensors)
        self.units = {u.uid: u for u in assignment.units}
        self.inbox = Inbox({uid: needs_of(u) for uid, u in self.units.items()}, max_bytes, ttl_s)

    @property
    def plan(self) -> str:
        return self.assignment.plan

    def accept(
        self, request: str, consumer: str, producer: str, rows: RowRange, tensor: torch.Tensor, now: float, where: str
    ) -> Ready | None:
        inputs = self.inbox.add(request, consumer, producer, rows, tensor, now, where)
        return None if inputs is None else Ready(request, self.units[consumer], inputs)

    def compute(self, ready: Ready) -> list[tuple[Forward, torch.Tensor]]:
        """Run the unit; each forwarding entry with the rows it sends."""
        with torch.no_grad():
            out = run_unit(ready.unit, ready.inputs, self.tensors, allowed_resolver)
        return [(f, take_rows(out, f.rows, ready.unit.rows).contiguous()) for f in ready.unit.forwards]

    def is_local(self, consumer: str) -> bool:
        return consumer in self.units


def frames_for(
    topics: Topics, plan: str, request: str, unit: ExecutionUnit, forward: Forward, piece: torch.Tensor, max_packet: int
) -> list[tuple[str, bytes]]:
    """(topic, payload) of every frame that carries ``piece`` to ``forward.consumer``."""
    topic = topics.result(plan, request) if forward.consumer == SINK else topics.unit_input(plan, forward.consumer)
    return [
        (topic, frame) for frame in encode_frames(request, plan, unit.uid, unit.layer, forward.rows, piece, max_packet)
    ]
