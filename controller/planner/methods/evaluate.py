"""Predicted end-to-end latency of a partition: build its plan, simulate one request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from controller.graph.layers import LayerGraph
from controller.planner.costmodel import memory_bytes
from controller.planner.partitions import Partition
from controller.planner.plan import Plan, build_plan
from controller.planner.simulate import simulate
from edgeflowd.profiles.devices import Cluster

__all__ = ["fits_memory", "less_memory", "memory_used", "predicted_latency"]


def predicted_latency(graph: LayerGraph, cluster: Cluster, partition: Partition) -> float:
    """Planners call this on candidates they built themselves, so the plan is not re-validated
    here; :func:`controller.planner.methods.plan_model` validates the plan it returns."""
    return simulate(build_plan(graph, partition, check=False), graph, cluster).latency_s


def memory_used(plan: Plan, graph: LayerGraph) -> list[float]:
    """What each of ``plan``'s devices keeps in memory for it (weights plus the rows its units
    output), in bytes: what another model planned onto the same nodes has not got."""
    used = [0.0] * plan.n_devices
    for unit in plan.units:
        if unit.device >= 0 and not unit.rows.empty:
            used[unit.device] += memory_bytes(graph[unit.layer], len(unit.rows))
    return used


def less_memory(cluster: Cluster, taken: Mapping[str, float]) -> Cluster:
    """``cluster`` with each node's memory budget less the bytes ``taken`` by it (other models)."""
    devices = tuple(
        replace(d, profile=replace(d.profile, memory_mb=max(0.0, d.profile.memory_mb - taken.get(d.id, 0.0) / 2**20)))
        for d in cluster.devices
    )
    return cluster.with_devices(devices)


def fits_memory(graph: LayerGraph, cluster: Cluster, partition: Partition) -> bool:
    """Whether every device's units (weights plus the rows they output) fit its budget."""
    used = [0.0] * len(cluster)
    for layer in graph.compute_layers:
        for device, rows in enumerate(partition.rows[layer.name]):
            if not rows.empty:
                used[device] += memory_bytes(layer, len(rows))
    return all(u <= dev.profile.memory_mb * 2**20 for u, dev in zip(used, cluster.devices, strict=True))
