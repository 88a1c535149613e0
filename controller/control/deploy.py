"""``edgeflow deploy``: a plan published on a connection of its own. Everything is retained, so a
node that restarts finds its work on the broker without a new deploy.

:func:`publish_deployment` applies :mod:`controller.control.rollout`'s messages in their order
(blobs, then assignments), waits until every node reports the generation ready, and only then
publishes the plan summary that requesters read, so no request is sent to a plan that is not live.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from controller.control.deployment import Deployment, make_deployment
from controller.control.rollout import Rollout, completion_messages, rollout_messages
from controller.graph.layers import LayerGraph
from controller.planner.methods import Planned
from edgeflowd.core.sizes import FRAME_HEADER_BYTES
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue, listen, received
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.wire.assignment import NodeWorkDoc
from edgeflowd.wire.messages import AssignmentReport, PlanInfo, decode_control
from edgeflowd.wire.schema import decode
from edgeflowd.wire.topics import ControllerTopic, NodeTopic, Topics

__all__ = ["DeployError", "current_plan", "deploy_plan", "held_generations", "publish_deployment"]

log = logging.getLogger(__name__)


class DeployError(EdgeFlowError):
    """Some node did not take the new generation."""


def deploy_plan(
    broker: BrokerSettings,
    cluster: str,
    planned: Planned,
    graph: LayerGraph,
    nodes: Sequence[str],
    timeout_s: float,
    progress: Callable[[str], None] = lambda line: None,
) -> PlanInfo:
    """Connect, pick the next generation, publish ``planned`` to ``nodes`` under topic root
    ``cluster`` and wait until it is live; returns the published plan summary."""
    topics = Topics(cluster)
    feeds = [topics.controller("plan"), topics.reports, topics.node_filter("assignment")]
    conn, messages = listen(broker, "edgeflow-deploy", feeds)
    try:
        previous, newest = held_generations(topics, messages, wait_s=1.0)
        generation = newest + 1
        deployment = make_deployment(
            planned.plan,
            graph,
            nodes,
            generation,
            planned.method,
            conn.max_packet - FRAME_HEADER_BYTES,
            planned.timeline,
        )
        progress(f"deploying generation {generation} to {topics.root}/ on {conn.broker}")
        publish_deployment(conn, topics, deployment, messages, timeout_s, previous, progress=progress)
    finally:
        conn.stop()
    return deployment.info


def held_generations(topics: Topics, messages: MessageQueue, wait_s: float) -> tuple[PlanInfo | None, int]:
    """The retained plan summary, and the newest generation the broker holds anywhere: in the
    plan, in a node's assignment or in its report. A rollout that never completed (a controller
    stopped in the middle of one) leaves assignments of a generation no plan summary names; a
    generation must never be handed out twice, or a node keeps the first one's units under the
    second one's name."""
    plan, newest = None, 0
    for topic, payload in received(messages, wait_s):
        if not payload:
            continue
        try:
            about = topics.parse(topic)
            if about == ControllerTopic("plan"):
                plan = decode_control(payload, topic, PlanInfo)
                newest = max(newest, plan.generation)
            elif isinstance(about, NodeTopic) and about.leaf == "assignment/reported":
                newest = max(newest, decode_control(payload, topic, AssignmentReport).generation)
            elif isinstance(about, NodeTopic) and about.leaf == "assignment":
                newest = max(newest, *(p.generation for p in decode(payload, NodeWorkDoc, topic).plans))
        except ProtocolError as exc:
            log.warning("ignored: %s", exc)
    return plan, newest


def current_plan(topics: Topics, messages: MessageQueue, wait_s: float) -> PlanInfo | None:
    """The retained plan summary, if the broker holds one (the connection feeding ``messages`` must
    be subscribed to it); waits at most ``wait_s`` for it."""
    for topic, payload in received(messages, wait_s):
        if topic == topics.controller("plan") and payload:
            return decode_control(payload, topic, PlanInfo)
    return None


def publish_deployment(
    conn: Connection,
    topics: Topics,
    deployment: Deployment,
    reports: MessageQueue,
    timeout_s: float,
    previous: PlanInfo | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, AssignmentReport]:
    """Publish and wait for every node's report. ``reports`` must receive the messages of
    ``node/+/assignment/reported``; raises :class:`DeployError` naming each node that failed."""
    blobs = len(deployment.blobs)
    kept = sum(1 for sha in deployment.blobs if previous is not None and sha in previous.blobs)
    progress(
        f"weights: {blobs} blobs ({deployment.blob_bytes / 2**20:.1f} MiB in all)"
        + (f", {kept} already on the broker" if kept else "")
    )
    held = previous.blobs if previous is not None else {}  # what the broker holds now: read just before
    for publication in rollout_messages(topics, deployment, held):
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
    for publication in completion_messages(topics, deployment, previous, admits=waiting.admits):
        conn.publish_wait(publication.topic, publication.payload, timeout_s=timeout_s, retain=True)
    return waiting.reports
