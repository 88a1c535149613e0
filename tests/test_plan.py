"""Partitions, plans and forwarding tables."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from controller.control.verify import TOLERANCE, reference_outputs, relative_error, run_plan
from controller.graph.layers import LayerGraph
from controller.graph.trace import trace_model
from controller.planner.partitions import Partition, even_partition, random_partition, split_rows
from controller.planner.plan import build_plan
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import row_numel
from edgeflowd.core.units import SINK, reads_nothing
from edgeflowd.errors import PlanError
from tests import models


@pytest.fixture(scope="module")
def unet() -> tuple[LayerGraph, torch.Tensor]:
    x = torch.randn(1, 3, 17, 12)
    return trace_model(models.tiny_unet(), x, "tiny_unet"), x


def test_split_rows_is_exact_and_deterministic() -> None:
    assert split_rows(10, [1, 1, 1]) == (RowRange(0, 4), RowRange(4, 7), RowRange(7, 10))
    assert split_rows(5, [3, 0, 1]) == (RowRange(0, 4), RowRange(0, 0), RowRange(4, 5))
    for height in range(1, 40):
        ranges = split_rows(height, [0.3, 2.0, 1.1, 0.7])
        assert sum(len(r) for r in ranges) == height


def test_random_partitions_cover_every_layer(unet: tuple[LayerGraph, torch.Tensor]) -> None:
    graph, _ = unet
    rng = random.Random(0)
    for _ in range(50):
        random_partition(graph, 4, rng).validate(graph)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows, h: (RowRange(0, h - 1), RowRange(0, 0)), r"rows \[\d+,\d+\) are on no device"),
        (lambda rows, h: (RowRange(0, 3), RowRange(4, h)), r"rows \[3,4\) are on no device"),
        (lambda rows, h: (RowRange(0, h),), "1 ranges for 2 devices"),
    ],
)
def test_invalid_partitions_name_the_layer(unet: tuple[LayerGraph, torch.Tensor], edit: object, message: str) -> None:
    graph, _ = unet
    good = even_partition(graph, 2)
    layer = graph.compute_layers[0]
    bad = Partition(2, {**good.rows, layer.name: edit(good.rows[layer.name], layer.height)})  # type: ignore[operator]
    with pytest.raises(PlanError, match=f"layer {layer.name}: {message}"):
        bad.validate(graph)


def test_an_unsplittable_layer_cannot_be_split() -> None:
    x = torch.randn(1, 3, 9, 5)
    graph = trace_model(models.unknown_ops(), x, "unknown")
    whole = next(layer for layer in graph.compute_layers if not layer.splittable)
    rows = dict(even_partition(graph, 2).rows)
    rows[whole.name] = split_rows(whole.height, [1, 1])
    with pytest.raises(PlanError, match=f"layer {whole.name} cannot be split by rows"):
        Partition(2, rows).validate(graph)


def test_forwarding_tables_send_only_needed_rows(unet: tuple[LayerGraph, torch.Tensor]) -> None:
    graph, x = unet
    plan = build_plan(graph, even_partition(graph, 3))
    needed = {(u.uid, i.producer): i.rows for u in plan.units for i in u.inputs}
    for unit in plan.units:
        for fwd in unit.forwards:
            if fwd.consumer != SINK:
                assert needed[(fwd.consumer, unit.layer)].contains(fwd.rows)
    remote = [(u, f) for u, f, device in plan.messages() if device != u.device]
    local = [(u, f) for u, f, device in plan.messages() if device == u.device]
    assert remote and local
    _, messages, nbytes = run_plan(plan, x, graph.tensors, graph.resolve)
    assert messages == len(remote)  # one frame per remote forward; local slices never touch the bus
    assert nbytes > sum(4 * row_numel(u.out_shape) * len(f.rows) for u, f in remote)  # + frame headers


def test_validate_catches_a_dropped_forward(unet: tuple[LayerGraph, torch.Tensor]) -> None:
    graph, _ = unet
    plan = build_plan(graph, even_partition(graph, 2))
    victim = next(u for u in plan.units if len(u.forwards) > 1)
    broken = dataclasses.replace(victim, forwards=victim.forwards[1:])
    units = tuple(broken if u is victim else u for u in plan.units)
    with pytest.raises(PlanError, match="needs rows"):
        dataclasses.replace(plan, units=units).validate()


def test_plan_prints_rows_per_device(unet: tuple[LayerGraph, torch.Tensor]) -> None:
    graph, _ = unet
    text = str(build_plan(graph, even_partition(graph, 2)))
    assert text.startswith("plan for tiny_unet on 2 devices")
    assert "d0:[0,9) d1:[9,17)".replace(" ", ", ") in text


def test_a_unit_that_reads_no_row_gets_exactly_one_trigger() -> None:
    """Padding wider than the kernel: an edge unit's windows lie wholly in padding. Without a
    trigger slice nothing would tell it that a request arrived (it would wait until the request
    timed out); validate refuses a plan that gives it none, or two."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, padding=2), torch.nn.Conv2d(4, 2, 3, 2, 3)).eval()
    x = torch.randn(1, 3, 6, 5)
    graph = trace_model(model, x, "padding")
    plans = [build_plan(graph, random_partition(graph, 4, random.Random(seed))) for seed in range(40)]
    plan = next(p for p in plans if any(reads_nothing(u.inputs) for u in p.units))
    idle = next(u for u in plan.units if reads_nothing(u.inputs))
    source = next(u for u in plan.units if any(f.consumer == idle.uid for f in u.forwards))
    trigger = next(f for f in source.forwards if f.consumer == idle.uid)
    assert trigger.rows.empty
    want = reference_outputs(model, x)
    got, _, _ = run_plan(plan, x, graph.tensors, graph.resolve)
    assert relative_error(got, want)[1] <= TOLERANCE
    for forwards in ([f for f in source.forwards if f is not trigger], [*source.forwards, trigger]):
        changed = dataclasses.replace(source, forwards=tuple(forwards))
        units = tuple(changed if u is source else u for u in plan.units)
        with pytest.raises(PlanError, match=f"unit {idle.uid} reads no row"):
            dataclasses.replace(plan, units=units).validate()
