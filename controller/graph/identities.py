"""Ops that are the identity in eval mode (dropout of every kind, stochastic depth, ``Identity``
modules): they vanish from the layer graph, their users reading what they were given, so they
cost neither a unit, nor a message, nor an op call."""

from __future__ import annotations

import inspect
from typing import Any

import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = ["eval_identity"]

_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_FUNCTIONS = {
    id(fn): fn for fn in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
}
# torchvision.ops.stochastic_depth(input, p, mode, training=True), wrapped for fx: known by its
# home, since torchvision need not be installed where EdgeFlow is.
_STOCHASTIC_DEPTH = ("torchvision.ops.stochastic_depth", "stochastic_depth")


def _bound(fn: Any, node: torch.fx.Node) -> dict[str, Any] | None:
    try:
        return dict(inspect.signature(fn).bind(*node.args, **node.kwargs).arguments)
    except (TypeError, ValueError):
        return None


def eval_identity(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    """Whether ``node`` (of a model in eval mode) returns its first argument unchanged."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return isinstance(module, _MODULES) and not module.training and len(node.args) == 1 and not node.kwargs
    if node.op != "call_function" or not node.args:
        return False
    fn = node.target
    known = id(fn) in _FUNCTIONS and _FUNCTIONS[id(fn)] is fn
    home = (getattr(fn, "__module__", ""), getattr(fn, "__name__", ""))
    if not known and home != _STOCHASTIC_DEPTH:
        return False
    bound = _bound(fn, node)
    if bound is None:
        return False
    return bound.get("training", True) is False or bound.get("p") == 0.0
