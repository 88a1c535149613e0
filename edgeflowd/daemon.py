"""The device daemon: one MQTT session, one engine thread that owns all state, a worker pool.

Threads and what they own:
- paho's network thread calls :meth:`Daemon._enqueue` only (bounded queue; overflow is counted);
- the engine thread (the caller of :meth:`Daemon.run`) owns the assignment, the weight fetch,
  the frame assembler and the request buffers, and does the periodic work (expiry, telemetry,
  watchdog);
- workers compute units and publish remote slices; slices for units on this node go back to the
  engine as events, never through the broker.
A new assignment is switched in atomically by the engine; frames of any other plan are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from edgeflowd import __version__
from edgeflowd.assignment import Assignment
from edgeflowd.benchmark import run_benchmark
from edgeflowd.config import DaemonConfig
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.inbox import InboxFullError
from edgeflowd.messages import AssignmentReport, Info, Status, encode_control
from edgeflowd.mqtt import Connection
from edgeflowd.notify import Notifier
from edgeflowd.profiles import DeviceProfile
from edgeflowd.protocol import FrameAssembler, Topics, decode_frame
from edgeflowd.rows import RowRange
from edgeflowd.runtime import NodeRuntime, Ready, frames_for
from edgeflowd.telemetry import sample_telemetry
from edgeflowd.weights import WeightFetch, WeightStore

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

_TICK_S = 0.25  # engine wake-up period for expiry, telemetry and the watchdog


class _Counts:
    """Counters that the engine and the workers both bump (one lock guards the Counter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        profile: DeviceProfile | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.profile = profile
        self.node = config.node_id
        self.topics = Topics(config.cluster)
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.instance = uuid.uuid4().hex[:12]
        self.counts = _Counts()
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=config.queue_messages)
        self.store = WeightStore(config.cache_dir)
        self.runtime: NodeRuntime | None = None
        self.fetch: tuple[Assignment, WeightFetch] | None = None
        self.assembler = self._new_assembler()
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix=f"edgeflowd[{self.node}].worker")
        self._sessions = 0
        self.benchmark: dict[str, float] = {}
        self._stop = threading.Event()
        offline = encode_control(Status(state="offline", instance=self.instance))
        self.conn = Connection(
            config.broker_settings(),
            f"edgeflowd-{self.node}-{self.instance}",
            self._enqueue,
            will=(self.topics.node(self.node, "status"), offline),
            on_connect=self._on_connect,
            packet_bytes=config.packet_bytes,
        )

    def _new_assembler(self) -> FrameAssembler:
        return FrameAssembler(max_bytes=int(self.config.buffer_mb * 2**20), ttl_s=self.config.request_ttl_s)

    # -- network thread ------------------------------------------------------------------------
    def _enqueue(self, topic: str, payload: bytes) -> None:
        try:
            self.events.put_nowait(("message", topic, payload))
        except queue.Full:
            self.counts.add("dropped")  # never block paho's thread; the request will time out

    def _enqueue_event(self, event: tuple[Any, ...]) -> None:
        try:
            self.events.put_nowait(event)
        except queue.Full:  # the engine is flooded; it will learn of the connection from its next message
            self.counts.add("dropped")

    def _on_connect(self) -> None:
        self._sessions += 1
        status = Status(state="online", instance=self.instance, session=self._sessions)
        self.conn.publish(self.topics.node(self.node, "status"), encode_control(status), qos=1, retain=True)
        self.conn.publish(self.topics.node(self.node, "info"), encode_control(self._info()), qos=1, retain=True)
        self._enqueue_event(("connected",))

    def _info(self) -> Info:
        profile = dataclasses.asdict(self.profile) if self.profile else {}
        return Info(node=self.node, version=__version__, profile=profile, benchmark=self.benchmark)

    # -- engine --------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until :meth:`stop`; returns the exit status."""
        threads = self.config.threads or (self.profile.threads if self.profile else 1)
        torch.set_num_threads(threads)
        self.benchmark = run_benchmark()
        log.info("node=%s benchmark: %s", self.node, self.benchmark)
        log.info(
            "node=%s instance=%s cluster=%s torch threads=%d", self.node, self.instance, self.topics.cluster, threads
        )
        self.conn.subscribe(self.topics.node(self.node, "assignment"), qos=1)
        self.conn.begin()
        self.notifier.status(f"connecting to {self.conn.broker}")
        last_telemetry = last_watchdog = 0.0
        while not self._stop.is_set():
            try:
                event = self.events.get(timeout=_TICK_S)
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self._handle(event)
                now = self.clock()
                self._expire(now)
                if self.conn.connected.is_set() and now - last_telemetry >= self.config.telemetry_interval_s:
                    last_telemetry = now
                    self._publish_telemetry()
            except ProtocolError as exc:
                self.counts.add("malformed")
                log.warning("node=%s refused: %s", self.node, exc)
            except Exception:  # the daemon outlives any one bad message or bug in one path
                self.counts.add("errors")
                log.exception("node=%s: error while handling %s", self.node, event[0] if event else "tick")
            watchdog = self.notifier.watchdog_s
            if watchdog and self.clock() - last_watchdog >= watchdog / 2:
                last_watchdog = self.clock()
                self.notifier.watchdog()
        self._shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "message":
            self._on_message(event[1], event[2])
        elif kind == "local":
            _, runtime, request, consumer, producer, rows, tensor = event
            if isinstance(runtime, NodeRuntime) and runtime is self.runtime:
                self._deliver(runtime, request, consumer, producer, rows, tensor, f"local {producer}")
        elif kind == "connected":
            self._announce()

    def _announce(self) -> None:
        if self.runtime is not None:
            self.notifier.ready(self._serving())
        else:
            self.notifier.status(f"connected to {self.conn.broker}; waiting for an assignment")

    def _serving(self) -> str:
        assert self.runtime is not None
        a = self.runtime.assignment
        return f"serving {a.model} plan {a.plan} (generation {a.generation}): {len(a.units)} units"

    def _on_message(self, topic: str, payload: bytes) -> None:
        kind, fields = self.topics.parse(topic)
        if kind == "unit_input":
            self._on_frame(fields["plan"], fields["unit"], payload, topic)
        elif kind == "blob":
            self._on_blob(fields["sha256"], int(fields["part"]), payload, topic)
        elif kind == "node/assignment" and fields["node"] == self.node:
            self._on_assignment(payload, topic)
        else:
            raise ProtocolError(f"{topic}: not a topic node {self.node} reads")

    # -- data plane ----------------------------------------------------------------------------
    def _on_frame(self, plan: str, unit: str, payload: bytes, topic: str) -> None:
        runtime = self.runtime
        if runtime is None or plan != runtime.plan:
            self.counts.add("stale")
            return
        if unit not in runtime.units:
            raise ProtocolError(f"{topic}: no unit {unit!r} on node {self.node}")
        frame = decode_frame(payload, topic)
        self.counts.add("frames_in")
        if frame.plan != plan:
            raise ProtocolError(f"{topic}: frame field 'plan' is {frame.plan!r}, the topic says {plan!r}")
        tensor = self.assembler.add(frame, self.clock(), topic)
        if tensor is not None:
            self._deliver(runtime, frame.request, unit, frame.layer, frame.rows, tensor, topic)

    def _deliver(
        self, runtime: NodeRuntime, request: str, unit: str, producer: str, rows: RowRange, t: torch.Tensor, where: str
    ) -> None:
        try:
            ready = runtime.accept(request, unit, producer, rows, t, self.clock(), where)
        except InboxFullError as exc:
            self.counts.add("dropped")
            log.warning("node=%s %s", self.node, exc)
            return
        if ready is not None:
            self.pool.submit(self._compute, runtime, ready)

    def _compute(self, runtime: NodeRuntime, ready: Ready) -> None:
        """Worker thread: run one unit, send what its forwarding table names."""
        try:
            outputs = runtime.compute(ready)
            self.counts.add("units_run")
            for forward, piece in outputs:
                if runtime.is_local(forward.consumer):
                    self.events.put(
                        ("local", runtime, ready.request, forward.consumer, ready.unit.layer, forward.rows, piece)
                    )
                    continue
                for topic, payload in frames_for(
                    self.topics, runtime.plan, ready.request, ready.unit, forward, piece, self.conn.max_packet
                ):
                    self.conn.publish(topic, payload)
                    self.counts.add("frames_out")
                    self.counts.add("bytes_out", len(payload))
        except Exception:
            self.counts.add("errors")
            log.exception("node=%s unit=%s req=%s failed", self.node, ready.unit.uid, ready.request)

    def _expire(self, now: float) -> None:
        expired = self.assembler.expire(now)
        if self.runtime is not None:
            for request, unit in self.runtime.inbox.expire(now):
                expired += 1
                log.info("node=%s unit=%s req=%s: inputs incomplete after %g s; dropped", self.node, unit, request,
                         self.config.request_ttl_s)  # fmt: skip
        if expired:
            self.counts.add("dropped", expired)
        if self.fetch is not None and now - self.fetch[1].started > self.config.assignment_timeout_s:
            fetch = self.fetch[1]
            self._abandon_fetch(
                f"weights {sorted(fetch.missing)[:3]} did not arrive within {self.config.assignment_timeout_s:g} s"
            )

    # -- assignments ---------------------------------------------------------------------------
    def _on_assignment(self, payload: bytes, topic: str) -> None:
        if not payload:  # the retained assignment was cleared
            self._switch(None)
            self.notifier.status("assignment cleared; idle")
            return
        try:
            assignment = Assignment.from_bytes(payload, topic)
            if assignment.node != self.node:
                raise ProtocolError(f"{topic}: assignment is for node {assignment.node!r}, not {self.node!r}")
        except ProtocolError as exc:
            self._report(-1, "error", str(exc))
            raise
        current = self.runtime.assignment if self.runtime else None
        if current is not None and assignment.generation == current.generation and assignment.plan == current.plan:
            self._report(current.generation, "ready")  # the retained copy again, after a reconnect
            return
        if current is not None and assignment.generation < current.generation:
            log.warning("node=%s ignores generation %d: already at %d", self.node, assignment.generation,
                        current.generation)  # fmt: skip
            return
        if self.fetch is not None:
            self._unsubscribe_blobs(self.fetch[1])
        fetch = WeightFetch(assignment.weights, self.store, self.clock())
        self.fetch = (assignment, fetch)
        log.info("node=%s generation %d: %d units, %d of %d weights to fetch", self.node, assignment.generation,
                 len(assignment.units), len(fetch.missing), len(assignment.weights))  # fmt: skip
        self.notifier.status(f"fetching weights for generation {assignment.generation}")
        for sha in sorted(fetch.missing):
            self.conn.subscribe(self.topics.blob_parts(sha), qos=1)
        self._activate_if_fetched()

    def _on_blob(self, sha256: str, part: int, payload: bytes, topic: str) -> None:
        if self.fetch is None:
            return  # a retained copy arriving after the fetch finished
        fetch = self.fetch[1]
        try:
            got = fetch.add(sha256, part, payload, topic)
        except ProtocolError as exc:
            self._abandon_fetch(str(exc))
            raise
        if got is not None:
            ref, tensor = got
            self.store.put(ref, tensor)
            self.conn.unsubscribe(self.topics.blob_parts(sha256))
            self._activate_if_fetched()

    def _activate_if_fetched(self) -> None:
        if self.fetch is None or not self.fetch[1].done:
            return
        assignment, _ = self.fetch
        self.fetch = None
        tensors = {}
        for name, ref in assignment.weights.items():
            tensor = self.store.get(ref)
            if tensor is None:  # pragma: no cover - the fetch is done only when every blob is held
                raise EdgeFlowError(f"weight {name} vanished from the store")
            tensors[name] = tensor
        limit = int(self.config.buffer_mb * 2**20)
        self._switch(NodeRuntime(assignment, tensors, limit, self.config.request_ttl_s))
        self.store.keep_only(ref.sha256 for ref in assignment.weights.values())
        self._report(assignment.generation, "ready")
        self.notifier.ready(self._serving())
        log.info("node=%s %s", self.node, self._serving())

    def _switch(self, new: NodeRuntime | None) -> None:
        """Subscribe the new units' inputs, then swap, then unsubscribe the old ones: frames of the
        new plan are never missed, frames of the old plan find no buffers and are dropped."""
        old = self.runtime
        new_topics = {self.topics.unit_input(new.plan, uid) for uid in new.units} if new else set()
        old_topics = {self.topics.unit_input(old.plan, uid) for uid in old.units} if old else set()
        if not self.conn.subscribe_wait(sorted(new_topics - old_topics), qos=0):
            log.warning("node=%s: the broker did not acknowledge the new input subscriptions", self.node)
        self.runtime = new
        self.assembler = self._new_assembler()
        for topic in sorted(old_topics - new_topics):
            self.conn.unsubscribe(topic)

    def _abandon_fetch(self, reason: str) -> None:
        if self.fetch is None:
            return
        assignment, fetch = self.fetch
        self.fetch = None
        self._unsubscribe_blobs(fetch)
        self._report(assignment.generation, "error", reason)
        self.notifier.status(f"generation {assignment.generation} failed: {reason}")

    def _unsubscribe_blobs(self, fetch: WeightFetch) -> None:
        for sha in fetch.missing:
            self.conn.unsubscribe(self.topics.blob_parts(sha))

    def _report(self, generation: int, state: str, error: str = "") -> None:
        units = sorted(self.runtime.units) if self.runtime and state == "ready" else []
        report = AssignmentReport(generation=generation, state=state, error=error, units=units, instance=self.instance)
        if error:
            log.error("node=%s generation %d: %s", self.node, generation, error)
        self.conn.publish(
            self.topics.node(self.node, "assignment/reported"), encode_control(report), qos=1, retain=True
        )

    # -- periodic and shutdown -----------------------------------------------------------------
    def _publish_telemetry(self) -> None:
        counts = self.counts.snapshot()
        generation = self.runtime.assignment.generation if self.runtime else -1
        pending = self.runtime.inbox.pending if self.runtime else 0
        telemetry = sample_telemetry(counts, generation=generation, pending=pending)
        self.conn.publish(self.topics.node(self.node, "telemetry"), encode_control(telemetry))

    def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("node=%s stopping", self.node)
        offline = encode_control(Status(state="offline", instance=self.instance, session=self._sessions))
        try:
            if self.conn.connected.is_set():
                self.conn.publish_wait(self.topics.node(self.node, "status"), offline, timeout_s=2.0, retain=True)
        except EdgeFlowError as exc:
            log.warning("node=%s could not publish offline status: %s", self.node, exc)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.conn.stop()
