"""One request's measured timeline, from the nodes' :class:`~edgeflowd.wire.messages.Spans`
answers, in the shape of the simulator's (:class:`~controller.planner.simulate.Timeline`), so
that the two draw side by side (pure: documents in, a timeline out).

Clocks: each node's times are in its own wall clock. The requester notes its own wall clock when
each answer arrives; the answer says the node's clock when it was sent. Their difference is the
node's offset plus the one-way delay through the broker (a fraction of a millisecond on a LAN,
the same machine's clock on loopback), which is the error of this correction.

Bars, as the simulator draws them: a unit's run (``compute``, from its start to its last frame
handed on); its sending (``up``, on its node: from its first frame published to its last); the
receiving end (``down``, on the receiver: from the last frame published to the receiving unit's
inputs being complete there, or for results to their arrival at the requester); and the
requester's input (``up``, from the request's send to the first units' inputs being complete)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.planner.simulate import Interval, Timeline
from edgeflowd.core.units import CLIENT
from edgeflowd.wire.messages import Spans, TimelineDoc
from edgeflowd.wire.topics import ResultTopic, Topics, UnitInputTopic

__all__ = ["measured_timeline", "predicted_timeline"]


def measured_timeline(
    nodes: Sequence[str],
    answers: Mapping[str, tuple[Spans, float]],
    topics: Topics,
    sent: float,
    latency_s: float,
) -> Timeline:
    """``answers``: node -> (its spans, the requester's wall clock when they came); ``sent``: the
    requester's wall clock when it sent the request, of which every bar is measured from."""
    index = {node: i for i, node in enumerate(nodes)}
    offset = {node: received - spans.clock for node, (spans, received) in answers.items()}
    ready: dict[str, tuple[int, float]] = {}  # unit -> (its device, inputs complete on the requester's clock)
    bars: list[Interval] = []
    for node, (spans, _) in answers.items():
        device, off = index[node], offset[node] - sent
        for unit in spans.units:
            bars.append(Interval(device, "compute", unit.start + off, unit.end + off, unit.unit))
            if unit.ready:
                ready[unit.unit] = (device, unit.ready + off)
    first_ready = min((t for _, t in ready.values()), default=0.0)
    bars.append(Interval(CLIENT, "up", 0.0, max(0.0, first_ready), "input"))
    for node, (spans, _) in answers.items():
        device, off = index[node], offset[node] - sent
        for send in spans.sends:
            first, last = send.first + off, send.last + off
            bars.append(Interval(device, "up", first, last, send.unit))
            about = topics.parse(send.to)
            if isinstance(about, ResultTopic):
                bars.append(Interval(CLIENT, "down", last, max(last, latency_s), send.unit))
            elif isinstance(about, UnitInputTopic) and about.unit in ready:
                receiver, arrived = ready[about.unit]
                bars.append(Interval(receiver, "down", last, max(last, arrived), send.unit))
    return Timeline(latency_s, sorted(bars, key=lambda b: (b.start, b.device)))


def predicted_timeline(doc: TimelineDoc, nodes: Sequence[str]) -> Timeline:
    """The controller's retained prediction, back in the simulator's terms."""
    index = {"client": CLIENT, **{node: i for i, node in enumerate(nodes)}}
    bars = [
        Interval(index[i.node], i.resource, i.start_ms / 1e3, i.end_ms / 1e3, i.label)
        for i in doc.intervals
        if i.node in index
    ]
    return Timeline(doc.latency_ms / 1e3, bars)
