"""Random partitions of random small DAGs compute exactly what the unsplit model computes: even,
random (overlapping now and then) and with a random run of layers as fused tiles."""

from __future__ import annotations

import random

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.control.verify import TOLERANCE, check_partition, reference_outputs
from controller.graph.layers import LayerGraph
from controller.graph.trace import trace_model
from controller.planner.methods.blocks import fusable_run
from controller.planner.methods.fused import fused_ranges
from controller.planner.partitions import Partition, even_partition, random_partition, split_rows
from tests.synthetic import C, Stage, SyntheticDag, stages_and_height


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=stages_and_height(), devices=st.integers(1, 4), seed=st.integers(0, 2**16))
@example(  # found by CI: batch norm on a 1x1 map while the model was still in training mode
    spec=(
        [
            Stage("up", 1, 1, 1, 0, False),
            Stage("conv", 1, 3, 1, 0, False),
            Stage("conv", 3, 1, 2, 0, False),
            Stage("residual", 1, 1, 1, 0, False),
        ],
        7,
        7,
    ),
    devices=1,
    seed=0,
)
def test_random_partitions_of_random_dags_are_exact(
    spec: tuple[list[Stage], int, int], devices: int, seed: int
) -> None:
    stages, in_h, in_w = spec
    torch.manual_seed(seed)
    model = SyntheticDag(stages, (1, C, in_h, in_w)).eval()
    x = torch.randn(1, C, in_h, in_w)
    want = reference_outputs(model, x)
    graph = trace_model(model, x, "synthetic")
    rng = random.Random(seed)
    partitions = [even_partition(graph, devices)] + [random_partition(graph, devices, rng) for _ in range(3)]
    partitions.append(_random_fusion(graph, random_partition(graph, devices, rng), rng))
    for i, partition in enumerate(partitions):
        check = check_partition(f"p{i}", graph, partition, x, want)
        assert check.relative <= TOLERANCE, (stages, in_h, in_w, partition)


def _random_fusion(graph: LayerGraph, rest: Partition, rng: random.Random) -> Partition:
    """``rest`` with a random run of consecutive layers as fused tiles (each device computes the
    rows its tiles of the run's outputs read, halos recomputed), cut by random shares."""
    layers, n = graph.compute_layers, rest.n_devices
    starts = [i for i in range(len(layers)) if fusable_run(layers, i) >= 2]
    if not starts:
        return rest
    i = rng.choice(starts)
    block = layers[i : i + rng.randint(2, fusable_run(layers, i))]
    names, users = {layer.name for layer in block}, graph.consumers()
    frontier = {
        layer.name: split_rows(layer.height, [rng.random() + 0.1 for _ in range(n)])
        for layer in block
        if layer.name in graph.outputs or any(u not in names for u in users[layer.name])
    }
    return Partition(n, {**rest.rows, **fused_ranges(graph, block, frontier, n)})
