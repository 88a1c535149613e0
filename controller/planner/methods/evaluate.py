"""Predicted end-to-end latency of a partition: build its plan, simulate one request."""

from __future__ import annotations

from controller.graph.layers import LayerGraph
from controller.planner.costmodel import memory_bytes
from controller.planner.partitions import Partition
from controller.planner.plan import build_plan
from controller.planner.simulate import simulate
from edgeflowd.profiles.devices import Cluster

__all__ = ["fits_memory", "predicted_latency"]


def predicted_latency(graph: LayerGraph, cluster: Cluster, partition: Partition) -> float:
    """Planners call this on candidates they built themselves, so the plan is not re-validated
    here; :func:`controller.planner.methods.plan_model` validates the plan it returns."""
    return simulate(build_plan(graph, partition, check=False), graph, cluster).latency_s


def fits_memory(graph: LayerGraph, cluster: Cluster, partition: Partition) -> bool:
    """Whether every device's units (weights plus the rows they output) fit its budget."""
    used = [0.0] * len(cluster)
    for layer in graph.compute_layers:
        for device, rows in enumerate(partition.rows[layer.name]):
            if not rows.empty:
                used[device] += memory_bytes(layer, len(rows))
    return all(u <= dev.profile.memory_mb * 2**20 for u, dev in zip(used, cluster.devices, strict=True))
