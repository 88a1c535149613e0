"""One model the controller serves: its graph and what it knows of its plans (the live one, the
one the broker holds, whether a re-plan is due). The controller keeps one per ``--model`` and
plans them one at a time on the same nodes (:mod:`controller.control.service`). Pure state."""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.control.alone import Alone
from controller.control.learning import LatencyBook
from controller.control.registry import LoadWatch
from controller.control.rollout import Rolling
from controller.graph.layers import LayerGraph
from controller.planner.methods.evaluate import less_memory, memory_used
from edgeflowd.profiles.devices import Cluster
from edgeflowd.wire.assignment import Assignment, NodeWork
from edgeflowd.wire.messages import PlanInfo

__all__ = ["SPEED_DRIFT", "Retained", "Served", "live_works", "memory_left", "running_works"]

SPEED_DRIFT = math.log(1.5)  # a node's fitted unit times this far from the plan's: re-plan


@dataclass
class Served:
    """``spec``: the model as ``--model`` names it (its plan's ``model``, a topic level)."""

    spec: str
    graph: LayerGraph
    speeds: LoadWatch = field(default_factory=lambda: LoadWatch(SPEED_DRIFT, samples=3))
    live: Rolling | None = None  # the deployed generation, as it was planned
    deployed: PlanInfo | None = None  # the live plan's summary: retained at start, then our own
    held: dict[str, int] = field(default_factory=dict)  # blobs of the summary the broker holds
    single: tuple[str, float] = ("", 0.0)  # best single device and its predicted latency
    judged: int = -1  # the generation last judged against the single device
    alone: Alone = field(default_factory=Alone)  # the trial of the best single device against a split
    published: int = -1  # the generation whose assignments were published last (failed or not)
    dirty_since: float | None = None  # a re-plan is due settle_s after this
    reason: str = "start"
    planned_nodes: list[str] = field(default_factory=list)  # the live plan's (none while idle)

    @property
    def generation(self) -> int:
        """The live generation (-1: none yet)."""
        return self.live.rollout.generation if self.live else -1

    def mark(self, reason: str, now: float, debounce: bool, due: bool, settle_s: float) -> None:
        """Ask for a re-plan ``settle_s`` after ``now``; ``debounce`` pushes a pending one back,
        so a burst costs one plan; ``due``: at once."""
        if self.dirty_since is None:
            self.reason = reason
        if self.dirty_since is None or debounce:
            self.dirty_since = now - (settle_s if due else 0.0)

    def settled(self, now: float, settle_s: float) -> bool:
        return self.dirty_since is not None and now - self.dirty_since >= settle_s

    def named_blobs(self) -> set[str]:
        """The blobs its summaries name (the broker's, and its own last): the broker holds them,
        and its next rollout would not publish them again."""
        return {*self.held, *(self.deployed.blobs if self.deployed else ())}

    def summary(self, latencies: LatencyBook) -> dict[str, Any]:
        """Its live plan as the controller's ``status`` answer says it."""
        plan = self.deployed
        measured, requests = latencies.median(plan.generation) if plan else (0.0, 0)
        return {
            "plan": plan.plan if plan else None,
            "generation": plan.generation if plan else None,
            "nodes": plan.nodes if plan else [],
            "predicted_ms": plan.predicted_ms if plan else None,
            "measured_ms": measured if requests else None,
            "requests": requests,
        }


@dataclass
class Retained:
    """What the nodes hold from before or beside this controller: each node's retained assignment
    as the broker holds it (``assigned``: carried on for models not rolled out here yet), the models
    the nodes say they serve that this controller does not (``foreign``: taken off at its next
    rollout), and the weights those models' assignments named (cleared with them). Pure state."""

    assigned: dict[str, NodeWork] = field(default_factory=dict)
    foreign: set[str] = field(default_factory=set)
    foreign_blobs: dict[str, int] = field(default_factory=dict)  # sha256 -> parts

    def on_assignment(self, node: str, work: NodeWork | None, served: Container[str]) -> None:
        """``node``'s retained assignment as the broker holds it now (None: cleared)."""
        self.assigned = {n: w for n, w in {**self.assigned, node: work}.items() if w is not None}
        foreign = [a for m, a in work.plans.items() if m not in served] if work else []
        self.foreign_blobs.update({r.sha256: r.parts for a in foreign for r in a.weights.values()})

    def on_report(self, models: Iterable[str], served: Container[str]) -> None:
        """A node reported serving ``models``: those not ``served`` here are foreign."""
        self.foreign |= {m for m in models if m not in served}

    def retire(self) -> tuple[list[str], dict[str, int]]:
        """The foreign models and their weights, to take off; forgotten here from now on."""
        models, blobs = sorted(self.foreign), self.foreign_blobs
        self.foreign, self.foreign_blobs = set(), {}
        return models, blobs


def live_works(models: Iterable[Served], running: Mapping[str, NodeWork] | None = None) -> dict[str, NodeWork]:
    """Each node's work as the models' live plans make it: what a rollout of one model carries on
    for the others (never what was published last: a failed rollout's plan is not live). A model
    this controller has not rolled out yet (it just started) keeps what the nodes run of it
    (``running``: the retained assignments the nodes' reports confirm), so that the first rollout
    of another model does not take it off the nodes, failing its requests, until its own first
    rollout replaces it."""
    works: dict[str, NodeWork] = {}
    for served in models:
        if served.live is not None:
            placed: Iterable[tuple[str, Assignment]] = served.live.rollout.deployment.assignments.items()
        elif served.published < 0:
            placed = [(n, w.plans[served.spec]) for n, w in (running or {}).items() if served.spec in w.plans]
        else:
            placed = []
        for node, assignment in placed:
            works[node] = works.get(node, NodeWork(node, {})).replace(assignment, served.spec)
    return works


def running_works(assigned: Mapping[str, NodeWork], serves: Mapping[str, Mapping[str, int]]) -> dict[str, NodeWork]:
    """Of each node's retained assignment (``assigned``), the plans it runs: those its report says
    it serves at that generation (``serves``: node -> model -> generation). A plan a node refused
    is left out, so that no rollout carries it on to a node that would refuse the whole work."""
    out = {}
    for node, work in assigned.items():
        said = serves.get(node, {})
        out[node] = NodeWork(node, {m: a for m, a in work.plans.items() if said.get(m) == a.generation})
    return out


def memory_left(cluster: Cluster, others: Iterable[Served]) -> Cluster:
    """``cluster`` with each node's memory budget less what the live plans of ``others`` keep
    on it (weights and output rows): models planned one after another share the nodes' memory."""
    taken: dict[str, float] = {}
    for served in others:
        if served.live is None:
            continue
        plan, nodes = served.live.planned.plan, served.live.rollout.nodes
        for device, used in enumerate(memory_used(plan, served.graph)):
            taken[nodes[device]] = taken.get(nodes[device], 0.0) + used
    return less_memory(cluster, taken)
