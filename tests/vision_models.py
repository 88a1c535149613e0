"""torchvision's models as ``edgeflow`` specs (``tests.vision_models:NAME``): random weights,
nothing downloaded (no pretrained backbone), and one output tensor."""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def efficientnet_b0() -> nn.Module:
    return torchvision.models.efficientnet_b0(weights=None)


def convnext_tiny() -> nn.Module:
    return torchvision.models.convnext_tiny(weights=None)


def shufflenet_v2_x1_0() -> nn.Module:
    return torchvision.models.shufflenet_v2_x1_0(weights=None)


class _Out(nn.Module):
    """A segmentation model's ``out`` map (torchvision returns a dict of maps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)["out"]
        return out


def deeplabv3_mobilenet_v3_large() -> nn.Module:
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=False
    )
    return _Out(model)
