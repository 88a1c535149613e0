"""``edgeflow controller``: keeps the plan of each model it serves right while the cluster changes.

It watches every node's status, info and telemetry (through :class:`Registry`) and re-plans when the set of
live nodes changes (a last will, a restart, a new node) or a node's load moves beyond the hysteresis of
:class:`LoadWatch`, ``settle_s`` after the last change (a burst costs one plan; a planned node that left, at
once). Several models (``--model A --model B``) each keep their own plan, generation and topics; they are
planned one at a time, each against the nodes' memory less what the others' live plans keep there, and a
node's one retained assignment carries every model's plan for it. It rolls a new generation out on its own
connection (:mod:`controller.control.rollout`: blobs, then assignments) and takes the nodes' reports as
events in the same loop, which never waits for the broker; once every node is ready it publishes the plan
summary and takes the model off every other node, so that one coming back runs nothing stale. Its status is
retained with a last will; what it does goes to ``controller/event``.

With measured rates it learns as the models run (:mod:`controller.control.judging`): it fits each node's
cost model to its units' times and the work of a message to the requesters' reported latencies, publishes
both on ``controller/costs/<model>``, and re-plans when a fitted speed drifts, a plan's median is 20% off its
prediction, or a split is slower than the best single device (the rules: docs/partitioning.md)."""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import torch

from controller.control.alone import TRIED_FOR
from controller.control.dashboard import Dashboard, Request
from controller.control.deployment import make_deployment
from controller.control.judging import Judge
from controller.control.learning import best_single, keep_live, slowdown
from controller.control.registry import (
    NODE_FEEDS,
    Event,
    LoadWatch,
    Registry,
    measurements_moved,
    others_load,
    reference_device,
)
from controller.control.rollout import Rolling, Rollout, cleared_blobs, completion_messages, rollout_messages
from controller.control.served import Retained, Served, live_works, memory_left, running_works
from controller.graph.trace import trace_model
from controller.planner.fit import with_message_work
from controller.planner.methods import METHODS, plan_model, plan_partition
from controller.planner.methods.baselines import single_on
from controller.zoo import build_model
from edgeflowd.core.sizes import FRAME_HEADER_BYTES
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue, queued
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.profiles.devices import Cluster, Device
from edgeflowd.wire.assignment import NodeWork, NodeWorkDoc
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
from edgeflowd.wire.schema import decode
from edgeflowd.wire.topics import MODEL_LEAVES, ControllerTopic, LatencyTopic, NodeTopic, Topics

__all__ = ["ControllerService"]

log = logging.getLogger(__name__)

_RETRY_S = 3.0  # after a failed deploy
_JUDGE_REQUESTS = 5  # latency reports before either judgement


class ControllerService:
    def __init__(
        self,
        broker: BrokerSettings,
        cluster: Cluster,
        model_specs: Sequence[str],
        method: str = "edgeflow",
        settle_s: float = 1.0,
        deploy_timeout_s: float = 60.0,
        measured_rates: bool = True,
        clock: Callable[[], float] = time.monotonic,
        homeassistant_prefix: str | None = None,
    ) -> None:
        """``model_specs``: the models to serve, each a topic level (its plan's topics are named by
        it). ``homeassistant_prefix``: announce the controller to Home Assistant under it (MQTT
        discovery, retained, again whenever Home Assistant comes online); None: do not."""
        self.topics = Topics(cluster.name)
        if not model_specs or len(set(model_specs)) != len(model_specs):
            raise EdgeFlowError(f"models {list(model_specs)}: name one or more, each once")
        for spec in model_specs:
            self.topics.controller("plan", spec)  # refuses a name that cannot be a topic level
        self.broker = broker
        self.cluster = cluster
        self.specs = list(model_specs)
        self.method = method
        self.settle_s = settle_s
        self.deploy_timeout_s = deploy_timeout_s
        self.measured_rates = measured_rates
        self.clock = clock
        self.registry = Registry(cluster)
        self.loads = LoadWatch()
        self.judge = Judge()
        self.models: dict[str, Served] = {}  # by spec, once run() has traced them
        self.rolling: Rolling | None = None  # one rollout at a time, whatever its model
        self._next_generation = 1  # generations are the cluster's: no two plans of any models share one
        self.retained = Retained()  # the nodes' assignments, and the models served that are not ours
        self.instance = uuid.uuid4().hex[:12]
        self.messages: MessageQueue = queue.Queue()
        self.stop_event = threading.Event()
        offline = encode_control(Status(state="offline", instance=self.instance))
        self.conn = Connection(
            broker,
            f"edgeflow-controller-{self.instance}",
            lambda t, p: self.messages.put((t, p)),
            will=(self.topics.controller("status"), offline),
            on_connect=self._on_connect,
        )
        operations = {"replan": self._ask_replan, "status": self._status, "set_method": self._set_method}
        self.dashboard = Dashboard(self.conn, self.topics, operations, homeassistant_prefix, self.specs)

    def _on_connect(self) -> None:
        # At every (re)connect, as if no plan summary: a broker that kept one re-sends it (its blobs);
        # and as if Home Assistant had come online: the broker may have lost the discovery config.
        for spec in self.specs:
            self.messages.put((self.topics.controller("plan", spec), b""))
        if self.dashboard.ha_status:
            self.messages.put((self.dashboard.ha_status, HA_STATUS_ONLINE))

    def run(self) -> int:
        for spec in self.specs:
            model, shape = build_model(spec, None, 0)
            self.models[spec] = Served(spec, trace_model(model, torch.zeros(shape), spec))
        for topic in self.topics.node_feeds([d.id for d in self.cluster.devices], (*NODE_FEEDS, "assignment")):
            self.conn.subscribe(topic, qos=1)
        for spec in self.specs:  # the generation deployed before us
            self.conn.subscribe(self.topics.controller("plan", spec), qos=1)
        self.conn.subscribe(self.topics.latencies, qos=0)
        for topic in self.dashboard.subscriptions():
            self.conn.subscribe(topic, qos=1)
        self.conn.start()
        online = Status(state="online", instance=self.instance, session=1)
        self.conn.publish(self.topics.controller("status"), encode_control(online), qos=1, retain=True)
        log.info("controller for %s on %s: %d nodes in the profile", self.specs, self.topics.root, len(self.cluster))
        try:
            while not self.stop_event.is_set():
                for topic, payload in queued(self.messages, 0.2):  # wills that come together: one plan
                    self._handle(topic, payload)
                for event in self.registry.silence(self.clock()):  # after the queue: nothing unheard
                    self._membership(event.node, [event])
                self._check_rollout()
                now = self.clock()
                due = next((s for s in self.models.values() if s.settled(now, self.settle_s)), None)
                if due is not None and self.rolling is None:  # a rollout in flight finishes (or fails) first
                    self._replan(due)
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
        if isinstance(about, ControllerTopic) and about.leaf == "plan":
            served = self.models.get(about.model)
            info = decode_control(payload, topic, PlanInfo) if payload else None
            if info is None:  # also what a (re)connect of ours puts in the queue: silences count from now
                self.registry.heard_all(self.clock())
            if served is not None:
                served.held = dict(info.blobs) if info is not None else {}
                if info is not None and (served.deployed is None or info.generation > served.deployed.generation):
                    served.deployed = info  # retained from before this controller started
            return
        if isinstance(about, LatencyTopic):
            self._on_latency(decode_control(payload, topic, Latency))
            return
        if not isinstance(about, NodeTopic):
            return
        node = about.node
        if about.leaf == "assignment":  # what it was told to run: carried on for models not rolled out here yet
            work = NodeWork.from_doc(decode(payload, NodeWorkDoc, topic), topic, checked=False) if payload else None
            self.retained.on_assignment(node, work, self.models)
            return
        view = self.registry.views.get(node)
        before = view.info.benchmark if view and view.info else None
        events = self.registry.on_message(about, payload, topic, self.clock())
        after = view.info.benchmark if view and view.info else None
        moved = measurements_moved(before, after) if self.measured_rates and before and after else ""
        if moved:
            self._mark(f"{node} measured itself again: {moved}", only_on=node)
        if view is not None and about.leaf == "assignment/reported" and view.report:
            self.retained.on_report(view.report.models, self.models)
            if self.rolling:
                self.rolling.rollout.on_report(node, view.report)
        if view is not None and about.leaf == "telemetry" and payload and view.telemetry and self.measured_rates:
            self._on_telemetry(node, view.telemetry)
        self._membership(node, events, about.leaf in ("status", "info") or bool(events))

    # -- what dashboards may ask (controller/request/<op>) ----------------------------------------
    def _ask_replan(self, request: Request) -> dict[str, Any]:
        self._mark("asked for over MQTT", debounce=False, due=True)
        return {"generations": {s: m.generation for s, m in self.models.items()}, "nodes": self.registry.live()}

    def _set_method(self, request: Request) -> dict[str, Any]:
        methods = [m for m in METHODS if m != "optimal"]  # as `edgeflow controller --method` offers
        if request.method not in methods:
            raise EdgeFlowError(f"method {request.method!r}: expected one of {', '.join(methods)}")
        before, self.method = self.method, request.method
        if before != self.method:
            self._mark(f"method {before} -> {self.method}, asked for over MQTT", debounce=False, due=True)
        return {"method": self.method, "was": before}

    def _status(self, request: Request) -> dict[str, Any]:
        return {
            "method": self.method,
            "nodes": {d.id: self.registry.views[d.id].state for d in self.cluster.devices},
            "models": {spec: served.summary(self.judge.latencies) for spec, served in self.models.items()},
            "replanning": self.rolling is not None or any(s.dirty_since is not None for s in self.models.values()),
        }

    def _membership(self, node: str, events: list[Event], check: bool = True) -> None:
        """Say ``events``; re-plan (``check``) each model whose live nodes are no longer those planned."""
        for event in events:
            self._event(event.event, event.node, event.detail)
        live = set(self.registry.live())
        for served in self.models.values() if check else ():
            rolling = self.rolling if self.rolling and self.rolling.rollout.model == served.spec else None
            target = rolling.rollout.nodes if rolling else served.planned_nodes
            if live != set(target):
                change = events[-1].event if events else "ready"
                self._mark(f"{node} {change}", served, due=change == "left" and node in target)

    def _on_telemetry(self, node: str, telemetry: Telemetry) -> None:
        now = self.clock()
        device = next(d for d in self.cluster.devices if d.id == node)
        fit = self.judge.observe(node, telemetry, reference_device(device, self.registry.views[node]), now)
        planned = [s for s in self.models.values() if s.live is not None and node in s.live.rollout.nodes]
        if fit is None or not planned:
            load = others_load(telemetry)
            if self.loads.observe(node, load):
                self._mark(f"load of {node} moved to {load:.0%}", debounce=False, only_on=node)
            return
        if not telemetry.unit_s:
            return
        fitted = self.judge.learner.device(node, now)
        for served in planned:
            live = served.live
            assert live is not None
            index = live.rollout.nodes.index(node)
            ratio = slowdown(live.planned.plan, served.graph, index, live.cluster.devices[index], fitted)
            if served.speeds.observe(node, math.log(ratio)):
                said = f"{node} runs its units {ratio:.2f}x the planned time"
                self._mark(said, served, debounce=False, fresh=served.alone.outdated_by(ratio))
            self._publish_costs(served)

    def _on_latency(self, report: Latency) -> None:
        served = next((s for s in self.models.values() if s.generation == report.generation >= 0), None)
        if served is None or served.live is None:
            return
        if not 0 < report.ms < 3.6e6:  # a requester's clock or a forged report: not a latency
            log.warning("ignored latency report %s of %r ms", report.request, report.ms)
            return
        self.judge.latencies.add(report.generation, report.ms)
        measured, count = self.judge.latencies.median(report.generation)
        fitted = self._fitted()
        if (
            count >= _JUDGE_REQUESTS
            and served.judged != report.generation
            and self.judge.all_fitted(served.live, fitted)
        ):
            served.judged = report.generation
            now = self.registry.live_cluster(self.measured_rates, fitted)
            judged, said = self.judge.judge(served, now, measured / 1e3, count)
            if not self._try_alone(served, measured) and judged:
                self._event(judged, detail=said, served=served)
                why = "slower than a single device" if judged == "slower-than-single" else "the prediction was off"
                self._mark(why, served, debounce=False, fresh=False)
        self._publish_costs(served)

    def _try_alone(self, served: Served, measured_ms: float) -> bool:
        """The trial of one device against a split (:mod:`controller.control.alone`) on the live
        generation's median; whether it said anything (then the judgement waits)."""
        assert served.live is not None
        if self.method not in TRIED_FOR:
            return False
        step = served.alone.judge(
            served.live.planned.plan, served.live.rollout.nodes, served.single, measured_ms, self.clock()
        )
        if step is not None:
            self._event(step.event, step.node, step.detail, served)
            if step.replan:
                self._mark(step.replan, served, debounce=False, due=True, fresh=False)
        return step is not None

    def _fitted(self) -> dict[str, Device]:
        return self.judge.fitted(self.registry.live(), self.clock())

    def _publish_costs(self, served: Served) -> None:
        """Retained ``controller/costs/<model>`` (see :class:`~edgeflowd.wire.messages.Costs`)."""
        cluster = self.registry.live_cluster(self.measured_rates, self._fitted() if self.measured_rates else None)
        rolling = self.rolling is not None and self.rolling.rollout.model == served.spec
        report = self.judge.costs(served, cluster, self.measured_rates, self.clock(), rolling)
        if report is not None:
            topic = self.topics.controller("costs", served.spec)
            self.conn.publish(topic, encode_control(report), qos=1, retain=True)

    def _mark(
        self,
        reason: str,
        served: Served | None = None,
        debounce: bool = True,
        due: bool = False,
        only_on: str = "",
        fresh: bool = True,
    ) -> None:
        """Ask for a re-plan of ``served`` (None: of every model; ``only_on``: of every model
        planned on that node) ``settle_s`` from now; membership changes (``debounce``) push it back
        so a burst costs one plan, periodic load reports must not. ``due``: at once (a planned node
        left: every request fails until a plan without it is live). ``fresh``: the conditions
        changed, so what was measured of one device alone against the split no longer holds."""
        chosen = [served] if served is not None else list(self.models.values())
        for model in chosen:
            if not only_on or only_on in model.planned_nodes:
                model.mark(reason, self.clock(), debounce, due, self.settle_s)
                if fresh:
                    model.alone.reset()

    def _event(self, event: str, node: str = "", detail: str = "", served: Served | None = None) -> None:
        log.info("event %s %s %s %s", event, served.spec if served else "", node, detail)
        generation, model = (served.generation, served.spec) if served else (-1, "")
        message = ControllerEvent(event=event, node=node, detail=detail, generation=generation, model=model)
        self.conn.publish(self.topics.controller("event"), encode_control(message), qos=1)

    def _replan(self, served: Served) -> None:
        """Plan ``served`` for the live nodes and start rolling the plan out on this connection;
        the nodes' reports arrive as events (:meth:`_check_rollout`), nothing here waits for them."""
        reason, served.dirty_since = served.reason, None
        live_nodes = self.registry.live()
        if not live_nodes:
            self._event("idle", detail="no live node to plan with", served=served)
            served.planned_nodes = []
            return
        start = self.clock()
        fitted = self._fitted() if self.measured_rates else None
        others = [s for s in self.models.values() if s is not served]
        base = memory_left(self.registry.live_cluster(self.measured_rates, fitted), others)
        cluster = with_message_work(base, self.judge.message_flop)
        alone = served.alone.planned_on(live_nodes)
        try:
            if alone:
                partition = single_on(served.graph, cluster, live_nodes.index(alone))
                planned = plan_partition(served.graph, cluster, "single", partition, deployable=True)
            else:
                planned = plan_model(served.graph, cluster, self.method, deployable=True)
        except EdgeFlowError as exc:
            self._failed(served, reason, str(exc))
            return
        live = served.live
        # The nodes run the live plan (no failed rollout since): a new one must beat it (keep_live),
        # unless it was made by another method than the one asked for now.
        running = live is not None and live.rollout.nodes == live_nodes and live.planned.method == planned.method
        kept = keep_live(live.planned, planned, served.graph, cluster) if live and running else None
        if live is not None and kept is not None and served.published == live.rollout.generation:
            served.live = dataclasses.replace(live, cluster=cluster, planned=kept, base=base)
            self._baselines(served)
            said = f"the live plan is predicted {kept.latency_s * 1e3:.1f} ms, a new one {planned.latency_s * 1e3:.1f}"
            self._event("kept", detail=f"{reason}: {said}", served=served)
            self._publish_costs(served)
            return
        try:
            generation = self._generation()
            part_bytes = self.conn.max_packet - FRAME_HEADER_BYTES
            deployment = make_deployment(
                planned.plan, served.graph, live_nodes, generation, planned.method, part_bytes, planned.timeline
            )
        except EdgeFlowError as exc:
            self._failed(served, reason, str(exc))
            return
        self._next_generation = generation + 1  # never hand out a generation twice, failed or not
        for publication in rollout_messages(self.topics, deployment, served.held, self._works()):
            self.conn.publish(publication.topic, publication.payload, qos=1, retain=True)
        served.published = generation
        rollout = Rollout(deployment, self.clock(), self.deploy_timeout_s)  # its clock starts once published
        self.rolling = Rolling(rollout, reason, cluster, planned, start, base)

    def _works(self) -> dict[str, NodeWork]:
        """What a rollout carries on for the other models (:func:`live_works`)."""
        serves = {n: v.report.models for n, v in self.registry.views.items() if v.report}
        return live_works(self.models.values(), running_works(self.retained.assigned, serves))

    def _generation(self) -> int:
        """The next generation: above every one the broker or a node has said, of any model."""
        reported = max((v.report.generation for v in self.registry.views.values() if v.report), default=0)
        deployed = max((s.deployed.generation for s in self.models.values() if s.deployed), default=0)
        return max(self._next_generation, deployed + 1, reported + 1)

    def _check_rollout(self) -> None:
        rolling = self.rolling
        if rolling is None:
            return
        served = self.models[rolling.rollout.model]
        offline = [n for n in rolling.rollout.nodes if not self.registry.views[n].reachable]
        failure = rolling.rollout.failure(self.clock(), offline)
        if failure:
            self.rolling = None
            self._failed(served, rolling.reason, failure, 0.0 if offline else _RETRY_S)  # offline: plan around it now
            return
        if not rolling.rollout.ready:
            return
        self.rolling = None
        deployment = rolling.rollout.deployment
        others = [d.id for d in self.cluster.devices]
        admits = rolling.rollout.admits
        # Blobs the other models' summaries name stay, whatever those plans are now: a summary says
        # what the broker holds, and its model's next rollout would not publish them again.
        keep = {sha for s in self.models.values() if s is not served for sha in s.named_blobs()}
        works = self._works()
        for publication in completion_messages(self.topics, deployment, served.deployed, others, admits, works, keep):
            self.conn.publish(publication.topic, publication.payload, qos=1, retain=True)
        # The nodes run only this controller's models now: requesters of any other must not wait on them.
        foreign, foreign_blobs = self.retained.retire()
        for model in foreign:
            for leaf in MODEL_LEAVES:
                self.conn.publish(self.topics.controller(leaf, model), b"", qos=1, retain=True)
            self._event("retired", detail=f"{model}: not served by this controller; its plan summary cleared")
        used = {*deployment.blobs, *(sha for s in self.models.values() for sha in s.named_blobs())}
        for publication in cleared_blobs(self.topics, foreign_blobs, used):  # and its weights
            self.conn.publish(publication.topic, publication.payload, qos=1, retain=True)
        info = served.deployed = deployment.info
        served.held = dict(info.blobs)  # what the broker holds now, before its echo of the summary
        served.planned_nodes = rolling.rollout.nodes
        live = {s.generation for s in self.models.values()}
        self.judge.learner.add_plan(info.generation, rolling.planned.plan, served.graph, served.planned_nodes, live)
        served.live = rolling
        self._baselines(served)
        self._publish_costs(served)
        self._event("replanned", detail=rolling.summary(self.clock()), served=served)

    def _baselines(self, served: Served) -> None:
        """What the watches and the safeguard compare with from now on: the model ``served``'s
        live plan was planned with."""
        live = served.live
        assert live is not None
        self.loads.planned_with({d.id: d.load for d in live.cluster.devices})
        served.speeds.planned_with(dict.fromkeys(live.rollout.nodes, 0.0))
        served.single = best_single(served.graph, live.cluster)

    def _failed(self, served: Served, reason: str, error: str, retry_s: float = _RETRY_S) -> None:
        self._event("replan-failed", detail=error, served=served)
        served.dirty_since, served.reason = self.clock() - self.settle_s + retry_s, reason
