"""``edgeflow controller``: keeps one model's plan right while the cluster changes.

It watches every node's status, info and telemetry (through :class:`Registry`), and re-plans when
the set of live nodes changes (a last will, a restart, a new node) or a node's load moves beyond
the hysteresis of :class:`LoadWatch`. A re-plan waits ``settle_s`` after the last change (so a
burst of events costs one plan), deploys a new generation to the live nodes, and clears the
retained assignment of every other node of the cluster so that a node coming back runs nothing
stale. Its own status is retained with a last will; what it does is published on
``controller/event``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable

import torch

from controller.control.deploy import DeployError, deploy_plan
from controller.control.registry import NODE_FEEDS, LoadWatch, Registry, others_load
from controller.graph.trace import trace_model
from controller.planner.methods import plan_model
from controller.zoo import build_model
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.profiles.devices import Cluster
from edgeflowd.wire.messages import ControllerEvent, Status, encode_control
from edgeflowd.wire.topics import NodeTopic, Topics

__all__ = ["ControllerService"]

log = logging.getLogger(__name__)

_RETRY_S = 3.0  # after a failed deploy


class ControllerService:
    def __init__(
        self,
        broker: BrokerSettings,
        cluster: Cluster,
        model_spec: str,
        method: str = "edgeflow",
        settle_s: float = 1.0,
        deploy_timeout_s: float = 60.0,
        measured_rates: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.cluster = cluster
        self.model_spec = model_spec
        self.method = method
        self.settle_s = settle_s
        self.deploy_timeout_s = deploy_timeout_s
        self.measured_rates = measured_rates
        self.clock = clock
        self.topics = Topics(cluster.name)
        self.registry = Registry(cluster)
        self.loads = LoadWatch()
        self.instance = uuid.uuid4().hex[:12]
        self.inbox: MessageQueue = queue.Queue()
        self.stop_event = threading.Event()
        self.planned_nodes: list[str] = []
        self.generation = -1
        self._dirty_since: float | None = None
        self._reason = "start"
        offline = encode_control(Status(state="offline", instance=self.instance))
        self.conn = Connection(
            broker,
            f"edgeflow-controller-{self.instance}",
            lambda t, p: self.inbox.put((t, p)),
            will=(self.topics.controller("status"), offline),
        )

    def run(self) -> int:
        model, shape = build_model(self.model_spec, None, 0)
        self.graph = trace_model(model, torch.zeros(shape), self.model_spec)
        for leaf in NODE_FEEDS:
            self.conn.subscribe(self.topics.node_filter(leaf), qos=1)
        self.conn.start()
        online = Status(state="online", instance=self.instance, session=1)
        self.conn.publish(self.topics.controller("status"), encode_control(online), qos=1, retain=True)
        log.info(
            "controller for %s on %s: %d nodes in the profile", self.model_spec, self.topics.root, len(self.cluster)
        )
        try:
            while not self.stop_event.is_set():
                try:
                    topic, payload = self.inbox.get(timeout=0.2)
                    self._on_message(topic, payload)
                except queue.Empty:
                    pass
                except ProtocolError as exc:
                    log.warning("ignored: %s", exc)
                if self._dirty_since is not None and self.clock() - self._dirty_since >= self.settle_s:
                    self._replan()
        finally:
            offline = Status(state="offline", instance=self.instance, session=1)
            try:
                self.conn.publish_wait(self.topics.controller("status"), encode_control(offline), 2.0, retain=True)
            except EdgeFlowError as exc:
                log.warning("could not publish offline status: %s", exc)
            self.conn.stop()
        return 0

    def stop(self) -> None:
        self.stop_event.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        about = self.topics.parse(topic)
        if not isinstance(about, NodeTopic):
            return  # the service subscribes to node topics only
        node = about.node
        events = self.registry.on_message(about, payload, topic, self.clock())
        telemetry = self.registry.views[node].telemetry if node in self.registry.views else None
        if about.leaf == "telemetry" and payload and telemetry is not None and self.measured_rates:
            load = others_load(telemetry)
            if self.loads.observe(node, load):
                self._mark(f"load of {node} moved to {load:.0%}", debounce=False)
        for event in events:
            self._event(event.event, event.node, event.detail)
        if about.leaf in ("status", "info") and set(self.registry.live()) != set(self.planned_nodes):
            change = events[-1].event if events else "ready"
            self._mark(f"{node} {change}")

    def _mark(self, reason: str, debounce: bool = True) -> None:
        """Ask for a re-plan ``settle_s`` from now; membership changes (``debounce``) push it back
        so a burst costs one plan, periodic load reports must not."""
        if self._dirty_since is None:
            self._reason = reason
            self._dirty_since = self.clock()
        elif debounce:
            self._dirty_since = self.clock()

    def _event(self, kind: str, node: str = "", detail: str = "") -> None:
        log.info("event %s %s %s", kind, node, detail)
        event = ControllerEvent(event=kind, node=node, detail=detail, generation=self.generation)
        self.conn.publish(self.topics.controller("event"), encode_control(event), qos=1)

    def _replan(self) -> None:
        reason, self._dirty_since = self._reason, None
        live = self.registry.live()
        if not live:
            self._event("idle", detail="no live node to plan with")
            self.planned_nodes = []
            return
        start = self.clock()
        cluster = self.registry.live_cluster(self.measured_rates)
        try:
            planned = plan_model(self.graph, cluster, self.method)
            info = deploy_plan(self.broker, self.cluster.name, planned, self.graph, live, self.deploy_timeout_s)
        except (DeployError, EdgeFlowError) as exc:
            self._event("replan-failed", detail=str(exc))
            self._dirty_since, self._reason = self.clock() - self.settle_s + _RETRY_S, reason
            return
        for device in self.cluster.devices:
            if device.id not in live:  # a node coming back must not run a superseded plan
                self.conn.publish(self.topics.node(device.id, "assignment"), b"", qos=1, retain=True)
        self.generation, self.planned_nodes = info.generation, live
        self.loads.planned_with({d.id: d.load for d in cluster.devices})
        shares = {n: sum(len(u.rows) for u in planned.plan.on_device(i)) for i, n in enumerate(live)}
        total = sum(shares.values()) or 1
        detail = (
            f"{reason}: generation {info.generation} on {len(live)} nodes in {self.clock() - start:.2f} s; "
            "row shares " + ", ".join(f"{n} {s / total:.0%}" for n, s in shares.items())
        )
        self._event("replanned", detail=detail)
