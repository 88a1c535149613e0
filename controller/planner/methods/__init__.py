"""Partition methods, EdgeFlow's and the baselines', behind one signature and one table:
``METHODS[name](graph, cluster) -> Partition``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.graph.layers import LayerGraph
from controller.planner.methods.baselines import chain, coedge, equal, ftp, single
from controller.planner.methods.optimal import optimal
from controller.planner.methods.progressive import edgeflow_partition, progressive_partition
from controller.planner.partitions import Partition
from controller.planner.placement import place_plugin_ops
from controller.planner.plan import Plan, build_plan
from controller.planner.schedule import best_schedule
from controller.planner.simulate import Timeline, simulate
from edgeflowd.profiles.devices import Cluster

__all__ = ["METHODS", "SCHEDULES", "Planned", "lower_bound_s", "plan_model", "plan_partition"]

Method = Callable[[LayerGraph, Cluster], Partition]

METHODS: dict[str, Method] = {
    "edgeflow": edgeflow_partition,
    "progressive": progressive_partition,
    "single": single,
    "equal": equal,
    "coedge": coedge,
    "ftp": ftp,
    "chain": chain,
    "optimal": optimal,  # small graphs only: raises PlanError beyond the MILP's reach
}


@dataclass(frozen=True)
class Planned:
    method: str
    partition: Partition
    plan: Plan
    timeline: Timeline
    plan_time_s: float

    @property
    def latency_s(self) -> float:
        return self.timeline.latency_s


SCHEDULES = ("auto", "whole")
"""``auto``: units compute their halo rows first where the simulator predicts it pays
(:mod:`controller.planner.schedule`); ``whole``: every unit computes its rows in one pass."""


def plan_model(
    graph: LayerGraph,
    cluster: Cluster,
    method: str,
    clock: Callable[[], float] = time.perf_counter,
    schedule: str = "auto",
    deployable: bool = False,
) -> Planned:
    """``deployable``: the plan goes to the cluster's nodes, so a layer that needs a plugin op
    goes to a node that has it (:mod:`controller.planner.placement`); without, anywhere (the
    process that plans can run every op of a model it loaded)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    start = clock()
    return plan_partition(graph, cluster, method, METHODS[method](graph, cluster), clock, schedule, deployable, start)


def plan_partition(
    graph: LayerGraph,
    cluster: Cluster,
    method: str,
    partition: Partition,
    clock: Callable[[], float] = time.perf_counter,
    schedule: str = "auto",
    deployable: bool = False,
    start: float | None = None,
) -> Planned:
    """:func:`plan_model` of a ``partition`` already chosen (``method``: what chose it);
    ``start``: when planning began (now when not given)."""
    start = clock() if start is None else start
    if deployable:
        partition = place_plugin_ops(graph, cluster, partition)
    plan = build_plan(graph, partition)
    if schedule == "auto":
        plan, timeline = best_schedule(plan, graph, cluster)
    else:
        timeline = simulate(plan, graph, cluster)
    return Planned(method, partition, plan, timeline, clock() - start)


def lower_bound_s(graph: LayerGraph, cluster: Cluster) -> float:
    """Every FLOP on the summed rate of all devices, no communication: no plan can beat it."""
    return sum(layer.flops / sum(d.rate(layer.kind) for d in cluster.devices) for layer in graph.compute_layers)
