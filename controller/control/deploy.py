"""Deploying a plan: one assignment per node, each weight once as a content-addressed blob, all
retained, so a node that restarts finds its work on the broker without a new deploy.

:func:`make_deployment` is pure; :func:`publish_deployment` does the I/O in a fixed order: blobs,
then assignments, then it waits until every node reports the generation ready, and only then
publishes the plan summary that requesters read, so no request is sent to a plan that is not live.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.graph.layers import LayerGraph
from controller.planner.methods import Planned
from controller.planner.plan import Plan
from edgeflowd.core.sizes import FRAME_HEADER_BYTES
from edgeflowd.core.units import CLIENT
from edgeflowd.errors import EdgeFlowError, PlanError, ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue, listen, received
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.wire.assignment import Assignment, BlobRef, blob_of, split_blob
from edgeflowd.wire.messages import AssignmentReport, PlanInfo, decode_control, encode_control
from edgeflowd.wire.topics import NodeTopic, Topics

__all__ = ["DeployError", "Deployment", "current_plan", "deploy_plan", "make_deployment", "publish_deployment"]

log = logging.getLogger(__name__)


class DeployError(EdgeFlowError):
    """Some node did not take the new generation."""


@dataclass(frozen=True)
class Deployment:
    info: PlanInfo
    assignments: dict[str, Assignment]
    blobs: dict[str, tuple[BlobRef, bytes]]

    @property
    def blob_bytes(self) -> int:
        return sum(ref.nbytes for ref, _ in self.blobs.values())


def make_deployment(
    plan: Plan,
    graph: LayerGraph,
    nodes: Sequence[str],
    generation: int,
    method: str,
    part_bytes: int,
    predicted_ms: float = 0.0,
) -> Deployment:
    """Assignments for ``nodes[d]`` = plan device ``d``; weights cut into ``part_bytes`` parts."""
    if plan.n_devices != len(nodes):
        raise PlanError(f"plan is for {plan.n_devices} devices, the cluster has {len(nodes)} nodes")
    for unit in plan.units:
        local = [op.target for op in unit.ops if not op.portable]
        if local and unit.device != CLIENT:
            raise PlanError(
                f"layer {unit.layer} uses {local[0]}, which only this process can run (not an op the daemons "
                "know); such models run with `edgeflow verify`, not on a cluster"
            )
    plan_id = f"g{generation}"
    blobs: dict[str, tuple[BlobRef, bytes]] = {}
    refs: dict[str, BlobRef] = {}
    for name in sorted({n for u in plan.units for n in u.const_names()}):
        ref, raw = blob_of(graph.tensors[name], part_bytes, name)
        refs[name] = ref
        blobs.setdefault(ref.sha256, (ref, raw))
    assignments = {}
    for device, node in enumerate(nodes):
        units = tuple(plan.on_device(device))
        weights = {n: refs[n] for u in units for n in u.const_names()}
        assignments[node] = Assignment(generation, plan_id, plan.model, node, device, units, weights)
    sources = [u.to_json() for u in plan.on_device(CLIENT)]
    outputs = [{"layer": name, "shape": list(graph[name].out_shape)} for name in plan.outputs]
    source_shape = graph.sources[0].out_shape if graph.sources else ()
    info = PlanInfo(
        generation=generation,
        plan=plan_id,
        model=plan.model,
        method=method,
        input_shape=list(source_shape),
        nodes=list(nodes),
        sources=sources,
        outputs=outputs,
        predicted_ms=predicted_ms,
        blobs={sha: ref.parts for sha, (ref, _) in blobs.items()},
    )
    return Deployment(info, assignments, blobs)


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
    conn, inbox = listen(broker, "edgeflow-deploy", [topics.controller("plan"), topics.reports])
    try:
        previous = current_plan(topics, inbox, wait_s=1.0)
        generation = previous.generation + 1 if previous else 1
        deployment = make_deployment(
            planned.plan,
            graph,
            nodes,
            generation,
            planned.method,
            conn.max_packet - FRAME_HEADER_BYTES,
            planned.latency_s * 1e3,
        )
        progress(f"deploying generation {generation} to {topics.root}/ on {conn.broker}")
        publish_deployment(conn, topics, deployment, inbox, timeout_s, previous, progress=progress)
    finally:
        conn.stop()
    return deployment.info


def current_plan(topics: Topics, inbox: MessageQueue, wait_s: float) -> PlanInfo | None:
    """The retained plan summary, if the broker holds one (the connection feeding ``inbox`` must
    be subscribed to it); waits at most ``wait_s`` for it."""
    for topic, payload in received(inbox, wait_s):
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
    total = len(deployment.blobs)
    for i, (sha, (ref, raw)) in enumerate(sorted(deployment.blobs.items()), 1):
        for part, payload in enumerate(split_blob(raw, ref)):
            conn.publish_wait(topics.blob(sha, part), payload, timeout_s=timeout_s, retain=True)
        if i == total or i % max(1, total // 4) == 0:
            progress(f"weights: {i}/{total} blobs published ({deployment.blob_bytes / 2**20:.1f} MiB in all)")
    generation = deployment.info.generation
    for node, assignment in deployment.assignments.items():
        conn.publish_wait(topics.node(node, "assignment"), assignment.to_bytes(), timeout_s=timeout_s, retain=True)
    progress(f"generation {generation}: assignments published to {len(deployment.assignments)} nodes")
    got = _await_reports(topics, reports, set(deployment.assignments), generation, timeout_s, progress)
    failed = {n: r for n, r in got.items() if r.state != "ready"}
    missing = sorted(set(deployment.assignments) - set(got))
    if failed or missing:
        lines = [f"{n}: {r.error}" for n, r in sorted(failed.items())]
        lines += [f"{n}: no report within {timeout_s:g} s (is its edgeflowd running?)" for n in missing]
        raise DeployError(f"generation {generation} is not ready on every node:\n  " + "\n  ".join(lines))
    conn.publish_wait(topics.controller("plan"), encode_control(deployment.info), timeout_s=timeout_s, retain=True)
    if previous is not None:  # blobs only the superseded plan used would otherwise stay retained forever
        for sha, parts in previous.blobs.items():
            if sha not in deployment.blobs:
                for part in range(parts):
                    conn.publish(topics.blob(sha, part), b"", qos=1, retain=True)
    return got


def _await_reports(
    topics: Topics,
    reports: MessageQueue,
    nodes: set[str],
    generation: int,
    timeout_s: float,
    progress: Callable[[str], None],
) -> dict[str, AssignmentReport]:
    got: dict[str, AssignmentReport] = {}
    deadline = time.monotonic() + timeout_s
    while set(got) != nodes and (left := deadline - time.monotonic()) > 0:
        try:
            topic, payload = reports.get(timeout=left)
        except queue.Empty:
            break
        try:
            about = topics.parse(topic)
            if not isinstance(about, NodeTopic) or about.leaf != "assignment/reported" or about.node not in nodes:
                continue
            report = decode_control(payload, topic, AssignmentReport)
        except ProtocolError as exc:
            log.warning("ignored: %s", exc)
            continue
        if report.generation == generation:
            got[about.node] = report
            progress(f"  {about.node}: {report.state}" + (f" ({report.error})" if report.error else ""))
    return got
