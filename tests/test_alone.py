"""The trial of the best single device against a split (controller/control/alone.py): a split
that has not shown it beats one device gets that device tried alone, and whichever was measured
faster stays, until the nodes or their conditions change. Pure: no broker."""

from __future__ import annotations

import msgspec
import pytest
import torch

from controller.control.alone import ALONE_MARGIN, RECHECK_S, TRIAL_GAIN, Alone
from controller.graph.trace import trace_model
from controller.lab.learn import settled_costs
from controller.planner.methods import plan_model
from controller.planner.plan import Plan
from controller.zoo import build_model
from edgeflowd.profiles.devices import Cluster, Device, DeviceProfile, Link
from edgeflowd.wire.messages import Costs, NodeCosts, PlanInfo

NODES = ["a", "b"]


@pytest.fixture(scope="module")
def plans() -> tuple[Plan, Plan]:
    """A split of small_dag over both nodes, and the whole model on one."""
    model, shape = build_model("small_dag", None, 0)
    graph = trace_model(model, torch.zeros(shape), "small_dag")
    link = Link(up_mbps=1000.0, down_mbps=1000.0, latency_ms=0.2)
    cluster = Cluster("two", tuple(Device(n, DeviceProfile(n, 20.0, 4000.0, 1, link)) for n in NODES))
    split, single = plan_model(graph, cluster, "equal").plan, plan_model(graph, cluster, "single").plan
    assert all(split.on_device(i) for i in range(2)) and sum(1 for i in range(2) if single.on_device(i)) == 1
    return split, single


def test_a_split_no_faster_than_one_device_has_it_tried_and_the_faster_stays(plans: tuple[Plan, Plan]) -> None:
    split, single = plans
    alone = Alone()
    step = alone.judge(split, NODES, ("b", 20.0), measured_ms=31.0, now=0.0)
    assert step is not None and step.event == "trying-alone" and step.node == "b" and step.replan
    assert alone.planned_on(NODES) == "b"  # the trial's plan
    assert alone.judge(split, NODES, ("b", 20.0), 31.0, 1.0) is None  # one trial at a time
    step = alone.judge(single, NODES, ("b", 20.0), measured_ms=24.0, now=2.0)
    assert step is not None and step.event == "alone-faster" and not step.replan
    print(step.detail)
    assert "24 ms" in step.detail and "31 ms" in step.detail
    assert alone.planned_on(NODES) == "b"  # the verdict holds on these nodes
    assert alone.planned_on(["a", "b", "c"]) == ""  # not once a node joins: measure again
    assert alone.state == "" and alone.judge(split, [*NODES, "c"], ("b", 20.0), 31.0, 3.0) is not None


def test_changing_conditions_do_not_cost_a_trial_each_time(plans: tuple[Plan, Plan]) -> None:
    split, single = plans
    alone = Alone()
    assert alone.judge(split, NODES, ("b", 20.0), 31.0, 0.0) is not None
    assert alone.judge(single, NODES, ("b", 20.0), 24.0, 1.0) is not None
    alone.reset()  # b measured itself again: the split is planned
    assert alone.planned_on(NODES) == ""
    assert alone.judge(split, NODES, ("b", 20.0), 31.0, 2.0) is None  # tried on these nodes a second ago
    assert alone.judge(split, NODES, ("b", 20.0), 31.0, 1.0 + RECHECK_S + 1) is not None


def test_a_device_alone_no_faster_gives_the_split_back_for_a_while(plans: tuple[Plan, Plan]) -> None:
    split, single = plans
    alone = Alone()
    assert alone.judge(split, NODES, ("a", 20.0), 30.0, 0.0) is not None
    within = 30.0 * (1 - ALONE_MARGIN / 2)  # faster, but within the margin: the split stays
    step = alone.judge(single, NODES, ("a", 20.0), within, 1.0)
    assert step is not None and step.event == "split-faster" and step.replan
    assert alone.planned_on(NODES) == ""
    assert alone.judge(split, NODES, ("a", 20.0), 30.0, RECHECK_S / 2) is None  # decided on these nodes
    assert alone.judge(split, NODES, ("a", 20.0), 30.0, RECHECK_S + 2) is not None  # and asked again later


def test_a_split_that_wins_clearly_is_not_tried_and_a_reset_forgets(plans: tuple[Plan, Plan]) -> None:
    split, single = plans
    alone = Alone()
    assert alone.judge(split, NODES, ("a", 20.0), 20.0 * (1 - TRIAL_GAIN) - 0.1, 0.0) is None
    assert alone.judge(single, NODES, ("a", 20.0), 25.0, 1.0) is None  # no trial ran: nothing to say
    assert alone.judge(split, NODES, ("a", 0.0), 30.0, 2.0) is None  # no single device known
    assert alone.judge(split, NODES, ("z", 20.0), 30.0, 2.0) is None  # nor one of the live nodes
    assert alone.judge(split, NODES, ("a", 20.0), 30.0, 3.0) is not None
    alone.reset()  # a node measured itself again: the trial is off
    assert alone.planned_on(NODES) == "" and alone.judge(single, NODES, ("a", 20.0), 10.0, 4.0) is None


def test_a_lab_plans_on_costs_only_once_the_live_plan_is_judged_and_no_replan_follows() -> None:
    node = NodeCosts("fitted", 20.0, {}, 4.0, 0.1, 100.0, 100.0, 0.2, share=1.0)
    plan = PlanInfo(3, "g3", "m", "edgeflow", [1, 3, 8, 8], ["a"], [], [])
    judged = Costs(3, 20.0, {"a": node}, judged=True)
    assert settled_costs(judged, plan, 3)
    assert not settled_costs(msgspec.structs.replace(judged, judged=False), plan, 3)  # not judged yet
    assert not settled_costs(msgspec.structs.replace(judged, replanning=True), plan, 3)  # a trial is coming
    assert not settled_costs(msgspec.structs.replace(judged, generation=2), plan, 3)  # costs of the last plan
    assert not settled_costs(judged, plan, 2)  # the plan changed during the round
    unfitted = msgspec.structs.replace(node, source="benchmark")
    assert not settled_costs(msgspec.structs.replace(judged, nodes={"a": unfitted}), plan, 3)


def test_a_device_alone_that_slows_down_outdates_the_verdict(plans: tuple[Plan, Plan]) -> None:
    split, single = plans
    alone = Alone()
    assert not alone.outdated_by(2.0)  # no trial, no verdict: nothing to outdate
    assert alone.judge(split, NODES, ("b", 20.0), 31.0, 0.0) is not None
    assert alone.judge(single, NODES, ("b", 20.0), 24.0, 1.0) is not None
    assert alone.state == "alone"
    assert not alone.outdated_by(0.6)  # whole layers run faster than the split's fit planned them
    assert alone.planned_on(NODES) == "b"
    assert alone.outdated_by(1.6)  # b slowed down since it was measured alone
