"""What the controller learns as the model runs (controller/control/learning.py, and the message
work of controller/planner/fit.py): fits that follow a node whose speed changes, latency medians
per generation, and the cost model published and read back. Pure: no broker."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from controller.control.learning import (
    PLANS_KEPT,
    REPLAN_GAIN,
    CostLearner,
    LatencyBook,
    costs_of,
    device_of_costs,
    keep_live,
    verdict,
)
from controller.graph.layers import LayerGraph
from controller.graph.trace import trace_model
from controller.planner.fit import Case, fit_message_work, unit_terms, with_message_work
from controller.planner.methods import plan_model
from controller.planner.plan import Plan
from controller.planner.simulate import simulate
from controller.zoo import build_model
from edgeflowd.profiles.devices import Cluster, Device, DeviceProfile, Link

LINK = Link(up_mbps=200.0, down_mbps=200.0, latency_ms=0.5)


def _device(name: str, gflops: float) -> Device:
    return Device(name, DeviceProfile(name, gflops, 4000.0, 1, LINK, op_overhead_ms=0.1, weights_gbps=5.0))


@pytest.fixture(scope="module")
def resnet() -> tuple[LayerGraph, Cluster, Plan]:
    model, shape = build_model("resnet18", None, 0)
    graph = trace_model(model, torch.zeros(shape), "resnet18")
    cluster = Cluster("two", (_device("a", 20.0), _device("b", 20.0)))
    return graph, cluster, plan_model(graph, cluster, "equal").plan


def _report(plan: Plan, graph: LayerGraph, index: int, truth: Device, runs: int = 3) -> dict[str, list[float]]:
    """What a node that really is ``truth`` reports for its units of ``plan``."""
    return {uid: [runs, runs * sum(t)] for uid, t in unit_terms(plan, graph, index, truth).items()}


def test_the_fit_follows_a_node_that_slows_down(resnet: tuple[LayerGraph, Cluster, Plan]) -> None:
    graph, cluster, plan = resnet
    reference = cluster.devices[1]
    learner = CostLearner(half_life_s=2.0)
    learner.add_plan(7, plan, graph, ["a", "b"])
    rates = []
    for second in range(12):
        truth = _device("b", 20.0 if second < 6 else 10.0)  # its CPU quota halves at t = 6 s
        learner.observe("b", 7, _report(plan, graph, 1, truth), reference, float(second))
        fitted = learner.device("b", float(second))
        assert fitted is not None
        rates.append(fitted.rate("conv") / 1e9)
    print("fitted GFLOP/s per report:", [f"{r:.1f}" for r in rates])
    assert rates[5] == pytest.approx(20.0, rel=0.05)
    assert rates[-1] == pytest.approx(10.0, rel=0.1)  # within six reports of the change
    assert all(rates[i] >= rates[i + 1] - 0.5 for i in range(5, 11))  # it moves one way


def test_a_new_benchmark_starts_over_and_old_fits_expire(resnet: tuple[LayerGraph, Cluster, Plan]) -> None:
    graph, cluster, plan = resnet
    learner = CostLearner(max_age_s=30.0)
    learner.add_plan(1, plan, graph, ["a", "b"])
    slow = _device("a", 5.0)
    learner.observe("a", 1, _report(plan, graph, 0, slow), cluster.devices[0], 0.0)
    assert learner.fitted("a", 10.0) is not None
    relinked = dataclasses.replace(
        cluster.devices[0], profile=dataclasses.replace(cluster.devices[0].profile, link=Link(5.0, 5.0, 9.0))
    )
    assert learner.observe("a", 1, {}, relinked, 11.0) is not None  # a re-measured link keeps the fit
    remeasured = _device("a", 6.0)
    assert learner.observe("a", 1, {}, remeasured, 12.0) is None  # new compute figures: samples start over
    assert learner.observe("a", 99, _report(plan, graph, 0, slow), remeasured, 13.0) is None  # unknown plan
    learner.observe("a", 1, _report(plan, graph, 0, slow), remeasured, 14.0)
    assert learner.fitted("a", 20.0) is not None
    assert learner.fitted("a", 45.0) is None  # nothing refreshed it for 30 s: back to the benchmark


def test_reports_of_units_not_in_the_plan_are_ignored(resnet: tuple[LayerGraph, Cluster, Plan]) -> None:
    graph, cluster, plan = resnet
    learner = CostLearner()
    learner.add_plan(1, plan, graph, ["a", "b"])
    bogus = {"nope:0": [3.0, 1.0], "also:1": [1.0, -2.0]}
    assert learner.observe("a", 1, bogus, cluster.devices[0], 0.0) is None
    uid = next(iter(_report(plan, graph, 0, cluster.devices[0])))
    for odd in ([0.5, 1e308], [1.0, float("nan")], [2.0, 500.0], [1.0], [0.0, 1.0]):
        assert learner.observe("a", 1, {uid: odd}, cluster.devices[0], 0.0) is None, odd
    assert learner.observe("c", 1, _report(plan, graph, 0, cluster.devices[0]), cluster.devices[0], 0.0) is None


def test_latency_book_keeps_the_last_generations() -> None:
    book = LatencyBook(keep=3)
    for ms in (10.0, 30.0, 20.0, 40.0):
        book.add(1, ms)
    assert book.median(1) == (30.0, 3)  # the last three: 30, 20, 40
    newer = range(2, 2 + PLANS_KEPT)  # as many newer generations as are kept
    for generation in newer:
        book.add(generation, 5.0)
    assert book.median(1) == (0.0, 0)
    assert book.median(newer[-1]) == (5.0, 1)


def test_published_costs_read_back_as_the_same_device() -> None:
    device = dataclasses.replace(_device("a", 12.5), load=0.25)
    back = device_of_costs(_device("a", 99.0), costs_of(device, "benchmark"))
    assert back.rate("conv") == pytest.approx(device.rate("conv"))
    assert back.rate("dwconv") == pytest.approx(device.rate("dwconv"))
    assert back.weights_rate() == pytest.approx(device.weights_rate())
    assert back.link == device.link


def test_message_work_is_recovered_from_measured_latencies(resnet: tuple[LayerGraph, Cluster, Plan]) -> None:
    graph, cluster, plan = resnet
    other = plan_model(graph, cluster, "coedge").plan
    truth = 4e6  # handling a message costs 4 MFLOP: 0.2 ms on these devices
    cases = [
        Case(p, graph, cluster, simulate(p, graph, with_message_work(cluster, truth)).latency_s) for p in (plan, other)
    ]
    assert fit_message_work(cases) == pytest.approx(truth, rel=0.05)
    faster = [dataclasses.replace(c, measured_s=c.measured_s * 0.5) for c in cases]
    assert fit_message_work(faster) == 0.0  # never negative: faster than predicted is the units' fit's business
    assert fit_message_work([]) == 0.0
    slowed = with_message_work(cluster, truth)
    assert slowed.devices[0].link.latency_ms == pytest.approx(0.5 + truth / 20e9 * 1e3)


def test_verdicts() -> None:
    assert verdict(1.0, 1.0, 0.8, split=True) == "slower-than-single"
    assert verdict(1.0, 1.0, 0.8, split=False) == ""  # a single device is the single device
    assert verdict(1.3, 1.0, 2.0, split=True) == "prediction-off"
    assert verdict(0.7, 1.0, 2.0, split=False) == "prediction-off"
    assert verdict(1.1, 1.0, 2.0, split=True) == ""


def test_a_split_that_lost_to_one_device_is_replanned_away(resnet: tuple[LayerGraph, Cluster, Plan]) -> None:
    """The safeguard's chain: a split measured slower than the best single device's prediction
    is judged so; the message work fitted to its measurement makes the corrected model predict it
    as measured; the plan made on the corrected model is another, no slower than one device."""
    graph, cluster, _ = resnet
    split = plan_model(graph, cluster, "edgeflow")
    single = plan_model(graph, cluster, "single")
    assert sum(1 for d in range(len(cluster)) if split.plan.on_device(d)) == 2, "fixture: the split must be chosen"
    measured = single.latency_s * 1.5  # what the split really took
    assert verdict(measured, split.latency_s, single.latency_s, split=True) == "slower-than-single"
    work = fit_message_work([Case(split.plan, graph, cluster, measured)])
    corrected = with_message_work(cluster, work)
    assert simulate(split.plan, graph, corrected).latency_s == pytest.approx(measured, rel=0.05)
    replanned = plan_model(graph, corrected, "edgeflow")
    assert replanned.plan.units != split.plan.units
    assert replanned.latency_s <= plan_model(graph, corrected, "single").latency_s * 1.001
    print(
        f"split predicted {split.latency_s * 1e3:.1f} ms, measured {measured * 1e3:.1f}; message work "
        f"{work / 1e6:.1f} MFLOP; re-planned: {replanned.latency_s * 1e3:.1f} ms predicted"
    )
    assert keep_live(split, replanned, graph, corrected) is None  # it pays for the requests it drops


def test_a_replan_that_does_not_pay_keeps_the_live_plan(resnet: tuple[LayerGraph, Cluster, Plan]) -> None:
    """``equal`` re-planned on a corrected model splits as before, only its schedule may move: the
    live plan is kept, re-predicted on that model (a CI run lost requests to one new generation
    per judgement); a plan that is clearly faster on it is not."""
    graph, cluster, _ = resnet
    live = plan_model(graph, cluster, "equal")
    corrected = with_message_work(cluster, 300e6)
    again = plan_model(graph, corrected, "equal")
    kept = keep_live(live, again, graph, corrected)
    assert kept is not None and kept.plan == live.plan
    assert kept.latency_s == pytest.approx(simulate(live.plan, graph, corrected).latency_s)
    assert kept.latency_s > live.latency_s  # the model it is judged by now
    single = plan_model(graph, corrected, "single")
    assert single.latency_s < kept.latency_s * (1 - REPLAN_GAIN), "fixture: one device must clearly win"
    assert keep_live(live, single, graph, corrected) is None
