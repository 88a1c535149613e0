"""Model factories that tests name as ``tests.models:FACTORY``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.plugin_ops import soft_clip

torch.fx.wrap("soft_clip")  # a call fx records as one op, not traced into (as torchvision's own)


class TinyUNet(nn.Module):
    """Down, up, and a skip concat: the smallest DAG with every planned op kind."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, 2, 1)
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 2, dilation=2), nn.BatchNorm2d(8), nn.SiLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(8 + 3, 4, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.mid(self.down(x)))
        y = y[:, :, : x.shape[2], : x.shape[3]]
        return self.head(torch.cat([y, x], 1))


def tiny_unet() -> nn.Module:
    return TinyUNet()


@torch.fx.wrap
def reverse_rows(x: torch.Tensor) -> torch.Tensor:
    """A function the graph cannot know: it runs whole, wherever it is placed."""
    return torch.flip(x, dims=[2])


class UnknownOps(nn.Module):
    """Ops outside EdgeFlow's tables that mix rows: ZeroPad2d (a leaf module), torch.roll (a
    function) and a wrapped user function. Treating any of them as row-local would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 0, 2, 1))
        self.conv1 = nn.Conv2d(3, 6, 3, 1, 1)
        self.conv2 = nn.Conv2d(6, 6, 3, 2, 0)
        self.conv3 = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(self.pad(x)))
        y = torch.roll(y, shifts=3, dims=2)
        y = reverse_rows(self.conv2(y))
        return self.conv3(y)


def unknown_ops() -> nn.Module:
    return UnknownOps()


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.sum().item()


class ControlFlow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def not_a_module() -> int:
    return 3


class PluginUser(nn.Module):
    """A model whose middle op only the plugin ``tests.plugin_ops`` defines."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.conv2 = nn.Conv2d(8, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(soft_clip(F.relu(self.conv1(x)), 2.0))


def plugin_user() -> nn.Module:
    return PluginUser()
