"""Fused blocks in EdgeFlow's progressive pass: chosen where messages are dear, exact, never worse."""

from __future__ import annotations

import torch

from controller.control.verify import TOLERANCE, check_partition, reference_outputs
from controller.graph.layers import LayerGraph
from controller.graph.trace import trace_model
from controller.planner.methods import Planned, plan_model
from controller.planner.methods.blocks import block_placements, fusable_run
from controller.planner.methods.progressive import progressive_pass
from controller.planner.methods.state import PlanState
from controller.planner.partitions import Partition
from controller.zoo import build_model
from edgeflowd.core.units import CLIENT
from edgeflowd.profiles.devices import Cluster, Device, DeviceProfile, Link


def _twins(latency_ms: float, gflops: float = 2.0) -> Cluster:
    profile = DeviceProfile("core", gflops, 1000, 1, Link(1000.0, 1000.0, latency_ms))
    return Cluster("twins", (Device("a", profile), Device("b", profile)), client=Link(1000.0, 1000.0, 0.1))


def _graph(name: str, shape: tuple[int, ...]) -> tuple[LayerGraph, torch.Tensor, list[torch.Tensor]]:
    model, _ = build_model(name, shape)
    x = torch.randn(shape)
    return trace_model(model, x, name), x, reference_outputs(model, x)


def _overlapping(graph: LayerGraph, partition: Partition) -> list[str]:
    """Layers whose devices compute some rows twice: the inside of a fused block."""
    return [layer.name for layer in graph.compute_layers if sum(map(len, partition.rows[layer.name])) > layer.height]


def _between_devices(planned: Planned) -> int:
    return sum(1 for unit, _, device in planned.plan.messages() if device not in (unit.device, CLIENT))


def test_a_block_recomputes_its_halo_inside_and_reads_only_at_its_entry() -> None:
    graph, _, _ = _graph("resnet18", (1, 3, 64, 64))
    layers = graph.compute_layers
    state = PlanState(graph, _twins(1.0))
    k = min(4, fusable_run(layers, 0))
    placed = block_placements(state, graph, layers[:k], [1.0, 1.0], graph.consumers(), [0, 1])
    assert placed is not None and len(placed) == k
    last = placed[-1].ranges
    assert sum(len(r) for r in last) == layers[k - 1].height  # the block's output: a plain split
    first = placed[0].ranges
    assert sum(len(r) for r in first) > layers[0].height  # its first layer: grown by the halo


def test_dear_messages_make_edgeflow_fuse_and_its_plan_stays_exact() -> None:
    graph, x, want = _graph("resnet18", (1, 3, 96, 96))
    cluster = _twins(5.0)  # a message costs as much as a third of a layer
    fused = plan_model(graph, cluster, "edgeflow")
    layerwise = plan_model(graph, cluster, "progressive")  # the paper's: one layer a step
    assert _overlapping(graph, fused.partition)
    assert not _overlapping(graph, layerwise.partition)
    assert _between_devices(fused) < _between_devices(layerwise)
    assert fused.latency_s < 0.95 * layerwise.latency_s
    assert check_partition("edgeflow", graph, fused.partition, x, want).relative <= TOLERANCE


def test_fused_plans_are_exact_whatever_a_message_costs() -> None:
    graph, x, want = _graph("yolov5s", (1, 3, 128, 128))
    fused_somewhere = False
    for latency_ms, gflops in ((0.5, 20.0), (2.0, 2.0), (5.0, 2.0)):
        planned = plan_model(graph, _twins(latency_ms, gflops), "edgeflow")
        fused_somewhere |= bool(_overlapping(graph, planned.partition))
        assert check_partition("edgeflow", graph, planned.partition, x, want).relative <= TOLERANCE
    assert fused_somewhere
    assert not _overlapping(graph, progressive_pass(graph, _twins(5.0), [0, 1], blocks=False))
