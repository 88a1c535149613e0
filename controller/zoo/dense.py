"""Dense-prediction models: a U-Net (Ronneberger et al., 2015) whose decoder upsamples with
transposed convolutions, and a feature pyramid (Lin et al., 2017) on a strided backbone whose
top-down path and segmentation head resample with bilinear and bicubic interpolation to sizes
that are no integer multiple of each other (input 150x150: maps of 75, 38, 19 and 10 rows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fpn", "unet"]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 3) -> None:
        super().__init__()
        w = width
        self.enc = nn.ModuleList([_double_conv(3, w), _double_conv(w, 2 * w), _double_conv(2 * w, 4 * w)])
        self.bottom = _double_conv(4 * w, 8 * w)
        # The classic 2x2 stride-2 upsampling, and a 3x3 one with padding and output padding.
        self.up = nn.ModuleList(
            [
                nn.ConvTranspose2d(8 * w, 4 * w, 2, 2),
                nn.ConvTranspose2d(4 * w, 2 * w, 3, 2, padding=1, output_padding=1),
                nn.ConvTranspose2d(2 * w, w, 2, 2),
            ]
        )
        self.dec = nn.ModuleList([_double_conv(8 * w, 4 * w), _double_conv(4 * w, 2 * w), _double_conv(2 * w, w)])
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], 1))
        out: torch.Tensor = self.head(x)
        return out


def unet() -> nn.Module:
    return UNet()


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FPN(nn.Module):
    def __init__(self, width: int = 32, classes: int = 5) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn(3, w, 2)
        self.stages = nn.ModuleList([_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 8 * w, 2)])
        self.lateral = nn.ModuleList([nn.Conv2d(c, w, 1) for c in (2 * w, 4 * w, 8 * w)])
        self.smooth = nn.ModuleList([nn.Conv2d(w, w, 3, 1, 1) for _ in range(3)])
        self.head = nn.Conv2d(3 * w, classes, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        c = self.stem(x)
        feats = []
        for stage in self.stages:
            c = stage(c)
            feats.append(c)
        laterals = [lat(f) for lat, f in zip(self.lateral, feats, strict=True)]
        tops = [laterals[-1]]
        for lat in reversed(laterals[:-1]):  # top-down: 10 -> 19 -> 38 rows, bilinear
            tops.insert(0, lat + F.interpolate(tops[0], size=lat.shape[-2:], mode="bilinear", align_corners=False))
        smoothed = [s(t) for s, t in zip(self.smooth, tops, strict=True)]
        target = smoothed[0].shape[-2:]
        merged = torch.cat(
            [
                smoothed[0],
                F.interpolate(smoothed[1], size=target, mode="bilinear", align_corners=True),
                F.interpolate(smoothed[2], size=target, mode="bicubic", align_corners=False),
            ],
            1,
        )
        logits = self.head(merged)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def fpn() -> nn.Module:
    return FPN()
