"""YOLOv5s (Ultralytics v7.0, ``yolov5s.yaml``: depth 0.33, width 0.50, 80 classes): CSP
backbone with C3 blocks and SPPF, a PANet neck with nearest upsampling and concatenation, and the
Detect head decoding boxes on the grid. 7,235,389 parameters, as the original prints."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["yolov5s"]

ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


class Conv(nn.Module):
    """Conv2d + BatchNorm2d + SiLU with 'same' padding for odd kernels."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP bottleneck with three convolutions."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max pools, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class Detect(nn.Module):
    """Per-level 1x1 convolutions, then box decoding on each level's grid (inference form)."""

    stride: torch.Tensor
    anchors: torch.Tensor

    def __init__(self, nc: int, ch: tuple[int, ...]) -> None:
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(ANCHORS), len(ANCHORS[0]) // 2
        self.register_buffer("stride", torch.tensor([8.0, 16.0, 32.0]))
        anchors = torch.tensor(ANCHORS, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", anchors / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def _make_grid(self, nx: int, ny: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, t = self.anchors.device, self.anchors.dtype
        shape = (1, self.na, ny, nx, 2)
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        z = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, ny, nx = x.shape[0], x.shape[2], x.shape[3]
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            grid, anchor_grid = self._make_grid(nx, ny, i)
            xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * self.stride[i]
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return torch.cat(z, 1)


class YOLOv5(nn.Module):
    """Layers numbered as in ``yolov5s.yaml`` (``model.N``), routed explicitly."""

    def __init__(self, nc: int = 80) -> None:
        super().__init__()
        self.model = nn.ModuleList(
            [
                Conv(3, 32, 6, 2, 2),  # 0 P1/2
                Conv(32, 64, 3, 2),  # 1 P2/4
                C3(64, 64, 1),
                Conv(64, 128, 3, 2),  # 3 P3/8
                C3(128, 128, 2),
                Conv(128, 256, 3, 2),  # 5 P4/16
                C3(256, 256, 3),
                Conv(256, 512, 3, 2),  # 7 P5/32
                C3(512, 512, 1),
                SPPF(512, 512, 5),  # 9
                Conv(512, 256, 1, 1),  # 10
                nn.Upsample(None, 2, "nearest"),
                Concat(),  # 12: cat backbone P4
                C3(512, 256, 1, False),
                Conv(256, 128, 1, 1),  # 14
                nn.Upsample(None, 2, "nearest"),
                Concat(),  # 16: cat backbone P3
                C3(256, 128, 1, False),  # 17 (P3/8-small)
                Conv(128, 128, 3, 2),
                Concat(),  # 19: cat head P4
                C3(256, 256, 1, False),  # 20 (P4/16-medium)
                Conv(256, 256, 3, 2),
                Concat(),  # 22: cat head P5
                C3(512, 512, 1, False),  # 23 (P5/32-large)
                Detect(nc, (128, 256, 512)),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        p3 = m[4](m[3](m[2](m[1](m[0](x)))))
        p4 = m[6](m[5](p3))
        h10 = m[10](m[9](m[8](m[7](p4))))
        h14 = m[14](m[13](m[12]([m[11](h10), p4])))
        small = m[17](m[16]([m[15](h14), p3]))
        medium = m[20](m[19]([m[18](small), h14]))
        large = m[23](m[22]([m[21](medium), h10]))
        return m[24]([small, medium, large])


def yolov5s() -> nn.Module:
    return YOLOv5()
