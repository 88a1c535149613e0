"""The requester: sends inputs to a deployed plan and collects correlated results.

It plays the plan's client units through a node runtime of its own, the one the daemons use: that
slices each input by the source unit's forwarding table into frames for the first units' topics,
and reassembles the output rows that arrive on ``data/<plan>/result/<request>``. Requests carry
ids of the form ``<client>-<n>``; results of other clients or of requests already given up on are
ignored. Every request either completes or fails with an error saying which output rows never
came (or that a new plan replaced it). Each completed request's latency is reported on
``data/<plan>/latency``, where the controller sets it beside its prediction.
"""

from __future__ import annotations

import logging
import queue
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from controller.control.deploy import current_plan
from controller.control.torch_threads import one_torch_thread
from edgeflowd.core.rows import RowRange
from edgeflowd.core.units import check_epilogue, run_epilogue
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue, listen
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.node.runtime import Complete, NodeRuntime, Publish
from edgeflowd.node.slices import BufferFullError, output_needs
from edgeflowd.node.spans import KEEP
from edgeflowd.wire.frames import FrameKeys, key_of_hex, read_header
from edgeflowd.wire.messages import (
    Busy,
    Latency,
    PlanInfo,
    decode_control,
    encode_control,
)
from edgeflowd.wire.topics import ResultTopic, Topics, UnitInputTopic
from edgeflowd.wire.units import unit_of

__all__ = ["InferenceClient", "Measurement", "Result", "Traffic"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    request: str
    outputs: list[torch.Tensor] | None
    latency_s: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outputs is not None


@dataclass
class Traffic:
    """Data-plane messages and bytes through the broker for this client's requests (a tap on
    ``data/<plan>/#``: inputs, every forwarded slice between nodes, results)."""

    by_request: dict[str, list[int]] = field(default_factory=dict)  # request -> [messages, bytes]

    def per_request(self) -> tuple[float, float]:
        """Mean (messages, MiB) per request."""
        counts = list(self.by_request.values())
        n = max(1, len(counts))
        return sum(c[0] for c in counts) / n, sum(c[1] for c in counts) / n / 2**20


@dataclass(frozen=True)
class Measurement:
    """A timed batch of requests (after warm-up), with the broker traffic it took when tapped."""

    results: list[Result]
    wall_s: float
    messages: float  # per request
    mib: float  # per request

    @property
    def latencies_ms(self) -> list[float]:
        return sorted(r.latency_s * 1e3 for r in self.results if r.ok)

    @property
    def succeeded(self) -> int:
        return len(self.latencies_ms)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p90_ms(self) -> float:
        ok = self.latencies_ms
        return ok[int(0.9 * (len(ok) - 1))]

    @property
    def throughput_rps(self) -> float:
        return self.succeeded / self.wall_s


@dataclass
class _Flight:
    """The requests of one :meth:`InferenceClient.run`: those in flight (request -> when it was
    sent) and those ended, in the order they were started."""

    on_result: Callable[[Result], None]
    started: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    done: dict[str, Result] = field(default_factory=dict)

    def start(self, request: str, now: float) -> None:
        self.started[request] = now
        self.order.append(request)

    def end(self, request: str, outputs: list[torch.Tensor] | None, error: str, now: float) -> Result:
        result = self.done[request] = Result(request, outputs, now - self.started.pop(request), error)
        self.on_result(result)
        return result

    def results(self) -> list[Result]:
        return [self.done[r] for r in self.order]


class InferenceClient:
    def __init__(
        self,
        conn: Connection,
        topics: Topics,
        info: PlanInfo,
        messages: MessageQueue,
        tap: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``conn`` must feed ``messages`` with its messages; this subscribes what it needs."""
        self.conn = conn
        self.topics = topics
        self.messages = messages
        self.clock = clock
        self.tag = uuid.uuid4().hex[:16]  # unguessable: another requester must not race its inputs
        self._seq = 0
        self.tap = tap
        self.traffic: Traffic | None = Traffic() if tap else None
        self._patterns: list[str] = []
        self._sent_at: dict[str, float] = {}  # request -> wall clock when sent, for its timeline
        self._adopt(info)

    def _adopt(self, info: PlanInfo) -> None:
        """Send new requests to ``info``'s plan (at start, and when the controller re-plans)."""
        sources = [unit_of(u, f"plan {info.plan}: $.sources[{i}]") for i, u in enumerate(info.sources)]
        try:
            request_key = key_of_hex(info.request_key, "request_key")
        except ValueError as exc:
            raise ProtocolError(f"plan {info.plan}'s summary: {exc} (deploy it again)") from exc
        if len(sources) != 1:
            raise ProtocolError(f"plan {info.plan} has {len(sources)} inputs; requests carry exactly one")
        outputs = output_needs([(o.layer, o.shape) for o in info.outputs])
        # The model's last layers that only move data run here, on what the plan delivers.
        epilogue = [unit_of(u, f"plan {info.plan}: $.epilogue[{i}]") for i, u in enumerate(info.epilogue)]
        delivered = {o.layer: o.shape for o in info.outputs}
        check_epilogue(epilogue, info.results, delivered, f"plan {info.plan}'s summary: $")
        # No TTL: a request is given up on by its own timeout (run), which closes it.
        # No plan key: a requester sends inputs and reads results, never frames between nodes.
        keys = FrameKeys(None, request_key, sources[0].uid)
        runtime = NodeRuntime(info.plan, self.topics, sources, {}, 1 << 31, float("inf"), keys, outputs=outputs)
        self.info, self.runtime, self.epilogue = info, runtime, epilogue
        # The tap's filter holds the refusals too; a plain client adds them to its results.
        patterns = [self.topics.data_filter(info.plan)] if self.tap else [self.topics.results(info.plan)]
        patterns += [] if self.tap else [self.topics.busy(info.plan)]
        for old in self._patterns:
            self.conn.unsubscribe(old)
        self._patterns = patterns
        if not self.conn.subscribe_wait(patterns, qos=0):
            raise EdgeFlowError(f"{self.conn.broker} did not acknowledge the subscription to {', '.join(patterns)}")

    @classmethod
    def connect(
        cls, broker: BrokerSettings, cluster: str, model: str, tap: bool = False, plan_wait_s: float = 5.0
    ) -> InferenceClient:
        """A client of the plan deployed under ``cluster`` on ``broker``, which must run ``model``.
        Close it with :meth:`close`."""
        topics = Topics(cluster)
        conn, messages = listen(broker, "edgeflow-infer", [topics.controller("plan", model)])
        try:
            info = current_plan(topics, model, messages, wait_s=plan_wait_s)
            if info is None:
                raise EdgeFlowError(
                    f"no plan of {model} is deployed under {topics.root}/ on {conn.broker} (run `edgeflow deploy "
                    f"--model {model}`; `edgeflow status` lists the models it serves)"
                )
            return cls(conn, topics, info, messages, tap=tap)
        except BaseException:
            conn.stop()
            raise

    def close(self) -> None:
        self.conn.stop()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.info.input_shape)

    def _next_request(self) -> str:
        self._seq += 1
        return f"{self.tag}-{self._seq}"

    def send(self, x: torch.Tensor) -> str:
        """Publish one input; returns its request id."""
        if tuple(x.shape) != self.input_shape:
            raise EdgeFlowError(f"input has shape {tuple(x.shape)}; plan {self.info.plan} takes {self.input_shape}")
        request = self._next_request()
        self._sent_at[request] = time.time()
        while len(self._sent_at) > KEEP:
            del self._sent_at[next(iter(self._sent_at))]
        for action in self.runtime.send(request, x, self.conn.max_packet):
            if isinstance(action, Publish):
                self.conn.publish(action.topic, action.payload)
        return request

    def run(
        self,
        inputs: Iterator[torch.Tensor],
        concurrency: int,
        timeout_s: float,
        on_result: Callable[[Result], None] = lambda r: None,
    ) -> list[Result]:
        """Keep ``concurrency`` requests in flight until ``inputs`` is exhausted; results in
        request order. A request with no complete result after ``timeout_s`` fails. One beyond
        what the plan admits at once (:attr:`PlanInfo.admits`) fails as busy without being sent,
        and one that a node refused fails as busy as soon as the refusal comes. torch runs on one
        thread meanwhile (:func:`~controller.control.torch_threads.one_torch_thread`), ``inputs``
        and ``on_result`` included."""
        with one_torch_thread():
            return self._run(inputs, concurrency, timeout_s, _Flight(on_result))

    def _run(self, inputs: Iterator[torch.Tensor], concurrency: int, timeout_s: float, flight: _Flight) -> list[Result]:
        more = True
        while more or flight.started:
            while more and len(flight.started) < concurrency:
                x = next(inputs, None)
                if x is None:
                    more = False
                    break
                admits = self.info.admits
                if admits and len(flight.started) >= admits:
                    said = f"busy: plan {self.info.plan} admits {admits} requests at once, and {admits} are in flight"
                    request = self._next_request()
                    flight.start(request, self.clock())
                    flight.end(request, None, said, self.clock())
                else:
                    t0 = self.clock()
                    flight.start(self.send(x), t0)
                for _ in range(self.messages.qsize()):  # what came while sending is timed now, not after
                    self._take(flight, wait_s=0.0)
            if more or flight.started:
                self._take(flight, wait_s=0.05)
            now = self.clock()
            for request, t0 in list(flight.started.items()):
                if now - t0 > timeout_s:
                    missing = self._stalled(request)
                    self.runtime.close(request)
                    flight.end(
                        request, None, f"request {request} timed out after {timeout_s:g} s; missing {missing}", now
                    )
        return flight.results()

    def _stalled(self, request: str) -> str:
        """What a request that timed out lacks, by the node that was to send it."""
        arrived = self.runtime.arrived(request)
        lacking = []
        for output in self.info.outputs:
            for sender in output.senders:
                rows = RowRange(*sender.rows)
                if not any(got.contains(rows) for got in arrived.get(output.layer, [])):
                    lacking.append(f"{output.layer} rows {rows} from {sender.node} ({sender.unit})")
        return "; ".join(lacking) or "; ".join(self.runtime.missing(request)) or "no rows"

    def _take(self, flight: _Flight, wait_s: float) -> bool:
        """Handle one message (waiting at most ``wait_s`` for it); False when none came."""
        try:
            topic, payload = self.messages.get(timeout=wait_s) if wait_s else self.messages.get_nowait()
        except queue.Empty:
            return False
        if topic == self.topics.controller("plan", self.info.model):
            replaced = self._replaced(payload)
            for request in list(flight.started) if replaced else []:
                flight.end(request, None, f"request {request}: {replaced}", self.clock())
        elif topic == self.topics.busy(self.info.plan):
            refused = self._refused(payload, flight.started)
            if refused:
                self.runtime.close(refused[0])
                flight.end(refused[0], None, f"busy: {refused[1]}", self.clock())
        else:
            finished = self._on_message(topic, payload, flight.started)
            if finished is not None:
                request, delivered = finished
                try:
                    outputs, error = self._results(delivered), ""
                except ProtocolError as exc:  # the plan's epilogue does not fit what it delivered
                    outputs, error = None, f"request {request}: {exc}"
                self._report(flight.end(request, outputs, error, self.clock()))
        return True

    def measure(
        self,
        inputs: list[torch.Tensor],
        concurrency: int,
        warmup: int = 1,
        timeout_s: float = 60.0,
        on_result: Callable[[Result], None] = lambda r: None,
    ) -> Measurement:
        """Run ``warmup`` requests untimed (first-touch allocations on every node), then time
        ``inputs``; traffic counts cover the timed requests only."""
        self.run(iter(inputs[:warmup]), 1, timeout_s)
        if self.traffic is not None:
            self.traffic.by_request.clear()
        start = self.clock()
        results = self.run(iter(inputs), concurrency, timeout_s, on_result)
        wall = self.clock() - start
        messages, mib = self.traffic.per_request() if self.traffic is not None else (0.0, 0.0)
        return Measurement(results, wall, messages, mib)

    def sent_at(self, request: str) -> float | None:
        """The wall clock when ``request`` was sent (for the last requests only)."""
        return self._sent_at.get(request)

    def _report(self, result: Result) -> None:
        report = Latency(self.info.generation, result.request, round(result.latency_s * 1e3, 3))
        self.conn.publish(self.topics.latency(self.info.plan), encode_control(report))

    def _replaced(self, payload: bytes) -> str:
        """Adopt a new plan of the same model; returns why in-flight requests fail (or "")."""
        try:
            new = (
                decode_control(payload, self.topics.controller("plan", self.info.model), PlanInfo) if payload else None
            )
        except ProtocolError as exc:
            log.warning("ignored: %s", exc)
            return ""
        if new is None or new.generation == self.info.generation or new.model != self.info.model:
            return ""
        old = self.info.plan
        try:
            self._adopt(new)
        except ProtocolError as exc:  # the requests in flight fail all the same: the nodes run the new plan
            log.warning("cannot adopt plan %s: %s", new.plan, exc)
            return f"plan {old} was replaced by {new.plan}, which this requester cannot use: {exc}"
        return f"plan {old} was replaced by {new.plan} while the request was in flight"

    def _refused(self, payload: bytes, started: dict[str, float]) -> tuple[str, str] | None:
        """(request, why) when a node refused one of the requests in flight (admission control)."""
        try:
            busy = decode_control(payload, self.topics.busy(self.info.plan), Busy)
        except ProtocolError as exc:
            log.warning("ignored: %s", exc)
            return None
        return (busy.request, busy.reason) if busy.request in started else None

    def _on_message(
        self, topic: str, payload: bytes, started: dict[str, float]
    ) -> tuple[str, list[torch.Tensor]] | None:
        try:
            about = self.topics.parse(topic)
            if not isinstance(about, UnitInputTopic | ResultTopic):
                # The tap hears this client's own latency reports; and in the demo on the embedded
                # broker (amqtt) a tap was handed retained node topics too (not yet understood).
                return None
            if self.traffic is not None:
                self._count(topic, payload, started)
            if not isinstance(about, ResultTopic):
                return None  # the tap's view of frames between nodes
            actions = self.runtime.receive(about, payload, self.clock(), topic)
        except (ProtocolError, BufferFullError) as exc:
            log.warning("ignored: %s", exc)
            return None
        done = [a for a in actions if isinstance(a, Complete)]
        return (done[0].request, done[0].outputs) if done else None

    def _results(self, delivered: list[torch.Tensor]) -> list[torch.Tensor]:
        """The model's outputs from the tensors the plan delivered (its epilogue run here)."""
        if not self.info.results:
            return delivered
        by_layer = dict(zip((o.layer for o in self.info.outputs), delivered, strict=True))
        return run_epilogue(self.epilogue, self.info.results, by_layer)

    def _count(self, topic: str, payload: bytes, started: dict[str, float]) -> None:
        """Tap: count every data-plane message of this client's requests."""
        request = read_header(payload, f"{topic} (tap)").request  # counted, never taken: no key needed
        if request in started and self.traffic is not None:
            counts = self.traffic.by_request.setdefault(request, [0, 0])
            counts[0] += 1
            counts[1] += len(payload)
