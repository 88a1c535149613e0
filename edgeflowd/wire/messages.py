"""Control messages: one :class:`~edgeflowd.wire.schema.Document` type each (status, info,
telemetry, assignment report, plan summary, controller event); errors name the topic and the
path (``$.load_avg[0]``)."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

from edgeflowd.wire.schema import Document, decode, encode
from edgeflowd.wire.units import UnitDoc

__all__ = [
    "PROTOCOL_VERSIONS",
    "AssignmentReport",
    "Busy",
    "ControllerEvent",
    "Costs",
    "Info",
    "Interval",
    "Latency",
    "NodeCosts",
    "PlanInfo",
    "SendSpan",
    "Sender",
    "Spans",
    "Status",
    "Telemetry",
    "TimelineDoc",
    "TraceAsk",
    "UnitSpan",
    "decode_control",
    "encode_control",
]

PROTOCOL_VERSIONS = (2,)
"""Protocol versions this build speaks (the ``v2`` in topic names)."""


class Status(Document, frozen=True, tag="edgeflow.status/1"):
    """Retained ``node/<id>/status``; the broker publishes the offline one as the last will."""

    state: str  # online | offline
    instance: str  # random per process start: the same node id twice is detectable
    session: int = 0


Measure = Annotated[float, msgspec.Meta(ge=0.0, le=1e13)]
"""A figure a node measured of itself: finite and in range (rates, times, counts, a wall-clock
time); a value beyond (``1e999``, ``10**400``) is refused with the message, never planned on."""


class Info(Document, frozen=True, tag="edgeflow.info/1"):
    """Retained ``node/<id>/info``: who the node is and what it can do."""

    node: str
    version: str
    protocol: list[int] = msgspec.field(default_factory=lambda: list(PROTOCOL_VERSIONS))
    profile: dict[str, Any] = msgspec.field(default_factory=dict)
    benchmark: dict[str, Measure] = msgspec.field(default_factory=dict)
    plugins: dict[str, list[str]] = msgspec.field(default_factory=dict)  # module: the ops it defines here


class Telemetry(Document, frozen=True, tag="edgeflow.telemetry/1"):
    """Periodic ``node/<id>/telemetry``: load as psutil reports it, and the node's counters since
    it started (``malformed``: messages refused as invalid; ``dropped``: valid data it could not
    keep: queue or buffer full, expired, of a request given up on; ``stale``: frames of another
    plan generation; ``refused``: requests refused as busy by admission control).
    ``cpu_percent`` covers only the CPUs the daemon may run on (its affinity), so a node pinned to
    some cores of a shared machine reports their load."""

    cpu_percent: float
    memory_percent: float
    load_avg: list[float]
    temperature_c: float | None = None
    malformed: int = 0
    dropped: int = 0
    stale: int = 0
    errors: int = 0
    refused: int = 0
    units_run: int = 0
    frames_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    pending: int = 0
    generation: int = -1
    process_cpu_percent: float = 0.0  # the daemon's own share of the CPUs it may run on
    unit_s: dict[str, dict[str, list[float]]] = msgspec.field(default_factory=dict)
    """Units run since the previous telemetry, by plan: plan id -> unit id -> [runs, seconds],
    each run timed from its start to its last frame handed to the broker client (a node serving
    several models runs units of several plans; ``generation`` is the newest of them)."""
    interval_s: float = 0.0
    """The node's period between telemetry messages (0: not said). A node silent for several
    periods is frozen or cut off, even while its connection stays open (the controller's second
    signal beside the broker's keepalive)."""
    quiet_s: float = 0.0
    """How long the node may now say nothing beyond its period: it is about to measure itself."""
    gflops: float = 0.0
    """The node's measured speed (its convolution benchmark) times the CPU share others leave it:
    what it can give a plan now (0: not measured yet)."""
    request_ms: float = 0.0
    """The node's own work per request since the previous telemetry: its units' times summed, over
    the requests they served (0: none)."""

    @property
    def others_load(self) -> float:
        """The share of the node's CPUs that others use (0-1): its load, less its own."""
        return max(0.0, (self.cpu_percent - self.process_cpu_percent) / 100.0)


class AssignmentReport(Document, frozen=True, tag="edgeflow.assignment-report/1"):
    """``node/<id>/assignment/reported``: the generation a node runs, or why it cannot.
    ``generation`` is the newest of its work (:class:`~edgeflowd.wire.assignment.NodeWork`):
    ready, it runs every plan of that message; ``models`` says which generation of each model."""

    generation: int
    state: str  # ready | error
    error: str = ""
    units: list[str] = msgspec.field(default_factory=list)
    instance: str = ""  # the reporting process (retained reports outlive it)
    admits: int = 0  # requests the node holds at once (its max_requests; 0: not said)
    models: dict[str, int] = msgspec.field(default_factory=dict)  # model -> generation it serves


class Sender(msgspec.Struct, frozen=True):
    """Who sends which rows of an output: ``node``'s unit ``unit``, rows ``[rows[0], rows[1])``."""

    node: str
    unit: str
    rows: tuple[int, int]


class Output(msgspec.Struct, frozen=True):
    """One model output: its layer and full shape, and who sends its rows (a requester whose
    request timed out names the node whose rows never came)."""

    layer: str
    shape: tuple[int, ...]
    senders: list[Sender] = msgspec.field(default_factory=list)


class PlanInfo(Document, frozen=True, tag="edgeflow.plan/2"):
    """Retained ``controller/plan/<model>``: the deployed plan, as a requester needs it. ``sources`` are the
    requester's own units (the model inputs, with their forwarding tables); ``outputs`` lists
    each delivered layer and its shape; ``epilogue``: the units the requester then runs on them
    (the model's last layers that only move data), in order, and ``results`` the layers the model
    returns, in its order (empty: ``outputs`` are); ``nodes[d]`` runs plan device ``d``. (Version
    2: a requester of version 1 would return the delivered tensors as the model's.)"""

    generation: int
    plan: str
    model: str
    method: str
    input_shape: list[int]
    nodes: list[str]
    sources: list[UnitDoc]
    outputs: list[Output]
    predicted_ms: float = 0.0
    blobs: dict[str, Any] = msgspec.field(default_factory=dict)  # sha256 -> parts, to clear them later
    request_key: str = ""
    """The plan's request key (hex, :class:`~edgeflowd.wire.frames.FrameKeys`): requesters sign
    their inputs and check the results with it. Never the plan key, which only nodes hold."""
    admits: int = 0
    """Requests the plan holds at once: the fewest any of its nodes admits (0: not known). A
    requester sends no more than this at once, and refuses the rest as busy without sending them."""
    epilogue: list[UnitDoc] = msgspec.field(default_factory=list)
    results: list[str] = msgspec.field(default_factory=list)


class ControllerEvent(Document, frozen=True, tag="edgeflow.event/1"):
    """``controller/event``: what the controller noticed or did (a node joined or left, a re-plan
    and why, a node refused), for dashboards and logs."""

    event: str
    node: str = ""
    detail: str = ""
    generation: int = -1
    model: str = ""  # the model whose plan it is about ("": the cluster's, such as a node that left)


class TraceAsk(Document, frozen=True, tag="edgeflow.trace/1"):
    """``data/<plan>/trace``: a requester asks every node of the plan how ``request`` went there."""

    request: str


class UnitSpan(msgspec.Struct, frozen=True, array_like=True):
    """One unit's run, in seconds of the node's wall clock: its inputs complete (``ready``; 0: not
    seen), its start and its end (its last frame handed to the broker client)."""

    unit: str
    ready: Measure
    start: Measure
    end: Measure


class SendSpan(msgspec.Struct, frozen=True, array_like=True):
    """Frames a unit published for another node's unit (``to``: the topic), first and last."""

    unit: str
    to: str
    first: Measure
    last: Measure
    nbytes: int


class Spans(Document, frozen=True, tag="edgeflow.spans/1"):
    """``data/<plan>/spans``: how one request went on one node, answering a :class:`TraceAsk`.
    ``clock``: the node's wall clock when it sent this, from which the requester corrects the
    node's times onto its own."""

    node: str
    request: str
    clock: float
    units: list[UnitSpan] = msgspec.field(default_factory=list)
    sends: list[SendSpan] = msgspec.field(default_factory=list)


class Interval(msgspec.Struct, frozen=True, array_like=True):
    """One bar of a timeline: ``node`` (a node id, or ``client``) busy with ``resource`` (compute,
    up, down) from ``start_ms`` to ``end_ms`` after the request was sent."""

    node: str
    resource: str
    start_ms: float
    end_ms: float
    label: str


class TimelineDoc(Document, frozen=True, tag="edgeflow.timeline/1"):
    """Retained ``controller/timeline/<model>``: the simulator's prediction of one request through the
    deployed plan, beside which ``edgeflow infer --timeline`` draws what it measured."""

    generation: int
    latency_ms: float
    intervals: list[Interval]


class Latency(Document, frozen=True, tag="edgeflow.latency/1"):
    """``data/<plan>/latency``: what one request took, end to end, as its requester measured it."""

    generation: int
    request: str
    ms: float


class Busy(Document, frozen=True, tag="edgeflow.busy/1"):
    """``data/<plan>/busy``: ``node`` refused ``request`` whole (it holds as many requests as it
    admits, or had no room for its rows); ``reason`` says which."""

    request: str
    node: str
    reason: str


class NodeCosts(msgspec.Struct, frozen=True):
    """One node's cost model as the controller plans with it. ``source``: ``fitted`` (to the
    measured times of its units), ``benchmark`` (its start-up or latest re-measurement, with
    its load), ``declared`` (the cluster file's)."""

    source: str
    gflops: float
    kind_factors: dict[str, float]
    weights_gbps: float
    op_overhead_ms: float
    up_mbps: float
    down_mbps: float
    latency_ms: float
    load: float = 0.0
    share: float = 0.0  # of the live plan's rows
    units: int = 0  # units timed behind a fit
    runs: float = 0.0
    error_before: float = 0.0  # median |relative error| of unit times before the fit
    error_after: float = 0.0  # and after


class Costs(Document, frozen=True, tag="edgeflow.costs/1"):
    """Retained ``controller/costs/<model>``: what the controller believes and what it sees. Each node's
    cost model; the live plan's predicted latency beside the median the requesters measured; and
    the predicted latency of the best single-device plan, the one any split must beat."""

    generation: int
    predicted_ms: float
    nodes: dict[str, NodeCosts]
    measured_ms: float = 0.0  # median of the requesters' reports for this generation (0: none yet)
    requests: int = 0
    single_ms: float = 0.0
    single_node: str = ""
    message_mflop: float = 0.0  # fitted work of handling one message, in MFLOP at each node's rate
    alone: str = ""  # the node measured faster alone than the split, which it runs instead ("": none)
    judged: bool = False  # this generation's median has been judged against its prediction
    replanning: bool = False  # a re-plan of this model is due or rolling out


M = TypeVar("M", bound=Document)


def encode_control(message: Document) -> bytes:
    return encode(message)


def decode_control(payload: bytes, topic: str, cls: type[M]) -> M:
    """Parse a control message of type ``cls`` received on ``topic``."""
    return decode(payload, cls, topic)
