"""Random partitions of random small DAGs compute exactly what the unsplit model computes."""

from __future__ import annotations

import random

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.control.verify import TOLERANCE, check_partition, reference_outputs
from controller.graph.trace import trace_model
from controller.planner.partitions import even_partition, random_partition
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
    for i, partition in enumerate(partitions):
        check = check_partition(f"p{i}", graph, partition, x, want)
        assert check.relative <= TOLERANCE, (stages, in_h, in_w, partition)
