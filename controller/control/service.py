"""``edgeflow controller``: keeps one model's plan right while the cluster changes.

It watches every node's status, info and telemetry (through :class:`Registry`) and re-plans when the set of
live nodes changes (a last will, a restart, a new node) or a node's load moves beyond the hysteresis of
:class:`LoadWatch`, ``settle_s`` after the last change (a burst costs one plan; a planned node that left, at
once). It rolls a new generation out on its own connection (:mod:`controller.control.rollout`: blobs, then
assignments) and takes the nodes' reports as events in the same loop, which never waits for the broker; once
every node is ready it publishes the plan summary and clears the retained assignment of every other node, so
that one coming back runs nothing stale. Its status is retained with a last will; what it does goes to
``controller/event``.

With measured rates it learns as the model runs (:mod:`controller.control.learning`): it fits each node's
cost model to its units' times and the work of a message to the requesters' reported latencies, publishes
both on ``controller/costs``, and re-plans when a fitted speed drifts, a plan's median is 20% off its
prediction, or a split is slower than the best single device (the rules: docs/partitioning.md)."""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch

from controller.control.dashboard import Dashboard, Request
from controller.control.deployment import generation_of, make_deployment
from controller.control.learning import (
    CostLearner,
    LatencyBook,
    best_single,
    costs_report,
    keep_live,
    row_shares,
    slowdown,
    verdict,
)
from controller.control.registry import (
    NODE_FEEDS,
    Event,
    LoadWatch,
    Registry,
    measurements_moved,
    others_load,
    reference_device,
)
from controller.control.rollout import Rolling, Rollout, completion_messages, rollout_messages, works_with
from controller.graph.trace import trace_model
from controller.planner.fit import Case, fit_message_work, with_message_work
from controller.planner.methods import METHODS, plan_model
from controller.zoo import build_model
from edgeflowd.core.sizes import FRAME_HEADER_BYTES
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue, queued
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.profiles.devices import Cluster, Device
from edgeflowd.wire.assignment import NodeWork
from edgeflowd.wire.discovery import HA_STATUS_ONLINE
from edgeflowd.wire.messages import (
    ControllerEvent,
    Latency,
    PlanInfo,
    Status,
    Telemetry,
    decode_control,
    encode_control,
)
from edgeflowd.wire.topics import ControllerTopic, LatencyTopic, NodeTopic, Topics

__all__ = ["ControllerService"]

log = logging.getLogger(__name__)

_RETRY_S = 3.0  # after a failed deploy
_SPEED_DRIFT = math.log(1.5)  # a node's fitted unit times this far from the plan's: re-plan
_JUDGE_REQUESTS = 5  # latency reports before either judgement


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
        homeassistant_prefix: str | None = None,
    ) -> None:
        """``homeassistant_prefix``: announce the controller to Home Assistant under it (MQTT
        discovery, retained, again whenever Home Assistant comes online); None: do not."""
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
        self.speeds = LoadWatch(_SPEED_DRIFT, samples=3)  # log(fitted / planned unit time) per node
        self.learner = CostLearner()
        self.latencies = LatencyBook()
        self.message_flop = 0.0  # what handling a message costs (controller/planner/fit.py)
        self._cases: dict[int, Case] = {}  # measured generations, for that fit
        self.live: Rolling | None = None  # the deployed generation, as it was planned
        self._single: tuple[str, float] = ("", 0.0)  # best single device and its predicted latency
        self._judged = -1  # the generation last judged against the single device
        self._published = -1  # the generation whose assignments were published last (failed or not)
        self.instance = uuid.uuid4().hex[:12]
        self.messages: MessageQueue = queue.Queue()
        self.stop_event = threading.Event()
        self.planned_nodes: list[str] = []
        self.generation = -1
        self.deployed: PlanInfo | None = None  # the live plan: retained at start, then our own
        self._held: dict[str, int] = {}  # blobs of the plan summary the broker holds (as it last said)
        self.works: dict[str, NodeWork] = {}  # each node's retained assignment, as published last
        self.rolling: Rolling | None = None
        self._next_generation = 1
        self._dirty_since: float | None = None
        self._reason = "start"
        offline = encode_control(Status(state="offline", instance=self.instance))
        self.conn = Connection(
            broker,
            f"edgeflow-controller-{self.instance}",
            lambda t, p: self.messages.put((t, p)),
            will=(self.topics.controller("status"), offline),
            on_connect=self._on_connect,
        )
        operations = {"replan": self._ask_replan, "status": self._status, "set_method": self._set_method}
        self.dashboard = Dashboard(self.conn, self.topics, operations, homeassistant_prefix)

    def _on_connect(self) -> None:
        # At every (re)connect, as if no plan summary: a broker that kept one re-sends it (its blobs);
        # and as if Home Assistant had come online: the broker may have lost the discovery config.
        self.messages.put((self.topics.controller("plan"), b""))
        if self.dashboard.ha_status:
            self.messages.put((self.dashboard.ha_status, HA_STATUS_ONLINE))

    def run(self) -> int:
        model, shape = build_model(self.model_spec, None, 0)
        self.graph = trace_model(model, torch.zeros(shape), self.model_spec)
        for topic in self.topics.node_feeds([d.id for d in self.cluster.devices], NODE_FEEDS):
            self.conn.subscribe(topic, qos=1)
        self.conn.subscribe(self.topics.controller("plan"), qos=1)  # the generation deployed before us
        self.conn.subscribe(self.topics.latencies, qos=0)
        for topic in self.dashboard.subscriptions():
            self.conn.subscribe(topic, qos=1)
        self.conn.start()
        online = Status(state="online", instance=self.instance, session=1)
        self.conn.publish(self.topics.controller("status"), encode_control(online), qos=1, retain=True)
        log.info(
            "controller for %s on %s: %d nodes in the profile", self.model_spec, self.topics.root, len(self.cluster)
        )
        try:
            while not self.stop_event.is_set():
                for topic, payload in queued(self.messages, 0.2):  # wills that come together: one plan
                    self._handle(topic, payload)
                for event in self.registry.silence(self.clock()):  # after the queue: nothing unheard
                    self._membership(event.node, [event])
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

    def _handle(self, topic: str, payload: bytes) -> None:
        try:
            self._on_message(topic, payload)
        except ProtocolError as exc:
            log.warning("ignored: %s", exc)
        except Exception:  # the controller outlives any one bad message or bug in one path
            log.exception("error while handling a message")

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.dashboard.heard(topic, payload):
            return
        about = self.topics.parse(topic)
        if about == ControllerTopic("plan"):
            info = decode_control(payload, topic, PlanInfo) if payload else None
            if info is None:  # also what a (re)connect of ours puts in the queue: silences count from now
                self.registry.heard_all(self.clock())
            self._held = dict(info.blobs) if info is not None else {}
            if info is not None and (self.deployed is None or info.generation > self.deployed.generation):
                self.deployed = info  # retained from before this controller started
            return
        if isinstance(about, LatencyTopic):
            self._on_latency(decode_control(payload, topic, Latency))
            return
        if not isinstance(about, NodeTopic):
            return
        node = about.node
        view = self.registry.views.get(node)
        before = view.info.benchmark if view and view.info else None
        events = self.registry.on_message(about, payload, topic, self.clock())
        after = view.info.benchmark if view and view.info else None
        moved = measurements_moved(before, after) if self.measured_rates and before and after else ""
        if moved and node in self.planned_nodes:
            self._mark(f"{node} measured itself again: {moved}")
        if view is not None and about.leaf == "assignment/reported" and self.rolling and view.report:
            self.rolling.rollout.on_report(node, view.report)
        if view is not None and about.leaf == "telemetry" and payload and view.telemetry and self.measured_rates:
            self._on_telemetry(node, view.telemetry)
        self._membership(node, events, about.leaf in ("status", "info") or bool(events))

    # -- what dashboards may ask (controller/request/<op>) ----------------------------------------
    def _ask_replan(self, request: Request) -> dict[str, Any]:
        self._mark("asked for over MQTT", debounce=False, due=True)
        return {"generation": self.generation, "nodes": self.registry.live()}

    def _set_method(self, request: Request) -> dict[str, Any]:
        methods = [m for m in METHODS if m != "optimal"]  # as `edgeflow controller --method` offers
        if request.method not in methods:
            raise EdgeFlowError(f"method {request.method!r}: expected one of {', '.join(methods)}")
        before, self.method = self.method, request.method
        if before != self.method:
            self._mark(f"method {before} -> {self.method}, asked for over MQTT", debounce=False, due=True)
        return {"method": self.method, "was": before}

    def _status(self, request: Request) -> dict[str, Any]:
        plan = self.deployed
        measured, requests = self.latencies.median(plan.generation) if plan else (0.0, 0)
        return {
            "model": self.model_spec,
            "method": self.method,
            "nodes": {d.id: self.registry.views[d.id].state for d in self.cluster.devices},
            "plan": plan.plan if plan else None,
            "generation": plan.generation if plan else None,
            "predicted_ms": plan.predicted_ms if plan else None,
            "measured_ms": measured if requests else None,
            "requests": requests,
            "replanning": self.rolling is not None or self._dirty_since is not None,
        }

    def _membership(self, node: str, events: list[Event], check: bool = True) -> None:
        """Say ``events``; re-plan (``check``) if the live nodes are no longer those planned."""
        for event in events:
            self._event(event.event, event.node, event.detail)
        target = self.rolling.rollout.nodes if self.rolling else self.planned_nodes
        if check and set(self.registry.live()) != set(target):
            change = events[-1].event if events else "ready"
            self._mark(f"{node} {change}", due=change == "left" and node in target)

    def _on_telemetry(self, node: str, telemetry: Telemetry) -> None:
        now = self.clock()
        device = next(d for d in self.cluster.devices if d.id == node)
        reference = reference_device(device, self.registry.views[node])
        fit = self.learner.observe(node, telemetry.generation, {}, reference, now)
        for plan, unit_s in telemetry.unit_s.items():  # one entry per plan (model) it ran
            fit = self.learner.observe(node, generation_of(plan), unit_s, reference, now)
        live = self.live
        if fit is None or live is None or node not in live.rollout.nodes:
            load = others_load(telemetry)
            if self.loads.observe(node, load):
                self._mark(f"load of {node} moved to {load:.0%}", debounce=False)
            return
        if not telemetry.unit_s:
            return
        index, fitted = live.rollout.nodes.index(node), self.learner.device(node, now)
        ratio = slowdown(live.planned.plan, self.graph, index, live.cluster.devices[index], fitted)
        if self.speeds.observe(node, math.log(ratio)):
            self._mark(f"{node} runs its units {ratio:.2f}x the planned time", debounce=False)
        self._publish_costs()

    def _on_latency(self, report: Latency) -> None:
        live = self.live
        if live is None or report.generation != live.rollout.deployment.info.generation:
            return
        if not 0 < report.ms < 3.6e6:  # a requester's clock or a forged report: not a latency
            log.warning("ignored latency report %s of %r ms", report.request, report.ms)
            return
        self.latencies.add(report.generation, report.ms)
        measured, count = self.latencies.median(report.generation)
        if count >= _JUDGE_REQUESTS and self._judged != report.generation and self._all_fitted(live):
            self._judged = report.generation
            self._judge(live, measured / 1e3, count)
        self._publish_costs()

    def _all_fitted(self, live: Rolling) -> bool:
        """Every node with work in the live plan has a fit: only then is the rest put down to messages."""
        fitted = self._fitted()
        return all(n in fitted for i, n in enumerate(live.rollout.nodes) if live.planned.plan.on_device(i))

    def _judge(self, live: Rolling, measured_s: float, count: int) -> None:
        """The live plan's measured median against its prediction and against the best single
        device: fit the message work to the plans measured so far, and re-plan with it when the
        prediction was off by more than 20%, or when a split lost to one device."""
        generation = live.rollout.deployment.info.generation
        # The plan as the nodes' units are measured to run now: what they do not explain is messages.
        now = self.registry.live_cluster(self.measured_rates, self._fitted())
        devices = {d.id: d for d in now.devices}
        base = live.base.with_devices(tuple(devices.get(d.id, d) for d in live.base.devices))
        split = sum(1 for i in range(len(live.rollout.nodes)) if live.planned.plan.on_device(i)) > 1
        if split:  # a single device's plan sends nothing between devices: it says nothing of messages
            self._cases[generation] = Case(live.planned.plan, self.graph, base, measured_s)
        self._cases = {g: c for g, c in self._cases.items() if g in self.learner.plans}
        self.message_flop = fit_message_work(list(self._cases.values()))
        predicted = live.planned.latency_s
        self._single = best_single(self.graph, with_message_work(base, self.message_flop))
        node, single_ms = self._single
        said = (
            f"generation {generation} measured {measured_s * 1e3:.0f} ms over {count} requests, predicted "
            f"{predicted * 1e3:.0f} ms; handling a message costs {self.message_flop / 1e6:.2f} MFLOP"
        )
        judged = verdict(measured_s, predicted, single_ms / 1e3, split)
        if judged == "slower-than-single":
            self._event(judged, detail=f"{said}; the best single device ({node}) {single_ms:.0f} ms")
            self._mark("slower than a single device", debounce=False)
        elif judged:
            self._event(judged, detail=said)
            self._mark("the prediction was off", debounce=False)

    def _fitted(self) -> dict[str, Device]:
        return {n: d for n in self.registry.live() if (d := self.learner.device(n, self.clock())) is not None}

    def _publish_costs(self) -> None:
        """Retained ``controller/costs`` (see :class:`~edgeflowd.wire.messages.Costs`)."""
        live = self.live
        if live is None:
            return
        now, info = self.clock(), live.rollout.deployment.info
        cluster = self.registry.live_cluster(self.measured_rates, self._fitted() if self.measured_rates else None)
        fits = {d.id: self.learner.fitted(d.id, now) if self.measured_rates else None for d in cluster.devices}
        report = costs_report(
            info.generation,
            live.planned,
            with_message_work(cluster, self.message_flop),
            fits,
            "benchmark" if self.measured_rates else "declared",
            row_shares(live.planned.plan, live.rollout.nodes),
            self.latencies.median(info.generation),
            self._single,
            self.message_flop,
        )
        self.conn.publish(self.topics.controller("costs"), encode_control(report), qos=1, retain=True)

    def _mark(self, reason: str, debounce: bool = True, due: bool = False) -> None:
        """Ask for a re-plan ``settle_s`` from now; membership changes (``debounce``) push it back
        so a burst costs one plan, periodic load reports must not. ``due``: at once (a planned node
        left: every request fails until a plan without it is live)."""
        if self._dirty_since is None:
            self._reason = reason
        if self._dirty_since is None or debounce:
            self._dirty_since = self.clock() - (self.settle_s if due else 0.0)

    def _event(self, event: str, node: str = "", detail: str = "") -> None:
        log.info("event %s %s %s", event, node, detail)
        message = ControllerEvent(event=event, node=node, detail=detail, generation=self.generation)
        self.conn.publish(self.topics.controller("event"), encode_control(message), qos=1)

    def _replan(self) -> None:
        """Plan for the live nodes and start rolling the plan out on this connection; the nodes'
        reports arrive as events (:meth:`_check_rollout`), nothing here waits for them."""
        reason, self._dirty_since = self._reason, None
        live_nodes = self.registry.live()
        if not live_nodes:
            self._event("idle", detail="no live node to plan with")
            self.planned_nodes = []
            return
        start = self.clock()
        base = self.registry.live_cluster(self.measured_rates, self._fitted() if self.measured_rates else None)
        cluster = with_message_work(base, self.message_flop)
        try:
            planned = plan_model(self.graph, cluster, self.method, deployable=True)
        except EdgeFlowError as exc:
            self._failed(reason, str(exc))
            return
        live = self.live
        # The nodes run the live plan (no failed rollout since): a new one must beat it (keep_live),
        # unless it was made by another method than the one asked for now.
        running = live is not None and live.rollout.nodes == live_nodes and live.planned.method == planned.method
        kept = keep_live(live.planned, planned, self.graph, cluster) if live and running else None
        if live is not None and kept is not None and self._published == live.rollout.deployment.info.generation:
            self.live = dataclasses.replace(live, cluster=cluster, planned=kept, base=base)
            self._baselines(self.live)
            said = f"the live plan is predicted {kept.latency_s * 1e3:.1f} ms, a new one {planned.latency_s * 1e3:.1f}"
            self._event("kept", detail=f"{reason}: {said}")
            self._publish_costs()
            return
        try:
            reported = max((v.report.generation for v in self.registry.views.values() if v.report), default=0)
            generation = max(self._next_generation, self.deployed.generation + 1 if self.deployed else 1, reported + 1)
            part_bytes = self.conn.max_packet - FRAME_HEADER_BYTES
            deployment = make_deployment(
                planned.plan, self.graph, live_nodes, generation, planned.method, part_bytes, planned.timeline
            )
        except EdgeFlowError as exc:
            self._failed(reason, str(exc))
            return
        self._next_generation = generation + 1  # never hand out a generation twice, failed or not
        for publication in rollout_messages(self.topics, deployment, self._held, self.works):
            self.conn.publish(publication.topic, publication.payload, qos=1, retain=True)
        self.works.update(works_with(deployment, self.works))
        self._published = generation
        rollout = Rollout(deployment, self.clock(), self.deploy_timeout_s)  # its clock starts once published
        self.rolling = Rolling(rollout, reason, cluster, planned, start, base)

    def _check_rollout(self) -> None:
        rolling = self.rolling
        if rolling is None:
            return
        offline = [n for n in rolling.rollout.nodes if not self.registry.views[n].reachable]
        failure = rolling.rollout.failure(self.clock(), offline)
        if failure:
            self.rolling = None
            self._failed(rolling.reason, failure, 0.0 if offline else _RETRY_S)  # offline: plan around it now
            return
        if not rolling.rollout.ready:
            return
        self.rolling = None
        deployment = rolling.rollout.deployment
        others = [d.id for d in self.cluster.devices]
        admits = rolling.rollout.admits
        for publication in completion_messages(self.topics, deployment, self.deployed, others, admits, self.works):
            self.conn.publish(publication.topic, publication.payload, qos=1, retain=True)
        for node in others:
            if node not in deployment.assignments and node in self.works:
                self.works[node] = self.works[node].replace(None, deployment.info.model)
        info = self.deployed = deployment.info
        self._held = dict(info.blobs)  # what the broker holds now, before its echo of the summary
        live = rolling.rollout.nodes
        self.generation, self.planned_nodes = info.generation, live
        self.learner.add_plan(info.generation, rolling.planned.plan, self.graph, live)
        self.live = rolling
        self._baselines(rolling)
        self._publish_costs()
        self._event("replanned", detail=rolling.summary(self.clock()))

    def _baselines(self, live: Rolling) -> None:
        """What the watches and the safeguard compare with from now on: the model ``live`` was
        planned with."""
        self.loads.planned_with({d.id: d.load for d in live.cluster.devices})
        self.speeds.planned_with(dict.fromkeys(live.rollout.nodes, 0.0))
        self._single = best_single(self.graph, live.cluster)

    def _failed(self, reason: str, error: str, retry_s: float = _RETRY_S) -> None:
        self._event("replan-failed", detail=error)
        self._dirty_since, self._reason = self.clock() - self.settle_s + retry_s, reason
