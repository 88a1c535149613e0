"""Fitting a device's cost model to the measured times of the units it ran (pure).

The cost model predicts a unit's time as a sum of terms (:func:`~controller.planner.costmodel.compute_terms`
per piece): the per-unit overhead, the pass over the layer's weights, and the rows' arithmetic at
the device's rate for the layer's op kind. A node reports how long each of its units took; this
module finds, for each term, the factor by which the device is slower (> 1) or faster (< 1) than
the reference it was predicted with:

    measured(u) ≈ Σ_j m_j · predicted_j(u)      for the terms j in :data:`TERMS`

The estimator is ridge-regularised, bounded least squares:

    minimise  Σ_u w_u · ((Σ_j m_j p_uj - t_u) / t̄)²  +  λ · Σ_j (m_j - c)²,   m_j ∈ [0.02, 50]

- residuals in seconds (scaled by the mean unit time t̄, so that λ means the same for any
  model): what a request waits for is the sum of its units' times, so the units that take
  the time are the ones to get right. A relative residual would let a 50 µs unit that happened
  to be pre-empted once (a scheduler tick, a CPU quota running out) pull the fit as hard as a
  50 ms one;
- ``w_u`` is the number of runs behind unit u's mean time (a unit seen once weighs little);
- the prior (λ = 0.5 + 0.5% of all runs) keeps a term no unit exercises, or one the data cannot
  tell apart from another, at the node's overall slowdown ``c`` (the one factor that best
  explains all its units: a throttled board is slow at everything) instead of anywhere the
  optimiser likes: noise in the many small units of a model must not fit a weight pass 50x
  faster than the benchmark. It grows with the data, so that only a term that explains much
  of it moves far from ``c``.

:func:`fitted_device` turns the factors into a device profile the planner uses like any other:
rates divided by their factor, the overhead multiplied by its own. The load at the time of
measurement is in the times, so the fitted device carries no separate load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
from scipy.optimize import lsq_linear, minimize_scalar

from controller.graph.layers import LayerGraph
from controller.planner.costmodel import compute_terms
from controller.planner.plan import Plan
from controller.planner.simulate import simulate
from edgeflowd.core.units import halo_first
from edgeflowd.profiles.devices import Cluster, Device

__all__ = [
    "TERMS",
    "Case",
    "Fit",
    "Sample",
    "fit_factors",
    "fit_message_work",
    "fitted_device",
    "term_of",
    "unit_terms",
    "with_message_work",
]

TERMS = ("overhead", "weights", "conv", "dwconv", "matmul", "other")
"""What is fitted: the per-unit overhead, the weight pass, and the arithmetic rate of dense
convolutions, depthwise convolutions, matrix products, and of everything else together (pooling,
element-wise, resampling, concatenation: memory-bound work that moves together)."""

_BOUNDS = (0.02, 50.0)


def term_of(kind: str) -> str:
    """The term a layer kind's arithmetic is fitted under."""
    return kind if kind in ("conv", "dwconv", "matmul") else "other"


@dataclass(frozen=True)
class Sample:
    """One unit's measurements: its predicted seconds per term (on the reference device), its
    measured mean seconds, and the number of runs behind that mean."""

    predicted: tuple[float, ...]  # aligned with TERMS
    seconds: float
    runs: float


@dataclass(frozen=True)
class Fit:
    factors: dict[str, float]  # term -> measured / predicted (1: as the reference)
    units: int  # samples the fit used
    runs: float
    error_before: float  # median |relative error| of the reference's predictions
    error_after: float  # and of the fitted model's

    def slowdown(self, predicted: Sequence[float]) -> float:
        """Fitted seconds over reference seconds for a unit (or a sum of units) of these terms."""
        total = sum(predicted)
        fitted = sum(self.factors[t] * p for t, p in zip(TERMS, predicted, strict=True))
        return fitted / total if total > 0 else 1.0


def unit_terms(plan: Plan, graph: LayerGraph, device_index: int, device: Device) -> dict[str, tuple[float, ...]]:
    """Predicted seconds per term of every unit of ``plan`` on device ``device_index``, were it
    ``device``: the per-piece terms of a halo-first unit summed, as the simulator charges them."""
    device_of = {u.uid: u.device for u in plan.units}
    local: Callable[[str], bool] = partial(_same, device_of, device_index)
    out = {}
    for unit in plan.on_device(device_index):
        layer = graph[unit.layer]
        column = TERMS.index(term_of(layer.kind))
        terms = [0.0] * len(TERMS)
        pieces, _ = halo_first(unit, local)
        for rows in pieces:
            overhead, weights, arithmetic = compute_terms(layer, len(rows), device)
            terms[0] += overhead
            terms[1] += weights
            terms[column] += arithmetic
        out[unit.uid] = tuple(terms)
    return out


def _same(device_of: dict[str, int], device: int, consumer: str) -> bool:
    return device_of.get(consumer, -1) == device


def _median_error(samples: Sequence[Sample], factors: np.ndarray) -> float:
    errors = [abs(float(np.dot(s.predicted, factors)) / s.seconds - 1) for s in samples]
    return float(np.median(errors)) if errors else 0.0


def fit_factors(samples: Sequence[Sample], prior: float = 0.5, prior_per_run: float = 0.005) -> Fit:
    """The factors that best explain ``samples`` (see the module docstring); samples with no
    predicted time or no measured time are skipped."""
    usable = [s for s in samples if s.seconds > 0 and sum(s.predicted) > 0 and s.runs > 0]
    n = len(TERMS)
    scale = float(np.mean([s.seconds for s in usable])) if usable else 1.0
    prior += prior_per_run * sum(s.runs for s in usable)
    rows = [np.sqrt(s.runs) * np.asarray(s.predicted) / scale for s in usable]
    targets = [np.sqrt(s.runs) * s.seconds / scale for s in usable]
    # The prior's centre: the node's overall slowdown (one factor for every term, by least squares).
    totals = np.array([row.sum() for row in rows])
    centre = float(np.clip(np.dot(totals, targets) / np.dot(totals, totals), *_BOUNDS)) if rows else 1.0
    a = np.vstack([*rows, np.sqrt(prior) * np.eye(n)]) if rows else np.sqrt(prior) * np.eye(n)
    b = np.concatenate([np.asarray(targets, dtype=float), np.full(n, np.sqrt(prior) * centre)])
    solution = lsq_linear(a, b, bounds=_BOUNDS, method="bvls")
    factors = np.asarray(solution.x, dtype=float)
    return Fit(
        {t: round(float(f), 4) for t, f in zip(TERMS, factors, strict=True)},
        len(usable),
        float(sum(s.runs for s in usable)),
        _median_error(usable, np.ones(n)),
        _median_error(usable, factors),
    )


def fitted_device(reference: Device, fit: Fit) -> Device:
    """``reference`` as the fit measured it: each rate divided by its factor, the per-unit
    overhead multiplied by its own, and no separate load (the measured times include it)."""
    profile = reference.profile
    conv = reference.rate("conv") / fit.factors["conv"]
    factors = {
        kind: reference.rate(kind) / fit.factors[term_of(kind)] / conv for kind in {*profile.kind_factors, "unknown"}
    }
    fitted = replace(
        profile,
        gflops=conv / 1e9,
        kind_factors=factors,
        weights_gbps=reference.weights_rate() / fit.factors["weights"] / 1e9,
        op_overhead_ms=profile.op_overhead_ms * fit.factors["overhead"],
    )
    return replace(reference, profile=fitted, load=0.0)


# -- what the unit times do not show: handling a message ---------------------------------------
#
# A unit's time covers its arithmetic and the frames it makes. Receiving a frame costs the node
# work outside any unit: the network thread reads it, the engine decodes it and assembles the
# slice, and only then is the next unit ready. On a slow node that work is slow too, and a split
# plan pays it on every halo it waits for. It is fitted from what the requesters measure: one
# figure for the cluster, the work (in FLOPs of dense convolution) that handling a message costs,
# which each node pays at its own rate, as part of its link's per-message latency.


@dataclass(frozen=True)
class Case:
    """One plan as it was planned (``cluster``: without any message work) and its measured
    median latency."""

    plan: Plan
    graph: LayerGraph
    cluster: Cluster
    measured_s: float


def with_message_work(cluster: Cluster, flop: float) -> Cluster:
    """``cluster`` with each device's per-message latency raised by ``flop`` FLOPs at its conv rate."""
    if flop <= 0:
        return cluster
    devices = []
    for d in cluster.devices:
        link = replace(d.link, latency_ms=d.link.latency_ms + flop / d.rate("conv") * 1e3)
        devices.append(replace(d, profile=replace(d.profile, link=link)))
    return cluster.with_devices(tuple(devices))


def fit_message_work(cases: Sequence[Case]) -> float:
    """The message work (FLOPs) that brings the simulator's latency of every case closest to
    its measurement (least squares of the log ratio; bounded: handling a message takes at most
    20 ms on the fastest device). 0 when the plans are no slower than predicted. Only plans that
    send messages between devices say anything of it: the caller gives split plans only."""
    cases = [c for c in cases if c.measured_s > 0]
    if not cases:
        return 0.0

    def error(flop: float) -> float:
        return sum(
            math.log(simulate(c.plan, c.graph, with_message_work(c.cluster, flop)).latency_s / c.measured_s) ** 2
            for c in cases
        )

    if all(simulate(c.plan, c.graph, c.cluster).latency_s >= c.measured_s for c in cases):
        return 0.0
    top = 0.02 * max(d.rate("conv") for c in cases for d in c.cluster.devices)
    best = minimize_scalar(error, bounds=(0.0, top), method="bounded", options={"xatol": top * 1e-4})
    return float(best.x)
