"""Halo-first units: the rows other nodes read are computed and published before the interior,
and computing a unit in pieces gives exactly the rows it gives whole."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch

from controller.graph.trace import trace_model
from controller.planner.partitions import even_partition
from controller.planner.plan import build_plan
from controller.planner.schedule import HALO_FIRST_MIN_ROWS, HALO_FIRST_SHARE, best_schedule, with_halo_first
from controller.planner.simulate import simulate
from controller.zoo import build_model
from edgeflowd.core.ops import allowed_resolver
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import take_rows
from edgeflowd.core.units import ExecutionUnit, halo_first, run_unit
from edgeflowd.node.runtime import Compute, Deliver, NodeRuntime, Publish
from edgeflowd.profiles.devices import load_cluster
from edgeflowd.wire.frames import FrameKeys
from edgeflowd.wire.topics import Topics


def _graph_and_plan(devices: int) -> tuple[Any, Any, torch.Tensor]:
    model, shape = build_model("small_dag", (1, 3, 48, 48), 0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    graph = trace_model(model, x, "small_dag")
    return graph, build_plan(graph, even_partition(graph, devices)), x


def _full_outputs(graph: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's whole output, from a one-device plan."""
    plan = build_plan(graph, even_partition(graph, 1))
    acts = {source.name: x for source in graph.sources}
    for unit in plan.units:
        if unit.device >= 0:
            ins = [
                take_rows(acts[i.producer], i.rows, RowRange(0, i.shape[2] if len(i.shape) == 4 else 1))
                for i in unit.inputs
            ]
            acts[unit.layer] = run_unit(unit, ins, graph.tensors)
    return acts


def _inputs(unit: ExecutionUnit, acts: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [
        take_rows(acts[i.producer], i.rows, RowRange(0, i.shape[2] if len(i.shape) == 4 else 1)).contiguous()
        for i in unit.inputs
    ]


def test_halo_rows_come_first_in_marked_units_and_other_units_stay_whole() -> None:
    _, plain, _ = _graph_and_plan(2)
    plan = with_halo_first(plain)
    device_of = {u.uid: u.device for u in plan.units}
    chosen = 0
    for unit, before in zip(plan.units, plain.units, strict=True):
        local = partial(_same_device, device_of, unit.device)
        pieces, edges = halo_first(unit, local)
        assert halo_first(before, local) == ((before.rows,), 0)  # unmarked: one pass
        if not unit.halo_first:
            assert (pieces, edges) == ((unit.rows,), 0)
            continue
        chosen += 1
        remote = [f.rows for f in unit.forwards if not local(f.consumer) and not f.rows.empty]
        assert edges and all(any(p.contains(r) for p in pieces[:edges]) for r in remote)
        assert sorted(p.start for p in pieces) == sorted({p.start for p in pieces})  # no piece twice
        assert sum(len(p) for p in pieces) == len(unit.rows)  # the pieces tile the unit's rows
        assert len(unit.rows) >= HALO_FIRST_MIN_ROWS
        assert HALO_FIRST_SHARE * sum(len(p) for p in pieces[:edges]) <= len(unit.rows)
    assert chosen, "an even split of a DAG of 3x3 convolutions has halo rows to send first"
    marked = next(u for u in plan.units if u.halo_first)
    assert halo_first(marked, lambda consumer: False) == ((marked.rows,), 0)  # every row leaves: one pass


def _same_device(device_of: dict[str, int], device: int, consumer: str) -> bool:
    return device_of.get(consumer, -1) == device


def test_the_simulator_sends_halos_before_interiors_and_the_schedule_is_chosen_by_it() -> None:
    graph, plain, _ = _graph_and_plan(2)
    slow = load_cluster("testbed-4")  # 50-200 Mbit/s links: a halo row takes milliseconds
    two = dataclasses.replace(slow, devices=slow.devices[2:])
    marked = with_halo_first(plain)
    before, after = simulate(plain, graph, two), simulate(marked, graph, two)
    sent = {i.label: i.start for i in before.intervals if i.resource == "up"}
    early = {i.label: i.start for i in after.intervals if i.resource == "up"}
    halo = [u for u in marked.units if u.halo_first]
    moved = [label for label in sent if label.split("->")[0] in {u.uid for u in halo} and early[label] < sent[label]]
    assert moved, "a marked unit's halo leaves before the unit finishes"
    chosen, timeline = best_schedule(plain, graph, two)
    assert timeline.latency_s == min(before.latency_s, after.latency_s)
    assert chosen == (marked if after.latency_s < before.latency_s else plain)
    assert simulate(chosen, graph, two).latency_s == timeline.latency_s


def test_a_unit_computed_in_pieces_gives_exactly_its_rows() -> None:
    graph, plan, x = _graph_and_plan(3)
    acts = _full_outputs(graph, x)
    checked = 0
    for unit in plan.units:
        if unit.device < 0 or len(unit.out_shape) != 4 or len(unit.rows) < 3:
            continue
        inputs = _inputs(unit, acts)
        whole = run_unit(unit, inputs, graph.tensors)
        a, b = unit.rows.start, unit.rows.stop
        cut = a + len(unit.rows) // 3
        pieces = [run_unit(unit, inputs, graph.tensors, rows=r) for r in (RowRange(cut, b), RowRange(a, cut))]
        if all(i.rule.pattern == "whole" for i in unit.inputs):
            continue  # a layer that mixes rows is never computed in pieces (halo_first says so)
        torch.testing.assert_close(torch.cat([pieces[1], pieces[0]], dim=2), whole, rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked > 5


def test_the_runtime_publishes_the_halo_before_it_computes_the_interior() -> None:
    graph, plan, x = _graph_and_plan(2)
    plan = with_halo_first(plan)
    acts = _full_outputs(graph, x)
    mine = plan.on_device(0)
    calls: list[str] = []

    def counting(name: str) -> Callable[..., Any]:
        calls.append(name)
        return allowed_resolver(name)

    runtime = NodeRuntime(
        "g1", Topics("mem"), mine, graph.tensors, 1 << 24, 30.0, FrameKeys.fresh("x@client"), resolve=counting
    )
    device_of = {u.uid: u.device for u in plan.units}
    unit = next(u for u in mine if halo_first(u, runtime.is_local)[1] and len(u.ops) >= 1)
    first_publish_after: int | None = None
    actions = []
    for action in runtime.compute(Compute("r1", unit, _inputs(unit, acts)), 1 << 20):
        if isinstance(action, Publish) and first_publish_after is None:
            first_publish_after = len(calls)
        actions.append(action)
    assert first_publish_after is not None
    assert len(calls) == 2 * first_publish_after  # the interior's ops ran after the halo left
    delivered = {a.consumer: a for a in actions if isinstance(a, Deliver)}
    for forward in unit.forwards:
        if device_of.get(forward.consumer) == 0:
            want = take_rows(acts[unit.layer], forward.rows, RowRange(0, unit.out_shape[2]))
            torch.testing.assert_close(delivered[forward.consumer].tensor, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [RowRange(0, 1), RowRange(100, 101)])
def test_rows_outside_a_unit_are_refused(rows: RowRange) -> None:
    graph, plan, x = _graph_and_plan(2)
    acts = _full_outputs(graph, x)
    unit = next(u for u in plan.on_device(1) if len(u.out_shape) == 4 and u.rows.start > 0)
    with pytest.raises(Exception, match="not among its rows"):
        run_unit(unit, _inputs(unit, acts), graph.tensors, rows=rows)
