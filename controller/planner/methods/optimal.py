"""Exact optimum of the layer-synchronous model the progressive LP relaxes, by MILP (scipy
``milp``, HiGHS branch and bound), for graphs small enough to solve.

Model: integer rows ``x[l,d]`` in device order (device ``d`` holds rows ``[S[l,d], S[l,d] +
x[l,d])``), binaries ``b[l,d]`` (the unit exists), finish times ``F[l,d]``. A unit finishes after
its device's previous layer and after every input: local inputs when the producer's unit on the
same device finishes, remote ones when the producer's unit on the sending device finishes plus
latency and the transfer of the rows it lacks (the same overhang linearisation as the LP, here
solved jointly over all layers instead of one layer at a time). The makespan includes sending the
outputs to the client. :func:`model_latency` evaluates a given partition in the same model, so
``progressive`` and ``optimal`` are compared on one objective: the optimality gap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from controller.graph.layers import LayerGraph
from controller.planner.costmodel import comm_s_per_byte, per_row_s, row_bytes, unit_fixed_s
from controller.planner.partitions import Partition
from edgeflowd.core.rows import RowRange
from edgeflowd.errors import PlanError
from edgeflowd.profiles.devices import Cluster

__all__ = ["MAX_DEVICES", "MAX_LAYERS", "Solution", "model_latency", "optimal", "solve_optimal"]

MAX_LAYERS = 16
MAX_DEVICES = 4
TIME_LIMIT_S = 60.0


@dataclass
class _Model:
    n_var: int = 0
    integer: list[int] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    rows: list[tuple[dict[int, float], float, float]] = field(default_factory=list)

    def var(self, lo: float, hi: float, integer: bool = False) -> int:
        self.lower.append(lo)
        self.upper.append(hi)
        self.integer.append(1 if integer else 0)
        self.n_var += 1
        return self.n_var - 1

    def add(self, coefs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coefs, lo, hi))


def _plus(*terms: dict[int, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for t in terms:
        for k, v in t.items():
            out[k] = out.get(k, 0.0) + v
    return out


@dataclass(frozen=True)
class Solution:
    objective_s: float
    rows: dict[str, tuple[RowRange, ...]]
    proven: bool  # False when the time limit stopped branch and bound first


def _solve(
    graph: LayerGraph, cluster: Cluster, fixed: Mapping[str, tuple[RowRange, ...]] | None, time_limit_s: float
) -> Solution:
    layers, n = graph.compute_layers, len(cluster)
    if len(layers) > MAX_LAYERS or n > MAX_DEVICES:
        raise PlanError(
            f"optimal: {len(layers)} layers on {n} devices is beyond the MILP's reach "
            f"(at most {MAX_LAYERS} layers and {MAX_DEVICES} devices)"
        )
    m = _Model()
    big = 10.0 * sum(
        per_row_s(layer, min(cluster.devices, key=lambda d: d.rate("conv"))) * layer.height for layer in layers
    )
    big += (
        10.0
        * sum(layer.out_bytes * comm_s_per_byte(cluster.devices[0].link, cluster.devices[0].link) for layer in layers)
        + 10.0
    )
    x = {(ly.name, d): m.var(0, ly.height, True) for ly in layers for d in range(n)}
    b = {(ly.name, d): m.var(0, 1, True) for ly in layers for d in range(n)}
    f = {(ly.name, d): m.var(0, big) for ly in layers for d in range(n)}
    z = m.var(0, big)
    for ly in layers:
        m.add({x[(ly.name, d)]: 1.0 for d in range(n)}, ly.height, ly.height)
        if not ly.splittable:
            m.add({b[(ly.name, d)]: 1.0 for d in range(n)}, 1, 1)
        for d in range(n):
            m.add({x[(ly.name, d)]: 1.0, b[(ly.name, d)]: -ly.height}, -np.inf, 0)  # x <= H b
            m.add({x[(ly.name, d)]: 1.0, b[(ly.name, d)]: -1.0}, 0, np.inf)  # x >= b
            if not ly.splittable:
                m.add({x[(ly.name, d)]: 1.0, b[(ly.name, d)]: -ly.height}, 0, 0)
            if fixed is not None:
                r = fixed[ly.name][d]
                m.lower[x[(ly.name, d)]] = m.upper[x[(ly.name, d)]] = float(len(r))
    prev: dict[int, str] = {}
    for ly in layers:
        for d in range(n):
            dev = cluster.devices[d]
            work = {x[(ly.name, d)]: per_row_s(ly, dev), b[(ly.name, d)]: unit_fixed_s(ly, dev)}
            fin = {f[(ly.name, d)]: 1.0}
            neg_work = {k: -v for k, v in work.items()}
            if d in prev:  # after the device's previous layer
                m.add(_plus(fin, neg_work, {f[(prev[d], d)]: -1.0}), 0, np.inf)
            m.add(_plus(fin, neg_work), 0, np.inf)
            start = {j: 1.0 for j in range(d)}  # positions: S[l,d] = sum of x[l,j], j < d
            for producer, rule in zip(ly.inputs, ly.rules, strict=True):
                p = graph[producer]
                source = p.is_source
                src_links = [cluster.client] if source else [cluster.devices[j].link for j in range(n) if j != d]
                if not src_links:
                    continue
                beta = row_bytes(p) * max(comm_s_per_byte(s, dev.link) for s in src_links)
                lat = (max(s.latency_ms for s in src_links) + dev.link.latency_ms) / 1e3
                ratio, reach_lo, reach_hi = rule.affine()  # needed: [ratio*start + lo, ratio*stop + hi)
                if rule.pattern == "whole":
                    remote = {} if source else {x[(producer, d)]: -beta}
                    const = beta * p.height
                elif source:
                    remote, const = {x[(ly.name, d)]: beta * ratio}, beta * (reach_hi - reach_lo)
                else:
                    u, v = m.var(0, np.inf), m.var(0, np.inf)
                    # u >= S[p,d] - needed.start ; v >= needed.stop - (S[p,d] + x[p,d])
                    s_p = {x[(producer, j)]: 1.0 for j in range(d)}
                    s_l = {x[(ly.name, j)]: ratio * c for j, c in start.items()}
                    m.add(_plus({u: 1.0}, {k: -c for k, c in s_p.items()}, s_l), reach_lo, np.inf)
                    e_l = _plus(s_l, {x[(ly.name, d)]: ratio})
                    m.add(
                        _plus({v: 1.0}, {k: -c for k, c in e_l.items()}, s_p, {x[(producer, d)]: 1.0}),
                        reach_hi,
                        np.inf,
                    )
                    remote, const = {u: beta, v: beta}, 0.0
                neg_remote = {k: -c for k, c in remote.items()}
                senders = [None] if source else [j for j in range(n) if j != d]
                for j in senders:
                    # F[l,d] >= F[p,j] + lat + comm + work, when both units exist
                    coefs = _plus(fin, neg_work, neg_remote, {b[(ly.name, d)]: -big})
                    rhs = lat + const - big
                    if j is not None:
                        coefs = _plus(coefs, {f[(producer, j)]: -1.0, b[(producer, j)]: -big})
                        rhs -= big
                    m.add(coefs, rhs, np.inf)
                if not source:  # local part waits for the local producer unit
                    m.add(_plus(fin, neg_work, {f[(producer, d)]: -1.0}), 0, np.inf)
            prev[d] = ly.name
    for out in graph.outputs:
        o = graph[out]
        for d in range(n):
            link = cluster.devices[d].link
            lat = (link.latency_ms + cluster.client.latency_ms) / 1e3
            beta = row_bytes(o) * comm_s_per_byte(link, cluster.client)
            m.add({z: 1.0, f[(out, d)]: -1.0, x[(out, d)]: -beta, b[(out, d)]: -lat}, 0, np.inf)
    a = lil_matrix((len(m.rows), m.n_var))
    lo, hi = np.empty(len(m.rows)), np.empty(len(m.rows))
    for i, (coefs, lo_i, hi_i) in enumerate(m.rows):
        for col, coef in coefs.items():
            a[i, col] = coef
        lo[i], hi[i] = lo_i, hi_i
    cost = np.zeros(m.n_var)
    cost[z] = 1.0
    result = milp(
        cost,
        constraints=LinearConstraint(a.tocsr(), lo, hi),
        integrality=np.array(m.integer),
        bounds=Bounds(np.array(m.lower), np.array(m.upper)),
        options={"time_limit": time_limit_s},
    )
    if result.x is None:
        raise PlanError(f"optimal: the MILP found no solution ({result.message})")
    ranges: dict[str, tuple[RowRange, ...]] = {}
    for ly in layers:
        rows, start_row = [], 0
        for d in range(n):
            k = round(result.x[x[(ly.name, d)]])
            rows.append(RowRange(start_row, start_row + k) if k else RowRange(0, 0))
            start_row += k
        ranges[ly.name] = tuple(rows)
    return Solution(float(result.fun), ranges, proven=result.status == 0)


def optimal(graph: LayerGraph, cluster: Cluster) -> Partition:
    return Partition(len(cluster), _solve(graph, cluster, None, TIME_LIMIT_S).rows)


def solve_optimal(graph: LayerGraph, cluster: Cluster, time_limit_s: float = 60.0) -> Solution:
    return _solve(graph, cluster, None, time_limit_s)


def model_latency(graph: LayerGraph, cluster: Cluster, partition: Partition) -> float | None:
    """``partition``'s makespan in the MILP's model, or None when the model cannot express it
    (overlapping fused-tile ranges, or ranges out of device order)."""
    for ranges in partition.rows.values():
        cursor = 0
        for r in ranges:
            if not r.empty and r.start != cursor:
                return None
            cursor = r.stop if not r.empty else cursor
    try:
        return _solve(graph, cluster, partition.rows, TIME_LIMIT_S).objective_s
    except PlanError:
        return None
