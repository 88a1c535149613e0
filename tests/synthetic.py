"""Small random DAG models for property tests: strided and dilated convolutions, pools with
ceil mode, nearest upsampling, residual adds, multi-branch concats, broadcast gating and skips
across stages, on odd heights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

C = 4  # channels everywhere: keeps examples fast, shapes compatible


@dataclass(frozen=True)
class Stage:
    kind: str  # conv | maxpool | avgpool | up | residual | branches | gate | skip
    k: int = 3
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    ceil: bool = False


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
                x = F.avg_pool2d(x, s.k, s.stride, s.padding, ceil_mode=s.ceil)
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
        kind = draw(st.sampled_from(["conv", "maxpool", "avgpool", "up", "residual", "branches", "gate", "skip"]))
        k = draw(st.sampled_from([1, 2, 3, 5]))
        stride = draw(st.integers(1, 3))
        dilation = draw(st.integers(1, 2)) if kind in ("conv", "maxpool", "residual", "branches") else 1
        if kind in ("residual", "branches") and k % 2 == 0:
            k += 1
        padding = draw(st.integers(0, k // 2))
        ceil = draw(st.booleans()) if kind in ("maxpool", "avgpool") else False
        stage = Stage(kind, k, stride, dilation, padding, ceil)
        if kind in ("conv", "maxpool", "avgpool"):
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
