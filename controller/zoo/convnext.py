"""A small ConvNeXt (Liu et al., 2022), written as torchvision writes it: each block is a 7x7
depthwise convolution, then per pixel in NHWC layout a LayerNorm, two Linear layers and a GELU,
a layer scale, stochastic depth (an identity in eval mode) and the residual add; downsampling
normalises channels between two permutes (torchvision's LayerNorm2d)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["convnext"]


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, dim: int, drop: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer_scale * self.block(x)
        return F.dropout(out, self.drop, self.training) + x


class ConvNeXt(nn.Module):
    def __init__(self, depths: tuple[int, ...] = (2, 2, 4, 2), dims: tuple[int, ...] = (24, 48, 96, 192)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            if i:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [Block(dim, 0.1 * i) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean([2, 3])
        out: torch.Tensor = self.head(self.norm(x))
        return out


def convnext() -> nn.Module:
    return ConvNeXt()
