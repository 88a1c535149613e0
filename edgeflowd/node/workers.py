"""The daemon's worker pool: it runs units and carries out what the runtime decides for their
rows, publishing frames that leave the node and handing slices for this node's own units back to
the engine (as :class:`LocalSlice` events: the engine alone touches the buffers)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from edgeflowd.net.mqtt import Connection
from edgeflowd.node.events import Counts, Event, LocalSlice
from edgeflowd.node.runtime import Action, Compute, Deliver, Dropped, NodeRuntime, Publish

__all__ = ["Workers"]

log = logging.getLogger(__name__)


class Workers:
    def __init__(
        self, workers: int, node: str, conn: Connection, counts: Counts, enqueue: Callable[[Event], None]
    ) -> None:
        self.node = node
        self.conn = conn
        self.counts = counts
        self.enqueue = enqueue
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"edgeflowd[{node}].worker")

    def act(self, runtime: NodeRuntime, actions: Iterable[Action]) -> None:
        """Carry ``actions`` out; any thread may call this (publishing is thread-safe in paho)."""
        for action in actions:
            if isinstance(action, Compute):
                self.pool.submit(self._compute, runtime, action)
            elif isinstance(action, Publish):
                self.conn.publish(action.topic, action.payload)
                self.counts.add("frames_out")
                self.counts.add("bytes_out", len(action.payload))
            elif isinstance(action, Deliver):
                self.enqueue(LocalSlice(runtime, action))
            elif isinstance(action, Dropped):
                self.counts.add(action.why)

    def _compute(self, runtime: NodeRuntime, work: Compute) -> None:
        """Worker thread: run one unit, send what its forwarding table names."""
        try:
            actions = runtime.compute(work, self.conn.max_packet)
            self.counts.add("units_run")
            self.act(runtime, actions)
        except Exception:
            self.counts.add("errors")
            log.exception("node=%s unit=%s req=%s failed", self.node, work.unit.uid, work.request)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
