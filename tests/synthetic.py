"""Small random DAG models for property tests: strided and dilated convolutions, transposed
convolutions, pools with ceil mode and partial windows, nearest upsampling and resampling of every
mode to odd sizes, pixel (un)shuffle, residual adds, multi-branch concats, broadcast gating,
channel shuffle, per-pixel MLPs in NHWC layout, eval-mode identities and skips across stages, on
odd heights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

C = 4  # channels everywhere: keeps examples fast, shapes compatible


@dataclass(frozen=True)
class Stage:
    kind: str  # conv | maxpool | avgpool | up | residual | branches | gate | skip | KINDS_NEW
    k: int = 3
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    ceil: bool = False
    mode: str = ""  # resample: interpolate mode; avgpool: "exclude" to not count padding
    size: tuple[int, int] = (0, 0)  # resample: the output size; convT: output padding in [0]


KINDS_NEW = ["convT", "resample", "pixel", "shuffle", "pixelmlp", "dropout"]
_MODES = ["bilinear", "bilinear-corners", "bicubic", "nearest", "nearest-exact", "area", "bilinear-aa"]


def _same(k: int, d: int) -> int:
    return d * (k - 1) // 2


class SyntheticDag(nn.Module):
    def __init__(self, stages: list[Stage], in_shape: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.stages = stages
        self.skip_from: dict[int, int] = {}
        self.convs = nn.ModuleList()
        for s in stages:
            if s.kind == "conv":
                self.convs.append(nn.Conv2d(C, C, s.k, s.stride, s.padding, s.dilation))
            elif s.kind == "residual":
                self.convs.append(
                    nn.Sequential(nn.Conv2d(C, C, s.k, 1, _same(s.k, s.dilation), s.dilation), nn.BatchNorm2d(C))
                )
            elif s.kind == "convT":
                self.convs.append(nn.ConvTranspose2d(C, C, s.k, s.stride, s.padding, s.size[0], 2, dilation=s.dilation))
            elif s.kind == "pixel":
                self.convs.append(nn.Conv2d(4 * C, 4 * C, 1))
            elif s.kind == "dropout":
                self.convs.append(nn.Sequential(nn.Identity(), nn.Dropout2d(0.3)))
            elif s.kind == "pixelmlp":
                self.convs.append(nn.Sequential(nn.LayerNorm(C), nn.Linear(C, 2 * C), nn.GELU(), nn.Linear(2 * C, C)))
            elif s.kind == "branches":
                self.convs.append(nn.Conv2d(C, C, 1))
                self.convs.append(nn.Conv2d(C, C, s.k, 1, _same(s.k, s.dilation), s.dilation))
                self.convs.append(nn.Conv2d(3 * C, C, 1))
        self.eval()  # batch norm on a 1x1 map cannot run in training mode, and the tests use eval
        with torch.no_grad():  # an eager pass picks skip sources, so forward has no shape tests
            self._run(torch.zeros(in_shape), pick_skips=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, pick_skips=False)

    def _run(self, x: torch.Tensor, pick_skips: bool) -> torch.Tensor:
        convs = iter(self.convs)
        seen: list[torch.Tensor] = [x]
        for s in self.stages:
            if s.kind == "conv":
                x = F.relu(next(convs)(x))
            elif s.kind == "maxpool":
                x = F.max_pool2d(x, s.k, s.stride, s.padding, s.dilation, ceil_mode=s.ceil)
            elif s.kind == "avgpool":
                x = F.avg_pool2d(x, s.k, s.stride, s.padding, ceil_mode=s.ceil, count_include_pad=s.mode != "exclude")
            elif s.kind == "convT":
                x = next(convs)(x)
            elif s.kind == "resample":
                mode, corners, aa = (
                    s.mode.removesuffix("-corners").removesuffix("-aa"),
                    "corners" in s.mode,
                    "aa" in s.mode,
                )
                linear = mode in ("bilinear", "bicubic")
                x = F.interpolate(x, size=s.size, mode=mode, align_corners=corners if linear else None, antialias=aa)
            elif s.kind == "pixel":
                x = F.pixel_shuffle(next(convs)(F.pixel_unshuffle(x, 2)), 2)
            elif s.kind == "shuffle":
                n, c, h, w = x.size()
                x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
            elif s.kind == "pixelmlp":
                x = x + next(convs)(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            elif s.kind == "dropout":
                x = F.dropout(next(convs)(x), 0.5, self.training)
            elif s.kind == "up":
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            elif s.kind == "residual":
                x = torch.sigmoid(x + next(convs)(x))
            elif s.kind == "branches":
                a, b = next(convs)(x), next(convs)(x)
                p = F.max_pool2d(x, 3, 1, 1)
                x = next(convs)(torch.cat([a, b, p], 1))
            elif s.kind == "gate":
                x = x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True))
            elif s.kind == "skip":
                if pick_skips:
                    same = [i for i, t in enumerate(seen[:-1]) if t.shape == x.shape]
                    if same:
                        self.skip_from[len(seen)] = same[0]
                if len(seen) in self.skip_from:
                    x = x + seen[self.skip_from[len(seen)]]
            seen.append(x)
        return x


def _out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    span = d * (k - 1) + 1
    num = size + 2 * p - span
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


@st.composite
def stages_and_height(draw: st.DrawFn) -> tuple[list[Stage], int, int]:
    """Stages that fit the drawn input height and width, which are returned with them."""
    h, w = draw(st.integers(5, 23)), draw(st.integers(3, 9))
    in_h, in_w = h, w
    stages: list[Stage] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(
            st.sampled_from(["conv", "maxpool", "avgpool", "up", "residual", "branches", "gate", "skip", *KINDS_NEW])
        )
        k = draw(st.sampled_from([1, 2, 3, 5]))
        stride = draw(st.integers(1, 3))
        dilation = draw(st.integers(1, 2)) if kind in ("conv", "maxpool", "residual", "branches") else 1
        if kind in ("residual", "branches") and k % 2 == 0:
            k += 1
        padding = draw(st.integers(0, k // 2))
        ceil = draw(st.booleans()) if kind in ("maxpool", "avgpool") else False
        stage = Stage(kind, k, stride, dilation, padding, ceil)
        if kind == "avgpool" and draw(st.booleans()):
            stage = Stage(kind, k, stride, dilation, padding, ceil, "exclude")
        if kind == "convT":
            dilation = draw(st.integers(1, 2))
            padding = draw(st.integers(0, dilation * (k - 1)))
            extra = draw(st.integers(0, max(stride, dilation) - 1))
            stage = Stage(kind, k, stride, dilation, padding, False, "", (extra, 0))
            nh = (h - 1) * stride - 2 * padding + dilation * (k - 1) + extra + 1
            nw = (w - 1) * stride - 2 * padding + dilation * (k - 1) + extra + 1
            if not 1 <= nh <= 48 or not 1 <= nw <= 48:
                continue
            h, w = nh, nw
        elif kind == "resample":
            size = (draw(st.integers(1, 40)), draw(st.integers(1, 12)))
            mode = draw(st.sampled_from(_MODES))
            if mode == "bilinear-aa" and (size[0] > h or size[1] > w):
                mode = "bilinear"  # antialiasing matters when shrinking
            stage = Stage(kind, mode=mode, size=size)
            h, w = size
        elif kind == "pixel" and (h % 2 or w % 2):
            continue
        elif kind in ("conv", "maxpool", "avgpool"):
            nh = _out(h, k, stride, padding, dilation, ceil)
            nw = _out(w, k, stride, padding, dilation, ceil)
            if nh < 1 or nw < 1:
                continue
            h, w = nh, nw
        elif kind == "up":
            if h > 24:
                continue
            h, w = 2 * h, 2 * w
        stages.append(stage)
    return stages, in_h, in_w
