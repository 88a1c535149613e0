"""``edgeflow controller``: keeps one model's plan right while the cluster changes.

It watches every node's status, info and telemetry (through :class:`Registry`), and re-plans when
the set of live nodes changes (a last will, a restart, a new node) or a node's load moves beyond
the hysteresis of :class:`LoadWatch`. A re-plan waits ``settle_s`` after the last change (so a
burst of events costs one plan) and rolls a new generation out on the service's own connection
(:mod:`controller.control.rollout`: blobs, then assignments). The nodes' reports arrive as
events in the same loop; once every node is ready it publishes the plan summary and clears the
retained assignment of every other node of the cluster, so that a node coming back runs nothing
stale. Nothing in the loop waits for the broker: node messages keep being handled while a
generation rolls out, and a planned node going offline fails the rollout at once. Its own status
is retained with a last will; what it does is published on ``controller/event``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import torch

from controller.control.deployment import make_deployment
from controller.control.registry import NODE_FEEDS, LoadWatch, Registry, others_load
from controller.control.rollout import Rollout, completion_messages, rollout_messages
from controller.graph.trace import trace_model
from controller.planner.methods import Planned, plan_model
from controller.zoo import build_model
from edgeflowd.core.sizes import FRAME_HEADER_BYTES
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.profiles.devices import Cluster
from edgeflowd.wire.messages import ControllerEvent, PlanInfo, Status, decode_control, encode_control
from edgeflowd.wire.topics import ControllerTopic, NodeTopic, Topics

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
        self.messages: MessageQueue = queue.Queue()
        self.stop_event = threading.Event()
        self.planned_nodes: list[str] = []
        self.generation = -1
        self.deployed: PlanInfo | None = None  # the live plan: retained at start, then our own
        self.rolling: _Rolling | None = None
        self._next_generation = 1
        self._dirty_since: float | None = None
        self._reason = "start"
        offline = encode_control(Status(state="offline", instance=self.instance))
        self.conn = Connection(
            broker,
            f"edgeflow-controller-{self.instance}",
            lambda t, p: self.messages.put((t, p)),
            will=(self.topics.controller("status"), offline),
        )

    def run(self) -> int:
        model, shape = build_model(self.model_spec, None, 0)
        self.graph = trace_model(model, torch.zeros(shape), self.model_spec)
        for leaf in NODE_FEEDS:
            self.conn.subscribe(self.topics.node_filter(leaf), qos=1)
        self.conn.subscribe(self.topics.controller("plan"), qos=1)  # the generation deployed before us
        self.conn.start()
        online = Status(state="online", instance=self.instance, session=1)
        self.conn.publish(self.topics.controller("status"), encode_control(online), qos=1, retain=True)
        log.info(
            "controller for %s on %s: %d nodes in the profile", self.model_spec, self.topics.root, len(self.cluster)
        )
        try:
            while not self.stop_event.is_set():
                try:
                    topic, payload = self.messages.get(timeout=0.2)
                    self._on_message(topic, payload)
                except queue.Empty:
                    pass
                except ProtocolError as exc:
                    log.warning("ignored: %s", exc)
                self._check_rollout()
                settled = self._dirty_since is not None and self.clock() - self._dirty_since >= self.settle_s
                if settled and self.rolling is None:  # a rollout in flight finishes (or fails) first
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
        if about == ControllerTopic("plan"):
            info = decode_control(payload, topic, PlanInfo) if payload else None
            if info is not None and (self.deployed is None or info.generation > self.deployed.generation):
                self.deployed = info  # retained from before this controller started
            return
        if not isinstance(about, NodeTopic):
            return
        node = about.node
        events = self.registry.on_message(about, payload, topic, self.clock())
        report = self.registry.views[node].report if node in self.registry.views else None
        if about.leaf == "assignment/reported" and self.rolling is not None and report is not None:
            self.rolling.rollout.on_report(node, report)
        telemetry = self.registry.views[node].telemetry if node in self.registry.views else None
        if about.leaf == "telemetry" and payload and telemetry is not None and self.measured_rates:
            load = others_load(telemetry)
            if self.loads.observe(node, load):
                self._mark(f"load of {node} moved to {load:.0%}", debounce=False)
        for event in events:
            self._event(event.event, event.node, event.detail)
        target = self.rolling.rollout.nodes if self.rolling else self.planned_nodes
        if about.leaf in ("status", "info") and set(self.registry.live()) != set(target):
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

    def _event(self, event: str, node: str = "", detail: str = "") -> None:
        log.info("event %s %s %s", event, node, detail)
        message = ControllerEvent(event=event, node=node, detail=detail, generation=self.generation)
        self.conn.publish(self.topics.controller("event"), encode_control(message), qos=1)

    def _replan(self) -> None:
        """Plan for the live nodes and start rolling the plan out on this connection; the nodes'
        reports arrive as events (:meth:`_check_rollout`), nothing here waits for them."""
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
            generation = max(self._next_generation, self.deployed.generation + 1 if self.deployed else 1)
            part_bytes = self.conn.max_packet - FRAME_HEADER_BYTES
            deployment = make_deployment(
                planned.plan, self.graph, live, generation, planned.method, part_bytes, planned.latency_s * 1e3
            )
        except EdgeFlowError as exc:
            self._failed(reason, str(exc))
            return
        self._next_generation = generation + 1  # never hand out a generation twice, failed or not
        for publication in rollout_messages(self.topics, deployment):
            self.conn.publish(publication.topic, publication.payload, qos=1, retain=True)
        rollout = Rollout(deployment, self.clock(), self.deploy_timeout_s)  # its clock starts once published
        self.rolling = _Rolling(rollout, reason, cluster, planned, start)

    def _check_rollout(self) -> None:
        rolling = self.rolling
        if rolling is None:
            return
        offline = [n for n in rolling.rollout.nodes if not self.registry.views[n].online]
        failure = rolling.rollout.failure(self.clock(), offline)
        if failure:
            self.rolling = None
            self._failed(rolling.reason, failure)
            return
        if not rolling.rollout.ready:
            return
        self.rolling = None
        deployment = rolling.rollout.deployment
        others = [d.id for d in self.cluster.devices]
        for publication in completion_messages(self.topics, deployment, self.deployed, others):
            self.conn.publish(publication.topic, publication.payload, qos=1, retain=True)
        info = self.deployed = deployment.info
        live = rolling.rollout.nodes
        self.generation, self.planned_nodes = info.generation, live
        self.loads.planned_with({d.id: d.load for d in rolling.cluster.devices})
        plan = rolling.planned.plan
        shares = {n: sum(len(u.rows) for u in plan.on_device(i)) for i, n in enumerate(live)}
        total = sum(shares.values()) or 1
        detail = (
            f"{rolling.reason}: generation {info.generation} on {len(live)} nodes in "
            f"{self.clock() - rolling.started:.2f} s; "
            "row shares " + ", ".join(f"{n} {s / total:.0%}" for n, s in shares.items())
        )
        self._event("replanned", detail=detail)

    def _failed(self, reason: str, error: str) -> None:
        self._event("replan-failed", detail=error)
        self._dirty_since, self._reason = self.clock() - self.settle_s + _RETRY_S, reason


@dataclass(frozen=True)
class _Rolling:
    """A generation being rolled out, with what its completion reports."""

    rollout: Rollout
    reason: str
    cluster: Cluster
    planned: Planned
    started: float  # when the re-plan began: its event reports planning and rollout together
