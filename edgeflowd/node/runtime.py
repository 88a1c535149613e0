"""The data path, sans I/O: a data-plane message and ``now`` in, actions out.

This is the only code that reads data-plane frames, reassembles chunked slices, buffers a unit's
input rows, runs units and decides, for each row range a forwarding table names, whether it stays
in this process or is published. Whoever carries the actions out adds the threads and the
transport: the daemon (a broker, a worker pool), the requester (a broker, its own thread), and
``edgeflow verify`` and the tests (:func:`carry_out` over the in-memory bus).

One runtime serves one plan. A node's runtime holds that node's units; a requester's holds the
plan's source units (which only emit) and the output sink, and buffers only the requests it
:meth:`NodeRuntime.open`\\ ed, so another client's results on the same topic cost it nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from edgeflowd.core.ops import Resolver, allowed_resolver, row_consts
from edgeflowd.core.packed import pack_convolutions
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import height_of, rows_shape, take_rows
from edgeflowd.core.units import CLIENT, SINK, ExecutionUnit, Forward, halo_first, run_unit
from edgeflowd.errors import ProtocolError
from edgeflowd.node.admission import Admission, Verdict
from edgeflowd.node.slices import BufferFullError, Need, SliceBuffer, needs_of
from edgeflowd.wire.frames import Frame, FrameAssembler, FrameKeys, decode_frame, encode_frames
from edgeflowd.wire.messages import Busy, decode_control, encode_control
from edgeflowd.wire.topics import BusyTopic, DataTopic, ResultTopic, Topics

__all__ = [
    "Action",
    "Complete",
    "Compute",
    "Deliver",
    "Dropped",
    "NodeRuntime",
    "Publish",
    "carry_out",
]


@dataclass(frozen=True)
class Compute:
    """Run ``unit`` on its complete ``inputs`` for ``request``; any thread may, it touches no buffer."""

    request: str
    unit: ExecutionUnit
    inputs: list[torch.Tensor]


@dataclass(frozen=True)
class Deliver:
    """Rows ``rows`` of layer ``producer`` for ``consumer``, a unit of the same runtime: handed back
    to :meth:`NodeRuntime.deliver` in-process, never through the broker."""

    request: str
    consumer: str
    producer: str
    rows: RowRange
    tensor: torch.Tensor


@dataclass(frozen=True)
class Publish:
    """One frame for the transport."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class Complete:
    """Every output row of ``request`` arrived (a requester's runtime only)."""

    request: str
    outputs: list[torch.Tensor]


@dataclass(frozen=True)
class Dropped:
    """A valid frame nobody here wants: ``why`` is ``stale`` (another plan), ``foreign`` (a
    request this requester did not open, or gave up on), ``dropped`` (a request this node refused,
    gave up on or finished) or ``refused`` (the frame of a request this node refuses now)."""

    why: str
    topic: str


Action = Compute | Deliver | Publish | Complete | Dropped


class NodeRuntime:
    """The units of one plan on one node (or a requester's sources and sink), their weights, the
    partial frames and the per-request input buffers. ``outputs`` (a requester's) are what the
    sink reads; ``resolve`` maps op names to functions (the allow-list on a board; ``verify`` may
    pass the traced model's own, for ops only that process can run). With ``timer``, a
    convolution's weights are packed only where that runs faster here (:mod:`edgeflowd.core.packed`)."""

    def __init__(
        self,
        plan: str,
        topics: Topics,
        units: Sequence[ExecutionUnit],
        tensors: Mapping[str, torch.Tensor],
        max_bytes: int,
        ttl_s: float,
        keys: FrameKeys,
        outputs: Sequence[Need] = (),
        resolve: Resolver = allowed_resolver,
        timer: Callable[[], float] | None = None,
        admit: int = 0,
        node: str = "",
    ) -> None:
        self.plan = plan
        self.node = node
        self.keys = keys
        self.topics = topics
        self.units = {u.uid: u for u in units}
        for unit in units:
            _check_row_consts(unit, tensors)
        # Convolution weights reordered once for this plan, not on every call (core.packed).
        convs = [(u.ops[0], _conv_input(u)) for u in units if u.ops and u.inputs]
        self.tensors = {**tensors, **pack_convolutions(convs, tensors, timer)}
        self.resolve = resolve
        needs = {uid: needs_of(u) for uid, u in self.units.items() if u.device != CLIENT}
        if outputs:
            needs[SINK] = list(outputs)
        self.slices = SliceBuffer(needs, max_bytes, ttl_s)
        self.frames = FrameAssembler(max_bytes=max_bytes, ttl_s=ttl_s)
        self._pieces = {uid: halo_first(u, self.is_local) for uid, u in self.units.items()}  # once per plan
        self._open: set[str] | None = set() if outputs else None
        sources = [u for u in units if u.device == CLIENT]
        if outputs and len(sources) != 1:
            raise ProtocolError(f"plan {plan} has {len(sources)} inputs; requests carry exactly one")
        self.source = sources[0] if outputs else None
        # A node's runtime admits at most ``admit`` requests at once (0: every request: verify, tests).
        own = len(self.units) - len(sources)
        self.admission = Admission(admit, own, ttl_s) if admit and not outputs else None

    def input_topics(self) -> set[str]:
        """What to subscribe to: every topic this runtime receives on (with admission control,
        the plan's refusals too)."""
        topics = {
            self.topics.results(self.plan) if uid == SINK else self.topics.unit_input(self.plan, uid)
            for uid in self.slices.needs
        }
        return topics | {self.topics.busy(self.plan)} if self.admission else topics

    # -- the engine's side: one thread owns the buffers ------------------------------------------
    def receive(self, topic: DataTopic, payload: bytes, now: float, where: str) -> list[Action]:
        """A frame that arrived on ``topic``; raises :class:`ProtocolError` (names ``where`` and
        the field) on anything malformed, and :class:`BufferFullError` when a new request's rows
        would exceed the budget."""
        if topic.plan != self.plan:
            return [Dropped("stale", where)]
        consumer = SINK if isinstance(topic, ResultTopic) else topic.unit
        if consumer not in self.slices.needs:
            raise ProtocolError(f"{where}: no unit {consumer!r} here")
        results = isinstance(topic, ResultTopic)
        frame = decode_frame(payload, where, (lambda _: self.keys.request) if results else self.keys.to_node)
        if frame.plan != topic.plan:
            raise ProtocolError(f"{where}: frame field 'plan' is {frame.plan!r}, the topic says {topic.plan!r}")
        if isinstance(topic, ResultTopic) and frame.request != topic.request:
            raise ProtocolError(
                f"{where}: frame field 'request' is {frame.request!r}, the topic says {topic.request!r}"
            )
        if self._open is not None and frame.request not in self._open:
            return [Dropped("foreign", where)]
        if self.admission is not None:
            verdict = self.admission.admit(frame.request, now)
            if verdict is Verdict.GONE:
                return [Dropped("dropped", where)]
            if verdict is Verdict.REFUSED:
                return self._refusal(frame.request, f"holds {self.admission.limit} requests, as many as it admits")
            if verdict is Verdict.NEW:
                return self._first(frame, consumer, now, where)
        return self._take(frame, consumer, now, where)

    def _take(self, frame: Frame, consumer: str, now: float, where: str) -> list[Action]:
        try:
            tensor = self.frames.add(frame, now, where)
            if tensor is None:
                return []
            return self.deliver(Deliver(frame.request, consumer, frame.layer, frame.rows, tensor), now, where)
        except BufferFullError as exc:
            if self.admission is None:
                raise
            return self.give_up(frame.request, f"had no room for its rows ({exc})", now)

    def _first(self, frame: Frame, consumer: str, now: float, where: str) -> list[Action]:
        """The frame that admitted its request: if it is refused as malformed, the request holds no
        place here (eight bad frames would otherwise lock a node for ``request_ttl_s``)."""
        assert self.admission is not None
        try:
            return self._take(frame, consumer, now, where)
        except ProtocolError:
            self.admission.release(frame.request)
            raise

    def give_up(self, request: str, reason: str, now: float) -> list[Action]:
        """Drop all of ``request`` here and publish why: every node of the plan drops it too, and
        its requester fails it (admission control; without it, the request just times out)."""
        if self.admission is None:
            return []
        self._forget(request, now)
        return self._refusal(request, reason)

    def _forget(self, request: str, now: float) -> None:
        assert self.admission is not None
        self.admission.drop(request, now)
        self.slices.forget(request)
        self.frames.forget(request)

    def _refusal(self, request: str, reason: str) -> list[Action]:
        busy = Busy(request, self.node, f"node {self.node} {reason}")
        return [
            Publish(self.topics.busy(self.plan), encode_control(busy)),
            Dropped("refused", self.topics.busy(self.plan)),
        ]

    def refused(self, topic: BusyTopic, payload: bytes, now: float, where: str) -> None:
        """A refusal published on the plan's busy topic (by any node, this one too): drop the request."""
        if topic.plan != self.plan or self.admission is None:
            return
        self._forget(decode_control(payload, where, Busy).request, now)

    def deliver(self, slice_: Deliver, now: float, where: str = "local") -> list[Action]:
        """Buffer one whole slice; the unit (or the sink) it completes, if any. A worker's slice of
        a request given up on while its unit ran is dropped, not buffered again."""
        if self.admission is not None and not self.admission.holds(slice_.request):
            return [Dropped("dropped", where)]
        inputs = self.slices.add(
            slice_.request, slice_.consumer, slice_.producer, slice_.rows, slice_.tensor, now, where
        )
        if inputs is None:
            return []
        if slice_.consumer == SINK:
            self.close(slice_.request)
            return [Complete(slice_.request, inputs)]
        if self.admission is not None:
            self.admission.ran(slice_.request, now)
        return [Compute(slice_.request, self.units[slice_.consumer], inputs)]

    def open(self, request: str) -> None:
        """A requester's runtime buffers results only of requests it opened."""
        if self._open is not None:
            self._open.add(request)

    def close(self, request: str) -> None:
        """Forget ``request``: later frames of it are dropped as foreign, rows held are freed."""
        if self._open is not None:
            self._open.discard(request)
        self.slices.forget(request)
        self.frames.forget(request)

    def expire(self, now: float) -> tuple[int, list[tuple[str, str]]]:
        """Drop what is older than the TTL: (partial slices dropped, (request, unit) buffers dropped).
        A request with an expired buffer cannot complete, nor one admitted longer ago: its place
        is freed."""
        partial, buffers = self.frames.expire(now), self.slices.expire(now)
        if self.admission is not None:
            for request in {request for request, _ in buffers} | set(self.admission.expire(now)):
                self._forget(request, now)  # nobody waits for it any more: no refusal
        return partial, buffers

    def missing(self, request: str) -> list[str]:
        """The output rows ``request`` still lacks (a requester's runtime), for timeout messages."""
        return self.slices.missing(request, SINK)

    def arrived(self, request: str) -> dict[str, list[RowRange]]:
        """The rows of each output layer that arrived for ``request`` (a requester's runtime)."""
        return self.slices.arrived(request, SINK)

    # -- any thread: reads only what never changes -----------------------------------------------
    def compute(self, work: Compute, max_packet: int) -> Iterator[Action]:
        """Run the unit and route its rows (lazily: see :meth:`emit`). A unit the plan marks halo
        first computes and publishes the rows other nodes read first (:func:`halo_first`)."""
        pieces, edges = self._pieces[work.unit.uid]
        if edges:
            return self._halo_first(work, pieces, edges, max_packet)
        with torch.no_grad():
            out = run_unit(work.unit, work.inputs, self.tensors, self.resolve)
        return self.emit(work.request, work.unit, out, max_packet)

    def is_local(self, consumer: str) -> bool:
        """Whether ``consumer`` (a unit id or :data:`SINK`) is served by this runtime."""
        return consumer in self.slices.needs

    def _halo_first(self, work: Compute, pieces: Sequence[RowRange], edges: int, max_packet: int) -> Iterator[Action]:
        unit, done = work.unit, []
        remote = [f for f in unit.forwards if not self.is_local(f.consumer)]
        for i, rows in enumerate(pieces):
            with torch.no_grad():
                done.append((rows, run_unit(unit, work.inputs, self.tensors, self.resolve, rows)))
            if i < edges:  # every remote forward lies inside an edge piece: it leaves with the first
                ready = [f for f in remote if rows.contains(f.rows)]
                remote = [f for f in remote if f not in ready]
                yield from self._publish(
                    work.request, unit, [(f, _rows_of(done[-1:], f.rows)) for f in ready], max_packet
                )
        if remote:
            raise ProtocolError(f"unit {unit.uid}: rows {remote[0].rows} for {remote[0].consumer} in no edge piece")
        ordered = sorted(done, key=lambda piece: piece[0].start)
        for forward in unit.forwards:
            if self.is_local(forward.consumer):
                yield Deliver(work.request, forward.consumer, unit.layer, forward.rows, _rows_of(ordered, forward.rows))

    def emit(self, request: str, unit: ExecutionUnit, out: torch.Tensor, max_packet: int) -> Iterator[Action]:
        """What ``unit``'s forwarding table makes of its output ``out``: a :class:`Deliver` for each
        consumer in this runtime, then frames no larger than ``max_packet`` for every other one.

        Local slices come first and frames are made one forward at a time, as they are consumed:
        the engine buffers the next local unit's inputs while this thread still encodes and
        publishes, and the first remote slice leaves before the last one is encoded."""
        pieces = [(f, take_rows(out, f.rows, unit.rows).contiguous()) for f in unit.forwards]
        for forward, piece in pieces:
            if self.is_local(forward.consumer):
                yield Deliver(request, forward.consumer, unit.layer, forward.rows, piece)
        yield from self._publish(request, unit, [p for p in pieces if not self.is_local(p[0].consumer)], max_packet)

    def _publish(
        self, request: str, unit: ExecutionUnit, pieces: Sequence[tuple[Forward, torch.Tensor]], max_packet: int
    ) -> Iterator[Action]:
        for forward, piece in pieces:
            if forward.consumer == SINK:
                topic = self.topics.result(self.plan, request)
            else:
                topic = self.topics.unit_input(self.plan, forward.consumer)
            # The request key for what requesters send and read, the plan key between nodes.
            key = self.keys.request if forward.consumer == SINK or unit.device == CLIENT else self.keys.plan
            if key is None:
                raise ProtocolError(f"unit {unit.uid}: a requester holds no key for frames between nodes")
            for frame in encode_frames(request, self.plan, unit.uid, unit.layer, forward.rows, piece, max_packet, key):
                yield Publish(topic, frame)

    def send(self, request: str, x: torch.Tensor, max_packet: int) -> Iterator[Action]:
        """A requester's input ``x`` for ``request``, sliced by the source unit's forwarding table."""
        if self.source is None:
            raise ProtocolError(f"plan {self.plan}: only a requester's runtime (with the source unit) sends")
        self.open(request)
        return self.emit(request, self.source, x, max_packet)


def _check_row_consts(unit: ExecutionUnit, tensors: Mapping[str, torch.Tensor]) -> None:
    """A weight read by rows has as many along its dimension as the unit's layer has rows: a
    wrong dimension would otherwise slice another axis of a square map and still broadcast."""
    height = height_of(unit.out_shape)
    for call in unit.ops:
        for const in row_consts(call):
            tensor = tensors.get(const.name)
            if tensor is not None and (tensor.dim() <= const.dim or tensor.shape[const.dim] != height):
                raise ProtocolError(
                    f"unit {unit.uid}: weight {const.name} {tuple(tensor.shape)} is read by rows along dim "
                    f"{const.dim}, which needs {height} there (the layer's rows)"
                )


def _conv_input(unit: ExecutionUnit) -> tuple[int, ...]:
    """The shape a unit's first op reads: its first input with the rows its windows reach."""
    first = unit.inputs[0]
    return rows_shape(first.shape, first.needed) if len(first.shape) == 4 else first.shape


def _rows_of(pieces: Sequence[tuple[RowRange, torch.Tensor]], rows: RowRange) -> torch.Tensor:
    """Rows ``rows`` out of computed pieces (row order, together holding them), contiguous: one
    piece's rows are a view of it, rows across pieces are joined."""
    if rows.empty:
        held, tensor = pieces[0]
        return take_rows(tensor, RowRange(held.start, held.start), held).contiguous()
    parts = [take_rows(t, rows.intersect(held), held) for held, t in pieces if not rows.intersect(held).empty]
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=2)


def carry_out(
    runtime: NodeRuntime,
    actions: Iterable[Action],
    publish: Callable[[str, bytes], None],
    now: float,
    max_packet: int,
) -> list[Complete]:
    """Carry ``actions`` out on the caller's thread, as the daemon does with its threads: compute
    every unit they make ready, hand local slices back, publish the rest; returns what completed."""
    done: list[Complete] = []
    work: deque[Action] = deque(actions)
    while work:
        action = work.popleft()
        if isinstance(action, Compute):
            work.extend(runtime.compute(action, max_packet))
        elif isinstance(action, Deliver):
            work.extend(runtime.deliver(action, now))
        elif isinstance(action, Publish):
            publish(action.topic, action.payload)
        elif isinstance(action, Complete):
            done.append(action)
    return done
