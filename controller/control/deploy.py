"""``edgeflow deploy``: plans published on a connection of their own. Everything is retained, so a
node that restarts finds its work on the broker without a new deploy. A deploy names every model
the cluster serves from then on (``--model A --model B``): each gets its own plan and generation,
rolled out one after another, each node's one assignment carrying all of them; a model the nodes
served before and the deploy leaves out is taken off them, and its plan summary cleared.

:func:`publish_deployment` applies :mod:`controller.control.rollout`'s messages in their order
(blobs, then assignments), waits until every node reports the generation ready, and only then
publishes the plan summary that requesters read, so no request is sent to a plan that is not live.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.control.deployment import Deployment, make_deployment
from controller.control.rollout import (
    Publication,
    Rollout,
    cleared_blobs,
    completion_messages,
    rollout_messages,
    works_with,
)
from controller.graph.layers import LayerGraph
from controller.planner.methods import Planned
from edgeflowd.core.sizes import FRAME_HEADER_BYTES
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue, listen, received
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.wire.assignment import NodeWork, NodeWorkDoc
from edgeflowd.wire.messages import AssignmentReport, PlanInfo, decode_control
from edgeflowd.wire.schema import decode
from edgeflowd.wire.topics import MODEL_LEAVES, ControllerTopic, NodeTopic, Topics

__all__ = ["DeployError", "Held", "current_plan", "deploy_plans", "held_state", "publish_deployment"]

log = logging.getLogger(__name__)


class DeployError(EdgeFlowError):
    """Some node did not take the new generation."""


def deploy_plans(
    broker: BrokerSettings,
    cluster: str,
    plans: Sequence[tuple[Planned, LayerGraph]],
    nodes: Sequence[str],
    timeout_s: float,
    progress: Callable[[str], None] = lambda line: None,
) -> list[PlanInfo]:
    """Connect, publish each model's plan to ``nodes`` under topic root ``cluster``, a generation
    each, and wait until each is live; then take every other model off the nodes. Returns the
    published plan summaries."""
    topics = Topics(cluster)
    models = [planned.plan.model for planned, _ in plans]
    exact = [topics.node(n, "assignment") for n in nodes]  # what the nodes run now, on any broker
    summaries = [topics.controller("plan", m) for m in models]
    conn, messages = listen(
        broker, "edgeflow-deploy", [*summaries, topics.reports, topics.node_filter("assignment"), *exact]
    )
    try:
        held = held_state(topics, models, messages, wait_s=1.0)
        on_broker = {sha: parts for plan in held.plans.values() for sha, parts in plan.blobs.items()}
        # The nodes' work from now on: the models deployed here only, each keeping its plan until
        # its new one replaces it (a model left out is dropped with the first rollout).
        works = {n: NodeWork(n, {m: a for m, a in w.plans.items() if m in models}) for n, w in held.works.items()}
        infos = []
        for generation, (planned, graph) in enumerate(plans, start=held.newest + 1):
            part_bytes = conn.max_packet - FRAME_HEADER_BYTES
            deployment = make_deployment(
                planned.plan, graph, nodes, generation, planned.method, part_bytes, planned.timeline
            )
            progress(f"deploying {deployment.info.model} as generation {generation} to {topics.root}/ on {conn.broker}")
            publish_deployment(conn, topics, deployment, messages, timeout_s, on_broker, progress, works)
            works.update(works_with(deployment, works))
            on_broker.update(deployment.info.blobs)
            infos.append(deployment.info)
        for publication in retired_messages(topics, held, infos):
            conn.publish_wait(publication.topic, publication.payload, timeout_s=timeout_s, retain=True)
    finally:
        conn.stop()
    return infos


def retired_messages(topics: Topics, held: Held, deployed: Sequence[PlanInfo]) -> list[Publication]:
    """What a deploy clears once its plans are live: the summaries (and timelines, cost models) of
    the models the nodes served before and the deploy left out, and every blob of the plans it
    replaced that no new plan uses (they would otherwise stay retained forever)."""
    models = {info.model for info in deployed}
    retired = {m for work in held.works.values() for m in work.plans} - models
    out = [Publication(topics.controller(leaf, m), b"") for m in sorted(retired) for leaf in MODEL_LEAVES]
    old = {sha: parts for plan in held.plans.values() for sha, parts in plan.blobs.items()}
    for work in held.works.values():
        for model, assignment in work.plans.items():
            old.update({ref.sha256: ref.parts for ref in assignment.weights.values()} if model in retired else {})
    out += cleared_blobs(topics, old, {sha for info in deployed for sha in info.blobs})
    return out


@dataclass
class Held:
    """What the broker holds before a deploy."""

    plans: dict[str, PlanInfo] = field(default_factory=dict)  # the deployed models' retained summaries
    newest: int = 0  # the newest generation anywhere, of any model
    works: dict[str, NodeWork] = field(default_factory=dict)  # each node's retained assignment


def held_state(topics: Topics, models: Sequence[str], messages: MessageQueue, wait_s: float) -> Held:
    """The retained plan summaries of ``models``, every node's retained work and the newest generation
    the broker holds anywhere: in the plan, in a node's assignment or in its report. A rollout
    that never completed (a controller stopped in the middle of one) leaves assignments of a
    generation no plan summary names; a generation must never be handed out twice, or a node
    keeps the first one's units under the second one's name."""
    held = Held()
    for topic, payload in received(messages, wait_s):
        if not payload:
            continue
        try:
            about = topics.parse(topic)
            if isinstance(about, ControllerTopic) and about.leaf == "plan" and about.model in models:
                plan = held.plans[about.model] = decode_control(payload, topic, PlanInfo)
                held.newest = max(held.newest, plan.generation)
            elif isinstance(about, NodeTopic) and about.leaf == "assignment/reported":
                held.newest = max(held.newest, decode_control(payload, topic, AssignmentReport).generation)
            elif isinstance(about, NodeTopic) and about.leaf == "assignment":
                # What the deployer reads of it (the models, their blobs) needs no op checked: nodes do that.
                work = NodeWork.from_doc(decode(payload, NodeWorkDoc, topic), topic, checked=False)
                held.works[about.node] = work
                held.newest = max(held.newest, work.generation)
        except ProtocolError as exc:
            log.warning("ignored: %s", exc)
    return held


def current_plan(topics: Topics, model: str, messages: MessageQueue, wait_s: float) -> PlanInfo | None:
    """The retained plan summary of ``model``, if the broker holds one (the connection feeding
    ``messages`` must be subscribed to it); waits at most ``wait_s`` for it."""
    for topic, payload in received(messages, wait_s):
        if topic == topics.controller("plan", model) and payload:
            return decode_control(payload, topic, PlanInfo)
    return None


def publish_deployment(
    conn: Connection,
    topics: Topics,
    deployment: Deployment,
    reports: MessageQueue,
    timeout_s: float,
    on_broker: Mapping[str, int] | None = None,
    progress: Callable[[str], None] = lambda line: None,
    works: Mapping[str, NodeWork] | None = None,
) -> dict[str, AssignmentReport]:
    """Publish and wait for every node's report. ``reports`` must receive the messages of
    ``node/+/assignment/reported``; raises :class:`DeployError` naming each node that failed.
    ``on_broker``: the blobs (sha256 -> parts) the broker holds, read just before; ``works``: each
    node's work, whose other models' plans its new assignment carries on."""
    on_broker = on_broker or {}
    kept = sum(1 for sha, (ref, _) in deployment.blobs.items() if on_broker.get(sha) == ref.parts)
    progress(
        f"weights: {len(deployment.blobs)} blobs ({deployment.blob_bytes / 2**20:.1f} MiB in all)"
        + (f", {kept} already on the broker" if kept else "")
    )
    for publication in rollout_messages(topics, deployment, on_broker, works):
        conn.publish_wait(publication.topic, publication.payload, timeout_s=timeout_s, retain=True)
    generation = deployment.info.generation
    progress(f"generation {generation}: assignments published to {len(deployment.assignments)} nodes")
    waiting = Rollout(deployment, time.monotonic(), timeout_s)
    for topic, payload in received(reports, timeout_s):
        try:
            about = topics.parse(topic)
            if isinstance(about, NodeTopic) and about.leaf == "assignment/reported" and payload:
                report = decode_control(payload, topic, AssignmentReport)
                if report.generation == generation and about.node in waiting.nodes:
                    progress(f"  {about.node}: {report.state}" + (f" ({report.error})" if report.error else ""))
                waiting.on_report(about.node, report)
        except ProtocolError as exc:
            log.warning("ignored: %s", exc)
        if waiting.ready or waiting.failure(time.monotonic()):
            break
    failure = "" if waiting.ready else waiting.failure(float("inf"))
    if failure:
        raise DeployError(failure)
    for publication in completion_messages(topics, deployment, None, admits=waiting.admits):
        conn.publish_wait(publication.topic, publication.payload, timeout_s=timeout_s, retain=True)
    return waiting.reports
