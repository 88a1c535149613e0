"""The layer DAG that partitioning and unit building work on (pure data)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from edgeflowd.core.ops import OpCall, allowed_resolver
from edgeflowd.core.sizes import ELEMENT_BYTES
from edgeflowd.core.slicing import RowRule, height_of

__all__ = ["Layer", "LayerGraph"]


@dataclass(frozen=True)
class Layer:
    """One node of the DAG: a first op that may read several producers, followed by row-local
    ops fused into it (conv → batchnorm → activation is one layer).

    ``rules[k]`` maps output rows to rows of ``inputs[k]``. A layer that is not ``splittable``
    (it mixes rows, or its output is not an NCHW map) runs as one unit; ``note`` says why."""

    name: str
    kind: str
    ops: tuple[OpCall, ...]
    inputs: tuple[str, ...]
    rules: tuple[RowRule, ...]
    out_shape: tuple[int, ...]
    flops: float
    param_bytes: int
    splittable: bool
    note: str = ""

    @cached_property
    def height(self) -> int:
        return height_of(self.out_shape)

    @cached_property
    def out_bytes(self) -> int:
        n = 1
        for d in self.out_shape:
            n *= d
        return ELEMENT_BYTES * n

    @property
    def is_source(self) -> bool:
        return not self.ops


@dataclass
class LayerGraph:
    """Layers in topological order (model inputs first), the model's outputs, and the constant
    tensors the ops name. ``local_ops`` resolves ops the wire cannot carry (``local.*``).

    ``outputs`` are what a plan delivers to the requester. When the model ends in layers that only
    move data (:mod:`controller.graph.epilogue`), those are its ``epilogue``, which the requester
    runs on the delivered tensors, and ``results`` names the model's own outputs (empty: the
    model's outputs are ``outputs``)."""

    model: str
    input_shape: tuple[int, ...]
    layers: dict[str, Layer]
    outputs: tuple[str, ...]
    output_is_tuple: bool
    tensors: dict[str, torch.Tensor]
    local_ops: dict[str, Callable[..., Any]] = field(default_factory=dict)
    epilogue: tuple[Layer, ...] = ()
    results: tuple[str, ...] = ()

    @property
    def model_outputs(self) -> tuple[str, ...]:
        """The layers whose tensors the model returns, in its order."""
        return self.results or self.outputs

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers.values())

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> Layer:
        return self.layers[name]

    @property
    def sources(self) -> list[Layer]:
        return [layer for layer in self if layer.is_source]

    @property
    def compute_layers(self) -> list[Layer]:
        return [layer for layer in self if not layer.is_source]

    def consumers(self) -> Mapping[str, list[str]]:
        users: dict[str, list[str]] = {name: [] for name in self.layers}
        for layer in self:
            for producer in dict.fromkeys(layer.inputs):
                users[producer].append(layer.name)
        return users

    @property
    def total_flops(self) -> float:
        return sum(layer.flops for layer in self)

    @property
    def param_bytes(self) -> int:
        return sum(layer.param_bytes for layer in self)

    def resolve(self, name: str) -> Callable[..., Any]:
        """Resolver for :func:`edgeflowd.core.ops.run_call`: allow-listed ops plus this model's own."""
        return self.local_ops[name] if name in self.local_ops else allowed_resolver(name)

    def summary(self) -> str:
        splittable = sum(layer.splittable for layer in self.compute_layers)
        whole = [layer.name for layer in self.compute_layers if not layer.splittable]
        last = f"; the requester runs the last {len(self.epilogue)} (they only move data)" if self.epilogue else ""
        return (
            f"{self.model}: {len(self.compute_layers) + len(self.epilogue)} layers ({splittable} splittable by rows, "
            f"{len(whole)} whole{last}), {self.total_flops / 1e9:.2f} GFLOP, "
            f"{self.param_bytes / 2**20:.1f} MiB of parameters"
        )
