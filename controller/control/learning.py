"""What the controller learns while the model runs (pure: reports and ``now`` in, fits out).

- :class:`CostLearner`: each node's reported unit times (telemetry ``unit_s``), matched to the
  units of the plan generation they ran, decayed with a half-life of ``half_life_s`` (10 s) so
  that new conditions win within a few reports and one noisy report does not,
  and fitted (:func:`controller.planner.fit.fit_factors`) against the node's *reference*: its
  benchmarked device without load. A new benchmark of its compute (the node measured itself
  again) is a new reference and starts the node's samples over; a re-measured link does not.
  Reports that are not plausible (fractional runs, a time that is not finite or over a minute per
  run) are ignored. A fit no report has refreshed for ``max_age_s``
  is dropped: the node is planned from its benchmark and load again.
- :class:`LatencyBook`: the requesters' reported latencies per generation, for the median the
  controller publishes beside its prediction.
- :func:`costs_of`: a device as the :class:`~edgeflowd.wire.messages.NodeCosts` it is published as,
  and :func:`device_of_costs`, the way back (a demo or a dashboard plans with what the controller
  believes).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

from controller.graph.layers import LayerGraph
from controller.planner.fit import Fit, Sample, fit_factors, fitted_device, unit_terms
from controller.planner.methods import Planned, plan_model
from controller.planner.plan import Plan
from controller.planner.simulate import simulate
from edgeflowd.errors import EdgeFlowError
from edgeflowd.profiles.devices import Cluster, Device, Link
from edgeflowd.wire.messages import Costs, NodeCosts

__all__ = [
    "PLANS_KEPT",
    "PREDICTION_OFF",
    "REPLAN_GAIN",
    "SINGLE_MARGIN",
    "CostLearner",
    "LatencyBook",
    "best_single",
    "costs_of",
    "costs_report",
    "device_of_costs",
    "keep_live",
    "row_shares",
    "slowdown",
    "verdict",
]

PLANS_KEPT = 6  # generations (of every model) whose late reports are still matched to their units
SINGLE_MARGIN = 1.1  # a split this much slower than the best single device's prediction: re-plan
PREDICTION_OFF = 0.2  # a measured median this far from the prediction: re-plan with the corrected model
REPLAN_GAIN = 0.05  # a new plan on the nodes that run the live one must be predicted this much faster


def verdict(measured_s: float, predicted_s: float, single_s: float, split: bool) -> str:
    """What a generation's measured median says of its plan: ``slower-than-single`` (a split
    more than 10% slower than the best single device is predicted to be: never slower than one
    device), ``prediction-off`` (more than 20% from its own prediction), or "" (it holds)."""
    if split and single_s > 0 and measured_s > single_s * SINGLE_MARGIN:
        return "slower-than-single"
    if predicted_s > 0 and abs(measured_s / predicted_s - 1) > PREDICTION_OFF:
        return "prediction-off"
    return ""


def keep_live(live: Planned, new: Planned, graph: LayerGraph, cluster: Cluster) -> Planned | None:
    """``live`` re-predicted on ``cluster`` (the model ``new`` was planned with) when ``new``, on
    the same nodes, does not beat it by ``REPLAN_GAIN``; None: roll ``new`` out. A new generation
    drops the requests in flight, and a re-plan that only moves a schedule choice within the
    model's noise (the ``equal`` method re-planned after ``slower-than-single``) would otherwise
    repeat once per judgement."""
    now = replace(live, timeline=simulate(live.plan, graph, cluster))
    same = new.plan.units == live.plan.units
    return now if same or new.latency_s > now.latency_s * (1 - REPLAN_GAIN) else None


@dataclass
class _Node:
    reference: Device
    timed: dict[tuple[int, str], list[float]] = field(default_factory=dict)  # (generation, uid) -> [runs, s]
    fit: Fit | None = None
    updated: float = 0.0  # when the fit was last made
    seen: float = 0.0  # when the last report came


def _compute(device: Device) -> Device:
    """``device`` without its link: unit times do not depend on it, so a re-measured link keeps a fit."""
    return replace(device, profile=replace(device.profile, link=Link(1.0, 1.0, 0.0)))


def _plausible(entry: list[float]) -> bool:
    """[runs, seconds] from a node: whole runs, and a finite time of under a minute per run."""
    if len(entry) != 2:
        return False
    runs, seconds = entry
    return runs >= 1 and float(runs).is_integer() and math.isfinite(seconds) and 0 < seconds / runs < 60


class CostLearner:
    def __init__(self, half_life_s: float = 10.0, min_units: int = 3, max_age_s: float = 120.0) -> None:
        self.half_life_s = half_life_s  # earlier runs weigh half as much every this many seconds
        self.min_units = min_units
        self.max_age_s = max_age_s
        self.plans: dict[int, tuple[Plan, LayerGraph, list[str]]] = {}
        self._nodes: dict[str, _Node] = {}
        self._terms: dict[tuple[int, str], dict[str, tuple[float, ...]]] = {}

    def add_plan(
        self, generation: int, plan: Plan, graph: LayerGraph, nodes: list[str], live: Collection[int] = ()
    ) -> None:
        """``nodes[d]`` ran plan device ``d`` in ``generation``. The ``live`` generations (every
        model's) are kept whatever their age: a model that is not re-planned while another is, many
        times, still has its units' times matched."""
        self.plans[generation] = (plan, graph, list(nodes))
        for old in [g for g in sorted(self.plans) if g not in live and g != generation][:-PLANS_KEPT]:
            del self.plans[old]
        self._terms = {k: v for k, v in self._terms.items() if k[0] in self.plans}

    def observe(
        self, node: str, generation: int, unit_s: dict[str, list[float]], reference: Device, now: float
    ) -> Fit | None:
        """Take one report of ``node``'s unit times; returns its fit (None: not enough yet)."""
        state = self._nodes.get(node)
        if state is None or _compute(state.reference) != _compute(reference):
            state = self._nodes[node] = _Node(reference, seen=now)
            self._terms = {k: v for k, v in self._terms.items() if k[1] != node}
        terms = self._unit_terms(node, generation)
        fresh = {uid: v for uid, v in unit_s.items() if uid in terms and _plausible(v)}
        if not fresh:
            return self.fitted(node, now)
        decay = 0.5 ** (max(0.0, now - state.seen) / self.half_life_s)
        state.seen = now
        for entry in state.timed.values():
            entry[0] *= decay
            entry[1] *= decay
        for uid, (runs, seconds) in fresh.items():
            entry = state.timed.setdefault((generation, uid), [0.0, 0.0])
            entry[0] += runs
            entry[1] += seconds
        state.timed = {k: v for k, v in state.timed.items() if v[0] >= 0.01 and k[0] in self.plans}
        samples = [
            Sample(self._unit_terms(node, g)[uid], seconds / runs, runs)
            for (g, uid), (runs, seconds) in state.timed.items()
        ]
        fit = fit_factors(samples)
        if fit.units >= self.min_units:
            state.fit, state.updated = fit, now
        return self.fitted(node, now)

    def _unit_terms(self, node: str, generation: int) -> dict[str, tuple[float, ...]]:
        key = (generation, node)
        if key not in self._terms:
            plan, graph, nodes = self.plans.get(generation, (None, None, []))
            state = self._nodes.get(node)
            if plan is None or graph is None or node not in nodes or state is None:
                return {}
            self._terms[key] = unit_terms(plan, graph, nodes.index(node), state.reference)
        return self._terms[key]

    def fitted(self, node: str, now: float) -> Fit | None:
        state = self._nodes.get(node)
        if state is None or state.fit is None or now - state.updated > self.max_age_s:
            return None
        return state.fit

    def device(self, node: str, now: float) -> Device | None:
        """``node`` as its fresh fit measured it (None: no fit)."""
        fit, state = self.fitted(node, now), self._nodes.get(node)
        return fitted_device(state.reference, fit) if fit is not None and state is not None else None


class LatencyBook:
    """The last ``keep`` reported latencies of each of the last few generations."""

    def __init__(self, keep: int = 50) -> None:
        self.keep = keep
        self._ms: dict[int, deque[float]] = {}

    def add(self, generation: int, ms: float) -> None:
        """The generations reported on last are kept (a model's live generation stays while others
        are re-planned), not the highest numbers."""
        values = self._ms.pop(generation, None) or deque(maxlen=self.keep)
        values.append(ms)
        self._ms[generation] = values  # the most recently reported last
        for old in list(self._ms)[:-PLANS_KEPT]:
            del self._ms[old]

    def median(self, generation: int) -> tuple[float, int]:
        """(median ms, reports) of ``generation``; (0, 0) when none came."""
        values = self._ms.get(generation)
        return (statistics.median(values), len(values)) if values else (0.0, 0)


def best_single(graph: LayerGraph, cluster: Cluster) -> tuple[str, float]:
    """The device that runs the whole model fastest by ``cluster``'s cost model, and its
    predicted ms (("", 0) when none can hold it): what any split must beat."""
    try:
        single = plan_model(graph, cluster, "single", schedule="whole", deployable=True)
    except EdgeFlowError:
        return "", 0.0
    device = next((i for i in range(len(cluster)) if single.plan.on_device(i)), 0)
    return cluster.devices[device].id, single.latency_s * 1e3


def slowdown(plan: Plan, graph: LayerGraph, index: int, planned: Device, fitted: Device | None) -> float:
    """How much longer device ``index``'s units of ``plan`` take as ``fitted`` than as
    ``planned`` (1 when there is nothing to compare)."""
    before = sum(map(sum, unit_terms(plan, graph, index, planned).values()))
    after = sum(map(sum, unit_terms(plan, graph, index, fitted).values())) if fitted else 0.0
    return after / before if before > 0 and after > 0 else 1.0


def row_shares(plan: Plan, nodes: list[str]) -> dict[str, float]:
    """Each node's share of the plan's rows (``nodes[d]`` runs plan device ``d``)."""
    rows = {n: sum(len(u.rows) for u in plan.on_device(i)) for i, n in enumerate(nodes)}
    total = sum(rows.values()) or 1
    return {n: r / total for n, r in rows.items()}


def costs_report(
    generation: int,
    planned: Planned,
    cluster: Cluster,
    fits: Mapping[str, Fit | None],
    unfitted: str,
    shares: Mapping[str, float],
    measured: tuple[float, int],
    single: tuple[str, float],
    message_flop: float,
    alone: str = "",
    judged: bool = False,
    replanning: bool = False,
) -> Costs:
    """The retained ``controller/costs`` document: each node of ``cluster`` as it is planned
    (``fitted`` where ``fits`` has a fit, else ``unfitted``), the plan's predicted latency beside
    the ``(median ms, requests)`` measured, the best single device ``(node, ms)``, the message work,
    the node measured faster alone than the split (:mod:`controller.control.alone`), whether the
    generation has been ``judged`` and whether a re-plan is due or rolling (``replanning``)."""
    nodes = {
        d.id: costs_of(d, "fitted" if fits.get(d.id) else unfitted, fits.get(d.id), shares.get(d.id, 0.0))
        for d in cluster.devices
    }
    return Costs(
        generation,
        round(planned.latency_s * 1e3, 2),
        nodes,
        round(measured[0], 2),
        measured[1],
        round(single[1], 2),
        single[0],
        round(message_flop / 1e6, 4),
        alone,
        judged,
        replanning,
    )


def costs_of(device: Device, source: str, fit: Fit | None = None, share: float = 0.0) -> NodeCosts:
    """How ``device`` is published: its profile's figures and its load apart (a fitted device
    has none: the load is in its rates)."""
    p = device.profile
    return NodeCosts(
        source=source,
        gflops=round(p.gflops, 3),
        kind_factors={k: round(v, 4) for k, v in sorted(p.kind_factors.items())},
        weights_gbps=round(p.weights_gbps, 3),
        op_overhead_ms=round(p.op_overhead_ms, 4),
        up_mbps=round(p.link.up_mbps, 2),
        down_mbps=round(p.link.down_mbps, 2),
        latency_ms=round(p.link.latency_ms, 3),
        load=round(device.load, 3),
        share=round(share, 4),
        units=fit.units if fit else 0,
        runs=round(fit.runs, 1) if fit else 0.0,
        error_before=round(fit.error_before, 4) if fit else 0.0,
        error_after=round(fit.error_after, 4) if fit else 0.0,
    )


def device_of_costs(device: Device, costs: NodeCosts) -> Device:
    """``device`` (the cluster file's) with the published cost model in place of its figures."""
    link = Link(costs.up_mbps, costs.down_mbps, costs.latency_ms)
    profile = replace(
        device.profile,
        gflops=costs.gflops,
        kind_factors=dict(costs.kind_factors),
        weights_gbps=costs.weights_gbps,
        op_overhead_ms=costs.op_overhead_ms,
        link=link,
    )
    return replace(device, profile=profile, load=costs.load)
