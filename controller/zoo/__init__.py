"""Model zoo: standard architectures written from their published definitions, random weights
from a fixed seed (latency and exactness do not depend on trained values), plus user models
named ``package.module:factory``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from controller.zoo.convnext import convnext
from controller.zoo.dense import fpn, unet
from controller.zoo.inception import inception_v3
from controller.zoo.mobilenet import mobilenet_v2
from controller.zoo.resnet import resnet18, resnet18_d, resnet50
from controller.zoo.shufflenet import shufflenet_v2
from controller.zoo.small import small_dag, tiny_chain
from controller.zoo.vgg import vgg16
from controller.zoo.yolov5 import yolov5s
from edgeflowd.errors import GraphError

__all__ = ["ZOO", "ZooEntry", "build_model", "parse_shape"]

DEFAULT_SHAPE = (1, 3, 224, 224)


@dataclass(frozen=True)
class ZooEntry:
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    structure: str


ZOO: dict[str, ZooEntry] = {
    "vgg16": ZooEntry(vgg16, (1, 3, 224, 224), "chain"),
    "resnet18": ZooEntry(resnet18, (1, 3, 224, 224), "residual skips"),
    "resnet50": ZooEntry(resnet50, (1, 3, 224, 224), "bottleneck skips"),
    "inception_v3": ZooEntry(inception_v3, (1, 3, 299, 299), "parallel branches"),
    "mobilenet_v2": ZooEntry(mobilenet_v2, (1, 3, 224, 224), "depthwise, inverted residuals"),
    "yolov5s": ZooEntry(yolov5s, (1, 3, 640, 640), "PANet: upsample + concat, detection head"),
    "resnet18_d": ZooEntry(resnet18_d, (1, 3, 225, 225), "deep stem; average-pool shortcuts with partial windows"),
    "shufflenet_v2": ZooEntry(shufflenet_v2, (1, 3, 224, 224), "channel split, concat and channel shuffle"),
    "convnext": ZooEntry(convnext, (1, 3, 224, 224), "depthwise 7x7, then per pixel NHWC LayerNorm + MLP"),
    "unet": ZooEntry(unet, (1, 3, 128, 128), "encoder-decoder: transposed-convolution upsampling + skips"),
    "fpn": ZooEntry(fpn, (1, 3, 150, 150), "feature pyramid: bilinear and bicubic resampling to odd sizes"),
    "small_dag": ZooEntry(small_dag, (1, 3, 128, 128), "8 layers: skip and branches, small enough for the MILP"),
    "tiny_chain": ZooEntry(tiny_chain, (1, 8, 8, 8), "200 tiny convolutions: a daemon's per-unit cost"),
}


def parse_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` → ``(1, 3, 224, 224)``."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input shape must look like 1x3xHxW with positive sizes, got {text!r}")
    return shape


def _randomise_norm_stats(model: nn.Module, seed: int) -> None:
    """Give batch norms non-trivial statistics, so that folding and slicing them is tested."""
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None and module.running_var is not None:
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            if module.affine:
                module.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.data.copy_(0.1 * torch.randn(n, generator=gen))


def _import_factory(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise GraphError(f"model {spec!r}: expected a zoo name ({', '.join(ZOO)}) or package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphError(f"model {spec!r}: cannot import {module_name}: {exc}") from exc
    factory: Callable[[], Any] | None = getattr(module, attr, None)
    if not callable(factory):
        raise GraphError(f"model {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def build_model(
    spec: str, input_shape: tuple[int, ...] | None = None, seed: int = 0
) -> tuple[nn.Module, tuple[int, ...]]:
    """The model named by ``spec`` in eval mode with seeded random weights, and its input shape
    (``input_shape`` if given, else the zoo entry's, else 1x3x224x224)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        if spec in ZOO:
            model: object = ZOO[spec].factory()
            shape = input_shape or ZOO[spec].input_shape
        else:
            factory = _import_factory(spec)
            try:
                model = factory()
            except Exception as exc:  # a user's factory: its failure is one line naming it, not a traceback
                raise GraphError(f"model {spec!r}: calling it failed: {type(exc).__name__}: {exc}") from exc
            shape = input_shape or DEFAULT_SHAPE
        if not isinstance(model, nn.Module):
            raise GraphError(f"model {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
        _randomise_norm_stats(model, seed)
    return model.eval(), shape
