"""The daemon's worker pool: it runs units and carries out what the runtime decides for their
rows. Frames that leave the node are published from here. A slice for a unit of this same node
is delivered from here too, under the lock that guards the runtime's buffers, and the units it
completes run next on the same thread (depth first): a slice that stays on the node costs no
thread hop and no queue."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from edgeflowd.errors import ProtocolError
from edgeflowd.net.mqtt import Connection
from edgeflowd.node.events import Counts, UnitTimes
from edgeflowd.node.runtime import Action, Compute, Deliver, Dropped, NodeRuntime, Publish
from edgeflowd.node.slices import BufferFullError
from edgeflowd.node.spans import SpanLog
from edgeflowd.wire.messages import TraceAsk, decode_control, encode_control
from edgeflowd.wire.topics import BusyTopic, TraceTopic, UnitInputTopic

__all__ = ["Workers"]

log = logging.getLogger(__name__)


class Workers:
    """``serving(runtime)``: whether the engine still serves ``runtime`` (one per model): work of a
    replaced one stops."""

    def __init__(
        self,
        workers: int,
        node: str,
        conn: Connection,
        counts: Counts,
        clock: Callable[[], float],
        serving: Callable[[NodeRuntime], bool],
    ) -> None:
        self.node = node
        self.conn = conn
        self.counts = counts
        self.clock = clock
        self.serving = serving
        self.times = UnitTimes()
        self.spans = SpanLog()
        self._busy = 0  # work chains submitted and not finished: the node is not idle while any runs
        self._busy_lock = threading.Lock()
        self.buffers = threading.Lock()  # guards the runtime's slice buffer and frame assembler
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"edgeflowd[{node}].worker")

    def act(self, runtime: NodeRuntime, actions: Iterable[Action]) -> None:
        """Carry ``actions`` out: units go to the pool; any thread may call this (publishing is
        thread-safe in paho)."""
        for action in actions:
            if isinstance(action, Compute):
                with self._busy_lock:
                    self._busy += 1
                self.pool.submit(self._run, runtime, action)
            elif isinstance(action, Publish):
                self.conn.publish(action.topic, action.payload)
                self.counts.add("frames_out")
                self.counts.add("bytes_out", len(action.payload))
            elif isinstance(action, Deliver):  # a worker delivers its own in _run; this is any other caller's
                ready: deque[Compute] = deque()
                self._deliver(runtime, action, ready)
                self.act(runtime, ready)
            elif isinstance(action, Dropped):
                self.counts.add(action.why)

    def receive(
        self, runtime: NodeRuntime, about: UnitInputTopic | BusyTopic | TraceTopic, payload: bytes, topic: str
    ) -> None:
        """A data-plane message for ``runtime`` (engine thread): a frame, a refusal of a request,
        or a requester asking how one of its requests went here."""
        if isinstance(about, UnitInputTopic):
            with self.buffers:
                actions = runtime.receive(about, payload, self.clock(), topic)
            if not any(isinstance(action, Dropped) for action in actions):
                self.counts.add("frames_in")
            for action in actions:
                if isinstance(action, Compute):
                    self.spans.ready(action.request, action.unit.uid)
            self.act(runtime, actions)
        elif isinstance(about, BusyTopic):
            with self.buffers:
                runtime.refused(about, payload, self.clock(), topic)
        elif about.plan == runtime.plan:
            asked = decode_control(payload, topic, TraceAsk).request
            answer = self.spans.spans(self.node, asked)
            self.conn.publish(runtime.topics.spans(about.plan), encode_control(answer))

    def _deliver(self, runtime: NodeRuntime, local: Deliver, work: deque[Compute]) -> None:
        try:
            with self.buffers:
                ready = runtime.deliver(local, self.clock())
        except BufferFullError as exc:  # the request is given up on whole, and its requester told
            self.counts.add("dropped")
            log.warning("node=%s refused: %s", self.node, exc)
            with self.buffers:
                refusal = runtime.give_up(local.request, f"had no room for its rows ({exc})", self.clock())
            self.act(runtime, refusal)
            return
        except ProtocolError as exc:
            self.counts.add("malformed")
            log.warning("node=%s refused: %s", self.node, exc)
            return
        for action in ready:
            if isinstance(action, Compute):
                self.spans.ready(action.request, action.unit.uid)
                work.append(action)

    def _run(self, runtime: NodeRuntime, first: Compute) -> None:
        """Worker thread: run a unit, send what its forwarding table names, and run the units its
        local slices complete."""
        try:
            self._chain(runtime, first)
        finally:
            with self._busy_lock:
                self._busy -= 1

    @property
    def busy(self) -> bool:
        with self._busy_lock:
            return self._busy > 0

    def _chain(self, runtime: NodeRuntime, first: Compute) -> None:
        work: deque[Compute] = deque([first])
        while work and self.serving(runtime):  # a replaced plan's work stops here
            unit = work.popleft()
            start, began = self.clock(), time.time()
            try:
                for action in runtime.compute(unit, self.conn.max_packet):
                    if isinstance(action, Deliver):
                        self._deliver(runtime, action, work)
                    else:
                        if isinstance(action, Publish):
                            self.spans.sent(unit.request, unit.unit.uid, action.topic, len(action.payload))
                        self.act(runtime, (action,))
                self.times.add(runtime.plan, unit.unit.uid, self.clock() - start)
                self.spans.ran(unit.request, unit.unit.uid, began, time.time())
                self.counts.add("units_run")
            except Exception:
                self.counts.add("errors")
                log.exception("node=%s unit=%s req=%s failed", self.node, unit.unit.uid, unit.request)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
