"""A small DAG (8 layers: strided convs, a residual skip, a two-branch concat) that an exact
MILP can still solve: the reference for the progressive partitioner's optimality gap."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["small_dag", "tiny_chain"]


class SmallDag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.conv1 = nn.Conv2d(32, 48, 3, 1, 1)
        self.conv2 = nn.Conv2d(48, 32, 3, 1, 1)
        self.left = nn.Conv2d(32, 32, 1)
        self.right = nn.Conv2d(32, 32, 3, 1, 2, dilation=2)
        self.head = nn.Conv2d(64, 16, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = F.relu(self.conv2(F.relu(self.conv1(x)))) + x
        return self.head(torch.cat([self.left(y), self.right(y)], 1))


def small_dag() -> nn.Module:
    return SmallDag()


def tiny_chain(depth: int = 200) -> nn.Module:
    """``depth`` 3x3 convolutions on 8 channels of an 8x8 map, each with its ReLU: almost no
    compute per layer, so a daemon's time on it is its per-unit cost (bench/unit_overhead.py)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)
