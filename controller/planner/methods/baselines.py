"""Baselines in the same cost model and runtime as EdgeFlow's plan.

- ``single``: the whole model on the device the simulator predicts fastest.
- ``equal``: every splittable layer cut into equal parts over all devices.
- ``coedge``: CoEdge-like, every splittable layer cut in proportion to device capacity.
- ``ftp``: DeepThings-like fused tile partitioning of the first layers (tiles in proportion to
  capacity), the rest on the fastest device; the fusion depth the simulator prefers.
- ``chain``: DADS/Neurosurgeon-like: the graph cut at its cut points (positions in topological
  order crossed by a single tensor); each segment runs whole on one device, chosen by dynamic
  programming over segments and devices.
In all of them, unsplittable layers run on the fastest device.
"""

from __future__ import annotations

import itertools

from controller.graph.layers import LayerGraph
from controller.planner.costmodel import compute_s, memory_bytes, transfer_s
from controller.planner.methods.evaluate import predicted_latency
from controller.planner.methods.fused import fusable_prefix, fused_ranges
from controller.planner.partitions import Partition, on_one_device, split_rows
from edgeflowd.core.rows import RowRange
from edgeflowd.errors import PlanError
from edgeflowd.profiles.devices import Cluster

__all__ = ["chain", "coedge", "equal", "ftp", "single", "single_on"]


def _fastest(cluster: Cluster) -> int:
    return min(range(len(cluster)), key=lambda d: (-cluster.devices[d].rate("conv"), d))


def single_on(graph: LayerGraph, cluster: Cluster, device: int) -> Partition:
    return Partition(
        len(cluster), {layer.name: on_one_device(layer.height, device, len(cluster)) for layer in graph.compute_layers}
    )


def whole_model_bytes(graph: LayerGraph) -> float:
    """Memory one device needs for the whole model (weights plus every layer's output)."""
    return sum(memory_bytes(layer, layer.height) for layer in graph.compute_layers)


def single(graph: LayerGraph, cluster: Cluster) -> Partition:
    need = whole_model_bytes(graph)
    fits = [d for d, dev in enumerate(cluster.devices) if dev.profile.memory_mb * 2**20 >= need]
    if not fits:
        raise PlanError(f"single: no device can hold the whole model ({need / 2**20:.1f} MiB)")
    # One device's plan has no contention to simulate: the input, every layer, the outputs. That
    # ranks the devices; the simulator judges the two best (a simulation costs a plan's build).
    in_bytes = sum(graph[s.name].out_bytes for s in graph.sources)
    out_bytes = sum(graph[o].out_bytes for o in graph.outputs)

    def estimate(d: int) -> float:
        dev = cluster.devices[d]
        run = sum(compute_s(layer, layer.height, dev) for layer in graph.compute_layers)
        return transfer_s(in_bytes, cluster.client, dev.link) + run + transfer_s(out_bytes, dev.link, cluster.client)

    options = [single_on(graph, cluster, d) for d in sorted(fits, key=lambda d: (estimate(d), d))[:2]]
    return min(options, key=lambda p: predicted_latency(graph, cluster, p))


def _proportional(graph: LayerGraph, cluster: Cluster, shares: list[float]) -> Partition:
    fastest, n = _fastest(cluster), len(cluster)
    return Partition(
        n,
        {
            layer.name: split_rows(layer.height, shares)
            if layer.splittable
            else on_one_device(layer.height, fastest, n)
            for layer in graph.compute_layers
        },
    )


def equal(graph: LayerGraph, cluster: Cluster) -> Partition:
    return _proportional(graph, cluster, [1.0] * len(cluster))


def capacity_shares(cluster: Cluster) -> list[float]:
    return [dev.rate("conv") for dev in cluster.devices]


def coedge(graph: LayerGraph, cluster: Cluster) -> Partition:
    return _proportional(graph, cluster, capacity_shares(cluster))


def fused_prefix_partition(
    graph: LayerGraph, cluster: Cluster, depth: int, shares: list[float], rest: Partition
) -> Partition:
    """The first ``depth`` layers as fused tiles split by ``shares``; other layers as in ``rest``."""
    block = fusable_prefix(graph)[:depth]
    names = {layer.name for layer in block}
    users = graph.consumers()
    frontier = {
        layer.name: split_rows(layer.height, shares)
        for layer in block
        if layer.name in graph.outputs or any(u not in names for u in users[layer.name])
    }
    rows = dict(rest.rows)
    rows.update(fused_ranges(graph, block, frontier, len(cluster)))
    return Partition(len(cluster), rows)


def fusion_depths(graph: LayerGraph, steps: int = 12) -> list[int]:
    prefix = len(fusable_prefix(graph))
    return sorted({max(1, round(prefix * i / steps)) for i in range(1, steps + 1)})


def ftp(graph: LayerGraph, cluster: Cluster) -> Partition:
    rest = single_on(graph, cluster, _fastest(cluster))
    shares = capacity_shares(cluster)
    options = [fused_prefix_partition(graph, cluster, k, shares, rest) for k in fusion_depths(graph)]
    return min(options, key=lambda p: predicted_latency(graph, cluster, p))


def cut_points(graph: LayerGraph) -> list[int]:
    """Indices ``i`` into the compute layers such that the only tensor crossing from layers
    ``<= i`` to layers ``> i`` is layer ``i``'s output."""
    layers = graph.compute_layers
    position = {layer.name: i for i, layer in enumerate(layers)} | {s.name: -1 for s in graph.sources}
    last_use = dict(position)
    for i, layer in enumerate(layers):
        for producer in layer.inputs:
            last_use[producer] = max(last_use[producer], i)
    return [i for i in range(len(layers) - 1) if all(last_use[name] <= i for name, j in position.items() if j < i)]


def chain(graph: LayerGraph, cluster: Cluster) -> Partition:
    layers, n = graph.compute_layers, len(cluster)
    bounds = [-1, *cut_points(graph), len(layers) - 1]
    segments = [layers[a + 1 : b + 1] for a, b in itertools.pairwise(bounds)]
    inf = float("inf")
    in_bytes = sum(graph[s.name].out_bytes for s in graph.sources)
    cost = [[transfer_s(in_bytes, cluster.client, cluster.devices[d].link) for d in range(n)]]
    choice: list[list[int]] = [[d for d in range(n)]]
    for k, segment in enumerate(segments):
        run = [sum(compute_s(layer, layer.height, cluster.devices[d]) for layer in segment) for d in range(n)]
        if k == 0:
            cost[0] = [c + r for c, r in zip(cost[0], run, strict=True)]
            continue
        boundary = segments[k - 1][-1].out_bytes
        row, back = [inf] * n, [0] * n
        for d in range(n):
            for prev in range(n):
                move = 0.0 if prev == d else transfer_s(boundary, cluster.devices[prev].link, cluster.devices[d].link)
                total = cost[-1][prev] + move + run[d]
                if total < row[d]:
                    row[d], back[d] = total, prev
        cost.append(row)
        choice.append(back)
    out_bytes = sum(graph[o].out_bytes for o in graph.outputs)
    final = [c + transfer_s(out_bytes, cluster.devices[d].link, cluster.client) for d, c in enumerate(cost[-1])]
    device = min(range(n), key=lambda d: (final[d], d))
    placed: dict[str, tuple[RowRange, ...]] = {}
    for k in range(len(segments) - 1, -1, -1):
        for layer in segments[k]:
            placed[layer.name] = on_one_device(layer.height, device, n)
        device = choice[k][device] if k else device
    return Partition(n, placed)
