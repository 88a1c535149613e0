"""Predicted end-to-end latency of a partition: build its plan, simulate one request."""

from __future__ import annotations

from controller.graph.layers import LayerGraph
from controller.partitions import Partition
from controller.plan import build_plan
from controller.profiles import Cluster
from controller.simulate import simulate

__all__ = ["predicted_latency"]


def predicted_latency(graph: LayerGraph, cluster: Cluster, partition: Partition) -> float:
    """Planners call this on candidates they built themselves, so the plan is not re-validated
    here; :func:`controller.partitioners.plan_model` validates the plan it returns."""
    return simulate(build_plan(graph, partition, check=False), graph, cluster).latency_s
