"""Turn fx call targets into allow-listed op names and canonical arguments.

Standard leaf modules become their functional form with weights as named constants, so one
code path (and one wire format) serves modules and functions alike. In-place variants become
out-of-place ones: a unit may receive a view of a tensor that other units still read.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeflowd.core.ops import ALLOWED, Const
from edgeflowd.core.transposed import SIGNATURE as CONV_TRANSPOSE_SIGNATURE

__all__ = ["Converted", "canonical_window", "function_name", "method_name", "module_call"]

_FUNCTIONS: dict[int, str] = {
    id(fn): name for name, fn in ALLOWED.items() if not name.startswith("method.") and name != "identity"
}
_FUNCTIONS[id(F.max_pool2d)] = "F.max_pool2d"  # a model's own call; nodes run core.pooling's in its place
_INPLACE_OPERATORS = {
    operator.iadd: "operator.add",
    operator.imul: "operator.mul",
    operator.isub: "operator.sub",
    operator.itruediv: "operator.truediv",
}


@dataclass
class Converted:
    target: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    consts: dict[str, torch.Tensor] = field(default_factory=dict)


def function_name(fn: Callable[..., Any]) -> str | None:
    """Allow-listed name of a function target, or None for a function EdgeFlow does not know."""
    if fn in _INPLACE_OPERATORS:
        return _INPLACE_OPERATORS[fn]
    return _FUNCTIONS.get(id(fn))


def method_name(name: str) -> str | None:
    if name.endswith("_") and not name.startswith("_") and f"method.{name[:-1]}" in ALLOWED:
        name = name[:-1]
    return f"method.{name}" if f"method.{name}" in ALLOWED else None


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[1])) if len(value) == 2 else (int(value[0]), int(value[0]))
    return int(value), int(value)


_SIGNATURES: dict[str, tuple[tuple[str, Any], ...]] = {
    "F.conv2d": (
        ("input", None),
        ("weight", None),
        ("bias", None),
        ("stride", 1),
        ("padding", 0),
        ("dilation", 1),
        ("groups", 1),
    ),
    "F.conv_transpose2d": CONV_TRANSPOSE_SIGNATURE,
    "F.adaptive_avg_pool2d": (("input", None), ("output_size", None)),
    "F.adaptive_max_pool2d": (("input", None), ("output_size", None), ("return_indices", False)),
    "F.max_pool2d": (
        ("input", None),
        ("kernel_size", None),
        ("stride", None),
        ("padding", 0),
        ("dilation", 1),
        ("ceil_mode", False),
        ("return_indices", False),
    ),
    "F.avg_pool2d": (
        ("input", None),
        ("kernel_size", None),
        ("stride", None),
        ("padding", 0),
        ("ceil_mode", False),
        ("count_include_pad", True),
        ("divisor_override", None),
    ),
    "F.interpolate": (
        ("input", None),
        ("size", None),
        ("scale_factor", None),
        ("mode", "nearest"),
        ("align_corners", None),
        ("recompute_scale_factor", None),
        ("antialias", False),
    ),
}


def canonical_window(
    target: str, args: tuple[Any, ...], kwargs: dict[str, Any], weight_shape: tuple[int, ...] | None
) -> dict[str, Any] | None:
    """Keyword-only form of a conv/pool/interpolate call with integer pairs, or None when the
    call has a form slicing does not handle (asymmetric 'same' padding, returned indices)."""
    if target not in _SIGNATURES:
        return None
    names = _SIGNATURES[target]
    bound = {name: default for name, default in names}
    bound.update(zip((n for n, _ in names), args, strict=False))
    bound.update(kwargs)
    if target in ("F.interpolate", "F.adaptive_avg_pool2d"):
        return bound
    if target == "F.adaptive_max_pool2d":
        return None if bound["return_indices"] else bound
    if target == "F.max_pool2d" and bound["return_indices"]:
        return None
    if target in ("F.conv2d", "F.conv_transpose2d"):
        if weight_shape is None:
            return None
        kernel = (weight_shape[2], weight_shape[3])
        if target == "F.conv_transpose2d":
            bound["output_padding"] = _pair(bound["output_padding"])
    else:
        kernel = _pair(bound["kernel_size"])
        bound["kernel_size"] = kernel
        bound["stride"] = kernel if bound["stride"] in (None, [], ()) else bound["stride"]
    dilation = _pair(bound.get("dilation", 1))
    padding = bound["padding"]
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=False)]
        if any(t % 2 for t in totals):
            return None
        padding = (totals[0] // 2, totals[1] // 2)
    bound["padding"] = _pair(padding)
    bound["stride"] = _pair(bound["stride"])
    if "dilation" in bound:
        bound["dilation"] = dilation
    return bound


# Modules whose functional form takes the input plus some of the module's attributes as keywords.
_BY_ATTRIBUTES: dict[type[nn.Module], tuple[str, tuple[str, ...]]] = {
    nn.ReLU: ("F.relu", ()),
    nn.ReLU6: ("F.relu6", ()),
    nn.SiLU: ("F.silu", ()),
    nn.Sigmoid: ("torch.sigmoid", ()),
    nn.Tanh: ("torch.tanh", ()),
    nn.Hardswish: ("F.hardswish", ()),
    nn.Hardsigmoid: ("F.hardsigmoid", ()),
    nn.Mish: ("F.mish", ()),
    nn.GELU: ("F.gelu", ("approximate",)),
    nn.LeakyReLU: ("F.leaky_relu", ("negative_slope",)),
    nn.ELU: ("F.elu", ("alpha",)),
    nn.Hardtanh: ("F.hardtanh", ("min_val", "max_val")),
    nn.PixelShuffle: ("F.pixel_shuffle", ("upscale_factor",)),
    nn.PixelUnshuffle: ("F.pixel_unshuffle", ("downscale_factor",)),
    nn.MaxPool2d: ("F.max_pool2d", ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    nn.AvgPool2d: (
        "F.avg_pool2d",
        ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    ),
    nn.AdaptiveAvgPool2d: ("F.adaptive_avg_pool2d", ("output_size",)),
    nn.AdaptiveMaxPool2d: ("F.adaptive_max_pool2d", ("output_size",)),
    nn.Flatten: ("torch.flatten", ("start_dim", "end_dim")),
    nn.Upsample: ("F.interpolate", ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")),
    nn.Softmax: ("F.softmax", ("dim",)),
}


def module_call(module: nn.Module, qualname: str, x: Any) -> Converted | None:
    """Functional form of a standard leaf module applied to ``x``; None if EdgeFlow does not
    know the module (it then runs as a model-local op)."""

    def const(attr: str) -> Const | None:
        tensor = getattr(module, attr, None)
        return None if tensor is None else Const(f"{qualname}.{attr}")

    def consts(*attrs: str) -> dict[str, torch.Tensor]:
        return {f"{qualname}.{a}": getattr(module, a).detach() for a in attrs if getattr(module, a, None) is not None}

    kind = type(module)
    if kind in _BY_ATTRIBUTES and not getattr(module, "return_indices", False):
        target, attrs = _BY_ATTRIBUTES[kind]
        return Converted(target, (x,), {a: getattr(module, a) for a in attrs})
    if kind is nn.Conv2d and module.padding_mode == "zeros":
        args = (x, const("weight"), const("bias"), module.stride, module.padding, module.dilation, module.groups)
        return Converted("F.conv2d", args, {}, consts("weight", "bias"))
    if kind is nn.ConvTranspose2d and module.padding_mode == "zeros":
        transposed = (
            x,
            const("weight"),
            const("bias"),
            module.stride,
            module.padding,
            module.output_padding,
            module.groups,
            module.dilation,
        )
        return Converted("F.conv_transpose2d", transposed, {}, consts("weight", "bias"))
    if isinstance(module, nn.LayerNorm) and kind is nn.LayerNorm:
        norm = (x, tuple(int(d) for d in module.normalized_shape), const("weight"), const("bias"), module.eps)
        return Converted("F.layer_norm", norm, {}, consts("weight", "bias"))
    if kind is nn.BatchNorm2d and module.track_running_stats and module.running_mean is not None:
        stats = (const("running_mean"), const("running_var"), const("weight"), const("bias"))
        return Converted(
            "F.batch_norm",
            (x, *stats, False, 0.0, module.eps),
            {},
            consts("running_mean", "running_var", "weight", "bias"),
        )
    if kind is nn.Linear:
        return Converted("F.linear", (x, const("weight"), const("bias")), {}, consts("weight", "bias"))
    return None
