"""Deployments as values: one assignment per node, each weight once as a content-addressed blob,
and the plan summary requesters read. Pure; :mod:`controller.control.rollout` turns one into
messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controller.graph.layers import LayerGraph
from controller.planner.placement import refuse_unpluggable
from controller.planner.plan import Plan
from controller.planner.simulate import Timeline
from edgeflowd.core.units import CLIENT, SINK
from edgeflowd.errors import PlanError
from edgeflowd.wire.assignment import Assignment, BlobRef, blob_of
from edgeflowd.wire.frames import FrameKeys
from edgeflowd.wire.messages import Interval, Output, PlanInfo, Sender, TimelineDoc
from edgeflowd.wire.units import unit_doc

__all__ = ["Deployment", "generation_of", "make_deployment", "plan_id"]


def plan_id(generation: int) -> str:
    """The plan id of ``generation``: the topic level of its data plane."""
    return f"g{generation}"


def generation_of(plan: str) -> int:
    """The generation a plan id names (-1: not one of ours)."""
    digits = plan[1:]
    return int(digits) if plan.startswith("g") and digits.isdigit() else -1


@dataclass(frozen=True)
class Deployment:
    info: PlanInfo
    assignments: dict[str, Assignment]
    blobs: dict[str, tuple[BlobRef, bytes]]
    timeline: TimelineDoc | None = None  # the simulator's, published as controller/timeline

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
    predicted: Timeline | None = None,
) -> Deployment:
    """Assignments for ``nodes[d]`` = plan device ``d``; weights cut into ``part_bytes`` parts;
    ``predicted``: the simulator's timeline of the plan, published beside it."""
    if plan.n_devices != len(nodes):
        raise PlanError(f"plan is for {plan.n_devices} devices, the cluster has {len(nodes)} nodes")
    for unit in plan.units:  # plans made deployable place plugin ops; nothing places these
        refuse_unpluggable(unit.layer, [op.target for op in unit.ops if not op.portable])
    pid = plan_id(generation)
    blobs: dict[str, tuple[BlobRef, bytes]] = {}
    refs: dict[str, BlobRef] = {}
    for name in sorted({n for u in plan.units for n in u.const_names()}):
        ref, raw = blob_of(graph.tensors[name], part_bytes, name)
        refs[name] = ref
        blobs.setdefault(ref.sha256, (ref, raw))
    clients = plan.on_device(CLIENT)
    if len(clients) != 1:
        raise PlanError(f"plan has {len(clients)} inputs; requests carry exactly one")
    keys = FrameKeys.fresh(clients[0].uid)  # every deployment its own: a new generation, new keys
    assignments = {}
    for device, node in enumerate(nodes):
        units = tuple(plan.on_device(device))
        weights = {n: refs[n] for u in units for n in u.const_names()}
        assignments[node] = Assignment(generation, pid, plan.model, node, device, units, weights, keys)
    sources = [unit_doc(u) for u in clients]
    outputs = [Output(name, graph[name].out_shape, _senders(plan, name, nodes)) for name in plan.outputs]
    source_shape = graph.sources[0].out_shape if graph.sources else ()
    info = PlanInfo(
        generation=generation,
        plan=pid,
        model=plan.model,
        method=method,
        input_shape=list(source_shape),
        nodes=list(nodes),
        sources=sources,
        outputs=outputs,
        epilogue=[unit_doc(u) for u in plan.epilogue],
        results=list(plan.results),
        predicted_ms=predicted.latency_s * 1e3 if predicted else 0.0,
        blobs={sha: ref.parts for sha, (ref, _) in blobs.items()},
        request_key=keys.request.hex(),
    )
    timeline = None
    if predicted is not None:
        names = {CLIENT: "client", **dict(enumerate(nodes))}
        bars = [
            Interval(names[i.device], i.resource, round(i.start * 1e3, 3), round(i.end * 1e3, 3), i.label)
            for i in predicted.intervals
        ]
        timeline = TimelineDoc(generation, round(predicted.latency_s * 1e3, 3), bars)
    return Deployment(info, assignments, blobs, timeline)


def _senders(plan: Plan, layer: str, nodes: Sequence[str]) -> list[Sender]:
    """Which node sends which rows of output ``layer`` to the requester."""
    return [
        Sender(nodes[u.device], u.uid, (f.rows.start, f.rows.stop))
        for u in plan.units
        if u.layer == layer and u.device != CLIENT
        for f in u.forwards
        if f.consumer == SINK
    ]
