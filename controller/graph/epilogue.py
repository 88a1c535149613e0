"""The model's epilogue: its last layers that only move data (views, concatenations), which the
requester runs on the outputs it receives instead of a node.

A whole layer at the end of a model gathers all of its inputs' rows on one node, which then
sends the whole result on to the requester. When such a layer only rearranges bytes (YOLOv5s'
flattening views of its three detection levels, 8.6 MB, and their concatenation), the nodes may
as well send the rows they computed straight to the requester, each as soon as it has them, and
the requester puts them together: no message between nodes, no node that waits for all of
them, and the last rows leave while other rows still compute. A layer joins the epilogue when
every op of it only moves data and names no weight, its inputs are no larger than its output
(the requester receives nothing more than it would have), none of them is the model's input, and
every layer that reads it is in the epilogue too. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.graph.layers import Layer

__all__ = ["MOVES", "split_epilogue"]

MOVES = frozenset(
    {
        "method.view",
        "method.reshape",
        "torch.reshape",
        "method.flatten",
        "torch.flatten",
        "method.contiguous",
        "method.permute",
        "torch.permute",
        "method.transpose",
        "torch.transpose",
        "method.unsqueeze",
        "torch.unsqueeze",
        "method.squeeze",
        "torch.squeeze",
        "torch.cat",
    }
)
"""Ops that only rearrange their inputs' elements."""


def split_epilogue(layers: Mapping[str, Layer], outputs: Sequence[str]) -> tuple[list[Layer], tuple[str, ...]]:
    """The epilogue's layers (in topological order) and what the plan must deliver instead of
    ``outputs``: the layers the epilogue reads, and the outputs outside it."""
    users: dict[str, list[str]] = {name: [] for name in layers}
    for layer in layers.values():
        for producer in dict.fromkeys(layer.inputs):
            users[producer].append(layer.name)
    chosen: set[str] = set()
    for layer in reversed(list(layers.values())):  # a layer's readers come after it
        if layer.is_source or layer.splittable or not (users[layer.name] or layer.name in outputs):
            continue
        moves = all(op.target in MOVES and not op.const_names() for op in layer.ops)
        read = [layers[p] for p in dict.fromkeys(layer.inputs)]
        if (
            moves
            and all(u in chosen for u in users[layer.name])
            and not any(p.is_source for p in read)
            and sum(p.out_bytes for p in read) <= layer.out_bytes
        ):
            chosen.add(layer.name)
    epilogue = [layer for layer in layers.values() if layer.name in chosen]
    delivered = [p for layer in epilogue for p in layer.inputs if p not in chosen]
    return epilogue, tuple(dict.fromkeys([*delivered, *(o for o in outputs if o not in chosen)]))
