"""EdgeFlow's progressive partitioner: layers in topological order, one linear program per layer.

With the producers' units fixed (their rows, devices and finish times), the split of layer ``l``
that finishes it earliest solves, over the rows ``x_d`` of each device ``d`` (devices in a fixed
order, so device ``d`` gets rows ``[S_d, S_d + x_d)`` with ``S_d = sum of x_j for j before d``)::

    minimise T
    T >= max(free_d, local_ready_d) + a_d x_d + o_d
    T >= remote_ready_d + sum_p beta_pd * remote_pd + latency_d + a_d x_d + o_d
    sum_d x_d = H,   x >= 0

where ``a_d`` is the time per row, ``o_d`` the per-unit overhead, and ``remote_pd`` the rows of
producer ``p`` that ``d`` reads but does not hold. The integer program has integer ``x`` and
``remote_pd = |needed_pd(x) \\ held_pd|``, a non-convex function of the position ``S_d``. The
relaxation: rows are continuous, and the set difference is linearised as the two overhangs
``u >= held.start - needed.start``, ``v >= needed.stop - held.stop``, ``u, v >= 0`` (exact when
the needed range overlaps what ``d`` holds, an over-estimate otherwise), with ``needed`` an affine
function of ``x`` through the row map (stride, padding, kernel span, upsampling factor). HiGHS
solves it; the rows are rounded by largest remainder so they still sum to ``H``, and the rounded
split is re-evaluated with the exact cost model.

Devices whose constant costs (latency, waiting for inputs) make any share a loss get ``x_d = 0``
but still bound ``T`` in the LP, so they are dropped and the LP is solved again. Each layer also
considers every single device, so a layer is never split when one device finishes it sooner;
unsplittable layers go to the device that finishes them first. Finally the pass is run on all
devices (and, on small clusters, on each fastest subset) and the plan the simulator predicts
fastest wins, the best single device included: when distributing does not pay, the result
degrades to one device or a subset, never below it.

Fused blocks (EdgeFlow's pass; the paper's ``progressive`` goes one layer a step): from each
layer on, the pass also tries runs of the next 2, 4 and 8 splittable layers fused
(:mod:`controller.planner.methods.blocks`), their outputs split as the block's entry reads; a block
and the best single-layer candidate are rolled out to the same layer, and the earlier finish is
committed, all of the block's layers at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
from scipy.optimize import linprog

from controller.graph.layers import Layer, LayerGraph
from controller.planner.costmodel import comm_s_per_byte, compute_s, per_row_s, row_bytes, unit_fixed_s
from controller.planner.methods.baselines import chain, coedge, equal, ftp, single
from controller.planner.methods.blocks import BLOCK_LENGTHS, block_placements, fusable_run
from controller.planner.methods.evaluate import fits_memory, predicted_latency
from controller.planner.methods.state import Placement, PlanState
from controller.planner.partitions import Partition, split_rows
from edgeflowd.core.slicing import RowRule
from edgeflowd.errors import PlanError
from edgeflowd.profiles.devices import Cluster

__all__ = ["edgeflow_partition", "progressive_partition", "progressive_pass"]


def _affine(rule: RowRule, m: int, i: int) -> tuple[np.ndarray, float, np.ndarray, float]:
    """needed.start and needed.stop of device position ``i`` as affine functions of x."""
    s = np.zeros(m)
    s[:i] = 1.0  # S_i
    e = s.copy()
    e[i] = 1.0  # S_i + x_i
    ratio, lo, hi = rule.affine()
    return ratio * s, lo, ratio * e, hi


def _solve(state: PlanState, layer: Layer, devices: list[int]) -> np.ndarray | None:
    """Continuous rows per device in ``devices`` (ascending ids) minimising the layer's finish."""
    m = len(devices)
    n_aux = 2 * m * len(layer.inputs)
    n_var = m + 1 + n_aux  # x..., T, (u, v)...
    t_col = m
    a_ub: list[np.ndarray] = []
    b_ub: list[float] = []
    aux = m + 1
    for i, d in enumerate(devices):
        dev = state.cluster.devices[d]
        a, o = per_row_s(layer, dev), unit_fixed_s(layer, dev)
        local_ready = remote_ready = comm_const = 0.0
        comm = np.zeros(n_var)
        remote_any = False
        for producer, rule in zip(layer.inputs, layer.rules, strict=True):
            p = state.graph[producer]
            holders = state.holders(producer)
            held = next((r for h, r in holders if h == d), None)
            if held is not None:
                local_ready = max(local_ready, state.finish[producer][d])
            others = [h for h, _ in holders if h != d]
            if not others:
                continue
            remote_any = True
            remote_ready = max(remote_ready, *(state.finish[producer][h] for h in others))
            links = [state.link(h) for h in others]
            beta = row_bytes(p) * max(comm_s_per_byte(link, state.link(d)) for link in links)
            comm_const += (max(link.latency_ms for link in links) + state.link(d).latency_ms) / 1e3
            if rule.pattern == "whole":
                comm_const += beta * (p.height - (len(held) if held is not None else 0))
                continue
            s_coef, s_const, e_coef, e_const = _affine(rule, m, i)
            if held is None:
                comm[:m] += beta * (e_coef - s_coef)
                comm_const += beta * (e_const - s_const)
                continue
            u, v = aux, aux + 1
            aux += 2
            row = np.zeros(n_var)  # held.start - needed.start <= u
            row[:m] = -s_coef
            row[u] = -1.0
            a_ub.append(row)
            b_ub.append(s_const - held.start)
            row = np.zeros(n_var)  # needed.stop - held.stop <= v
            row[:m] = e_coef
            row[v] = -1.0
            a_ub.append(row)
            b_ub.append(held.stop - e_const)
            comm[u] += beta
            comm[v] += beta
        row = np.zeros(n_var)
        row[i], row[t_col] = a, -1.0
        a_ub.append(row)
        b_ub.append(-(max(state.free[d], local_ready) + o))
        if remote_any:
            row = comm.copy()
            row[i] += a
            row[t_col] = -1.0
            a_ub.append(row)
            b_ub.append(-(max(state.free[d], remote_ready) + comm_const + o))
    cost = np.zeros(n_var)
    cost[t_col] = 1.0
    cost[m + 1 :] = 1e-9  # keeps the overhangs tight without trading against T
    a_eq = np.zeros((1, n_var))
    a_eq[0, :m] = 1.0
    result = linprog(
        cost,
        A_ub=np.array(a_ub),
        b_ub=np.array(b_ub),
        A_eq=a_eq,
        b_eq=[float(layer.height)],
        bounds=[(0, None)] * n_var,
        method="highs",
    )
    return result.x[:m] if result.status == 0 else None


def _lp_placements(state: PlanState, layer: Layer, eligible: list[int]) -> list[Placement]:
    devices = sorted(eligible)
    found: list[Placement] = []
    while len(devices) > 1:
        x = _solve(state, layer, devices)
        if x is None:
            break
        shares = [0.0] * len(state.cluster)
        for d, rows in zip(devices, x, strict=True):
            shares[d] = max(0.0, float(rows))
        found.append(state.evaluate(layer, split_rows(layer.height, shares)))
        keep = [d for d, rows in zip(devices, x, strict=True) if rows >= 0.5]
        if len(keep) == len(devices):
            break
        devices = keep
    return found


def _stable_shares(state: PlanState, layer: Layer, eligible: list[int]) -> list[list[float]]:
    """Splits that keep row boundaries where they were: each device's share of the first split
    producer, and shares in proportion to capacity. Boundaries that do not move need only halos
    exchanged, which a per-layer LP cannot see coming."""
    n = len(state.cluster)
    capacity = [state.cluster.devices[d].rate(layer.kind) if d in eligible else 0.0 for d in range(n)]
    shares = [capacity]
    for producer in layer.inputs:
        held = state.rows.get(producer, ())
        follow = [float(len(r)) if d in eligible else 0.0 for d, r in enumerate(held)]
        if sum(follow) > 0 and sum(1 for f in follow if f) > 1:
            shares.append(follow)
            break
    return shares


LOOKAHEAD = 3
"""Layers a candidate split is rolled forward (each following its producer's split) before it is
judged: the earliest finish of one layer alone favours splits whose shifted boundaries cost
halo traffic in the layers after it."""
MAX_HORIZON = 4
"""Extra layers a rollout may go on to reach the consumers of a skip connection."""
SHORTLIST = 3
"""Candidates rolled out besides the stable splits: those that finish the layer first."""
LP_MIN_S = 2e-3
"""Layers quicker than this on one device are not worth an LP: the stable splits and the single
devices are the only candidates that can pay off against a message's latency."""


def _single_candidates(state: PlanState, layer: Layer, eligible: list[int]) -> list[int]:
    """Devices worth trying alone: all of them for an unsplittable layer; for a splittable one,
    those that hold its inputs and the fastest (others only add transfers to a slower device)."""
    if not layer.splittable:
        return eligible
    near = {d for producer in layer.inputs for d, _ in state.holders(producer) if d in eligible}
    return sorted(near | {eligible[0]})


def rollout_horizons(graph: LayerGraph) -> list[int]:
    """For each compute layer, the index one past the last layer a rollout from it must reach:
    ``LOOKAHEAD`` layers, and at least every consumer of its output (a skip connection's reader
    may lie far ahead in topological order, and so does the cost of where its rows are),
    capped at ``MAX_HORIZON`` layers."""
    layers = graph.compute_layers
    index = {layer.name: i for i, layer in enumerate(layers)}
    last = list(range(len(layers)))
    for i, layer in enumerate(layers):
        for producer in layer.inputs:
            if producer in index:
                last[index[producer]] = max(last[index[producer]], i)
    return [min(max(i + LOOKAHEAD, last[i]) + 1, i + 1 + MAX_HORIZON, len(layers)) for i in range(len(layers))]


def _rollout(
    state: PlanState,
    layers: list[Layer],
    i: int,
    placements: list[Placement],
    allowed: list[int],
    stop: int,
) -> float:
    """The end of layer ``stop - 1`` when ``placements`` place ``layers[i:]`` and every layer
    after them follows its producer's split."""
    trial = state.fork()
    for layer, placement in zip(layers[i:], placements, strict=False):
        trial.commit(layer, placement)
    end = placements[-1].end
    for layer in layers[i + len(placements) : stop]:
        if layer.splittable and layer.height > 1:
            shares = _stable_shares(trial, layer, allowed)[-1]
            nxt = trial.evaluate(layer, split_rows(layer.height, shares))
        else:  # the devices that hold its inputs, or the fastest
            near = {d for producer in layer.inputs for d, _ in trial.holders(producer) if d in allowed} or {allowed[0]}
            nxt = min((trial.evaluate(layer, trial.single(layer, d)) for d in sorted(near)), key=lambda p: p.end)
        trial.commit(layer, nxt)
        end = nxt.end
    return end


def _blocks(
    state: PlanState, layers: list[Layer], i: int, eligible: list[int], users: Mapping[str, list[str]]
) -> list[list[Placement]]:
    """Fused blocks starting at ``layers[i]``, of every length in :data:`BLOCK_LENGTHS` that the
    run of splittable layers allows, their outputs split as ``layers[i]``'s producer is."""
    run = fusable_run(layers, i)
    shares = _stable_shares(state, layers[i], eligible)[-1]  # the block keeps its entry's boundaries
    found = []
    for k in BLOCK_LENGTHS:
        if k > run:
            break
        placed = block_placements(state, state.graph, layers[i : i + k], shares, users, eligible)
        if placed is not None:
            found.append(placed)
    return found


def progressive_pass(graph: LayerGraph, cluster: Cluster, allowed: list[int], blocks: bool = True) -> Partition:
    """One progressive pass that places rows only on ``allowed`` devices (where memory permits);
    with ``blocks``, each step may place a fused block (:mod:`.blocks`) instead of one layer."""
    state = PlanState(graph, cluster)
    layers = graph.compute_layers
    horizon = rollout_horizons(graph)
    users = graph.consumers()
    i = 0
    while i < len(layers):
        layer = layers[i]
        fits = state.eligible(layer)
        eligible = [d for d in fits if d in allowed] or fits
        candidates = [state.evaluate(layer, state.single(layer, d)) for d in _single_candidates(state, layer, eligible)]
        stable: list[Placement] = []
        if layer.splittable and layer.height > 1 and len(eligible) > 1:
            stable = [
                state.evaluate(layer, split_rows(layer.height, s)) for s in _stable_shares(state, layer, eligible)
            ]
            if compute_s(layer, layer.height, cluster.devices[eligible[0]]) >= LP_MIN_S:
                candidates += _lp_placements(state, layer, eligible)
        # Roll out the stable splits and the few that finish this layer first: a split far
        # behind now rarely catches up, a stable one often does.
        shortlist = stable + sorted(candidates, key=lambda p: p.end)[:SHORTLIST]
        best = [min(shortlist, key=lambda p: _rollout(state, layers, i, [p], eligible, horizon[i]))]
        fused = _blocks(state, layers, i, eligible, users) if blocks and stable and len(best[0].finish) > 1 else []
        if fused:  # a fused block against the best layer-by-layer split, both rolled out as far
            stop = max(horizon[i + len(b) - 1] for b in fused)
            best = min([best, *fused], key=lambda b: _rollout(state, layers, i, b, eligible, stop))
        for layer, placement in zip(layers[i:], best, strict=False):
            state.commit(layer, placement)
        i += len(best)
    return Partition(len(cluster), {layer.name: state.rows[layer.name] for layer in layers})


def subset_sizes(n: int) -> list[int]:
    """Sizes of the fastest-device subsets to try: one device and all of them; on small clusters
    (where a pass is cheap) every size."""
    return sorted({1, n} | ({(n + 1) // 2} if n <= 4 else set()))


def _best(graph: LayerGraph, cluster: Cluster, makers: list[Callable[[], Partition]]) -> Partition:
    """The partition with the lowest simulated latency (first wins ties); makers that cannot
    plan (e.g. no single device holds the model) are skipped."""
    best: tuple[float, int, Partition] | None = None
    why = "no plan fits the devices' memory budgets"
    for i, make in enumerate(makers):
        try:
            partition = make()
        except PlanError as exc:
            why = str(exc)  # the progressive passes, tried last, name the layer that does not fit
            continue
        if not fits_memory(graph, cluster, partition):  # the simple plans ignore memory budgets
            continue
        latency = predicted_latency(graph, cluster, partition)
        if best is None or latency < best[0]:
            best = (latency, i, partition)
    if best is None:
        raise PlanError(why)
    return best[2]


def _passes(graph: LayerGraph, cluster: Cluster, blocks: bool) -> list[Callable[[], Partition]]:
    n = len(cluster)
    order = sorted(range(n), key=lambda d: (-cluster.devices[d].rate("conv"), d))
    return [partial(progressive_pass, graph, cluster, order[:k], blocks) for k in subset_sizes(n) if k > 1 or n == 1]


def progressive_partition(graph: LayerGraph, cluster: Cluster) -> Partition:
    """The paper's progressive LP on its own, one layer per step (no fused blocks): the best of
    the passes over all devices (and, on clusters of up to 4, over the fastest half) and of the
    best single device, so that it is never predicted slower than one device."""
    return _best(graph, cluster, [partial(single, graph, cluster), *_passes(graph, cluster, blocks=False)])


def edgeflow_partition(graph: LayerGraph, cluster: Cluster) -> Partition:
    """EdgeFlow's plan: the best, by the simulator, of the progressive passes over fused blocks
    and layers, and of the classic strategies (one device, equal and capacity-proportional
    splits, fused tiles, chain). The
    cost model decides, per model and cluster, which structure wins; where a progressive plan
    is best (the benchmark reports how often), EdgeFlow is strictly faster than all of them."""
    seeds = [partial(f, graph, cluster) for f in (single, coedge, equal, ftp, chain)]
    return _best(graph, cluster, [*seeds, *_passes(graph, cluster, blocks=True)])
