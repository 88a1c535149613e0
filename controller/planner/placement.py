"""Where a layer that needs a plugin op may go: only to a node that reported the op among its
plugins' (``Device.ops``). The partition methods plan on speeds alone; a deployable plan then
moves each such layer (one that runs whole: an op EdgeFlow does not know mixes rows as far as it
can tell) to the capable node that computes it soonest, or says which node lacks what."""

from __future__ import annotations

from controller.graph.layers import Layer, LayerGraph
from controller.planner.partitions import Partition
from edgeflowd.core.rows import RowRange
from edgeflowd.errors import PlanError
from edgeflowd.profiles.devices import Cluster

__all__ = ["needed_plugin_ops", "place_plugin_ops", "refuse_unpluggable"]


def needed_plugin_ops(layer: Layer) -> list[str]:
    """The ops of ``layer`` no node knows without a plugin."""
    return list(dict.fromkeys(op.target for op in layer.ops if not op.portable))


def refuse_unpluggable(layer: str, ops: list[str]) -> None:
    """Raise :class:`PlanError` for an op no plugin can give a node: a module of the model object,
    a tensor method or a torch function EdgeFlow does not know."""
    for op in ops:
        why = ""
        if op.startswith("local.module."):
            why = "a module of the model object that EdgeFlow does not know"
        elif op.startswith("local.method."):
            why = "a tensor method that EdgeFlow does not know"
        elif op.startswith("local.torch."):
            why = "a torch function that EdgeFlow does not know"
        if why:
            raise PlanError(
                f"layer {layer} uses {op}, {why}: only the process that loaded the model runs it (a "
                "plugin gives nodes functions of its own module); such models run with `edgeflow verify`, "
                "not on a cluster"
            )


def _lacking(cluster: Cluster, ops: list[str]) -> str:
    parts = []
    for device in cluster.devices:
        missing = [op for op in ops if op not in device.ops]
        has = f"plugin ops {', '.join(sorted(device.ops))}" if device.ops else "no plugins"
        parts.append(f"{device.id} lacks {', '.join(missing)} (it has {has})")
    return "; ".join(parts)


def place_plugin_ops(graph: LayerGraph, cluster: Cluster, partition: Partition) -> Partition:
    """``partition`` with every layer that needs plugin ops on a node that has them all; raises
    :class:`PlanError` naming each node and what it lacks when none has."""
    rows = dict(partition.rows)
    for layer in graph.compute_layers:
        ops = needed_plugin_ops(layer)
        if not ops:
            continue
        refuse_unpluggable(layer.name, ops)
        capable = [d for d, device in enumerate(cluster.devices) if set(ops) <= device.ops]
        if not capable:
            module = ops[0].removeprefix("local.").rpartition(".")[0]
            raise PlanError(
                f"layer {layer.name} uses {ops[0]}, which no node of cluster {cluster.name} runs: "
                f"{_lacking(cluster, ops)}. Install the module that defines it ({module}) on a node "
                "and list it in that edgeflowd's `plugins` setting"
            )
        current = [d for d, r in enumerate(rows[layer.name]) if not r.empty]
        if current and all(d in capable for d in current):
            continue
        best = min(capable, key=lambda d: layer.flops / cluster.devices[d].rate(layer.kind))
        rows[layer.name] = tuple(
            RowRange(0, layer.height) if d == best else RowRange(0, 0) for d in range(len(cluster))
        )
    return Partition(partition.n_devices, rows)
