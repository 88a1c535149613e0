"""Running a model's fx graph: tracing it (errors name the user's line), running it once on the
example input with every node's value kept, and telling shape queries from data."""

from __future__ import annotations

import builtins
import os
import traceback
from typing import Any

import torch
import torch.fx
from torch import nn

from edgeflowd.errors import GraphError

__all__ = ["Recorder", "is_tensors", "shape_query", "symbolic_trace"]

_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim"}
_SHAPE_METHODS = {"size", "dim", "numel"}
_TORCH_DIR = os.path.dirname(torch.__file__)


def _user_frame(exc: BaseException) -> str:
    """Where in the user's code tracing failed (the innermost frame outside torch)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""


def symbolic_trace(model: nn.Module, name: str) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; all mean "cannot trace"
        raise GraphError(f"cannot trace model {name!r} with torch.fx: {exc}{_user_frame(exc)}") from exc


class Recorder(torch.fx.Interpreter):
    """Runs the traced graph once and keeps every node's value."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[torch.fx.Node, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            value = super().run_node(n)
        except Exception as exc:
            raise GraphError(
                f"node {n.name} ({n.op} {n.target}) failed on the example input: {str(exc).splitlines()[0]}"
            ) from exc
        self.values[n] = value
        return value


def is_tensors(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value)


def shape_query(node: torch.fx.Node) -> bool:
    if node.op == "call_function" and node.target is builtins.getattr:
        return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRS
    return node.op == "call_method" and node.target in _SHAPE_METHODS
