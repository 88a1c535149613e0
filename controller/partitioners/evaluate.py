"""Predicted end-to-end latency of a partition: build its plan, simulate one request."""

from __future__ import annotations

from controller.graph.layers import LayerGraph
from controller.partitions import Partition
from controller.plan import build_plan
from controller.profiles import Cluster
from controller.simulate import simulate

__all__ = ["predicted_latency"]


def predicted_latency(graph: LayerGraph, cluster: Cluster, partition: Partition) -> float:
    return simulate(build_plan(graph, partition), graph, cluster).latency_s
