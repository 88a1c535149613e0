"""The node's max pooling (edgeflowd.core.pooling) returns exactly what ``F.max_pool2d`` returns,
for every kernel, stride, padding and ceil mode torch accepts, NaN and -inf included, and
refuses what torch refuses."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from controller.graph.trace import trace_model
from edgeflowd.core.ops import ALLOWED
from edgeflowd.core.pooling import max_pool2d


def test_every_window_shape_gives_torch_s_result() -> None:
    gen = torch.Generator().manual_seed(0)
    checked = 0
    kernels: list[Any] = [1, 2, 3, (3, 2), 5]
    strides: list[Any] = [1, 2, 3, (2, 1)]
    pads: list[Any] = [0, 1, (1, 0), 2]
    for height, width, kernel, stride, pad, ceil in itertools.product(
        [1, 2, 5, 8], [3, 6, 9], kernels, strides, pads, [False, True]
    ):
        x = torch.randn(1, 3, height, width, generator=gen)
        try:
            want = F.max_pool2d(x, kernel, stride, pad, 1, ceil)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                max_pool2d(x, kernel, stride, pad, 1, ceil)
            continue
        got = max_pool2d(x, kernel, stride, pad, 1, ceil)
        assert got.shape == want.shape and torch.equal(got, want), (height, width, kernel, stride, pad, ceil)
        checked += 1
    assert checked > 500  # most combinations are valid: the comparison above is what ran


def test_nan_and_infinities_propagate_as_in_torch() -> None:
    x = torch.randn(2, 4, 9, 9)
    x[0, 1, 3, 4] = float("nan")
    x[1, 2, :, :] = float("-inf")
    x[1, 3, 0, 0] = float("inf")
    for args in [(3, 2, 1), (5, 1, 2), (2, 2, 0)]:
        assert torch.equal(max_pool2d(x, *args).isnan(), F.max_pool2d(x, *args).isnan())
        assert torch.equal(max_pool2d(x, *args).nan_to_num(), F.max_pool2d(x, *args).nan_to_num())


def test_unbatched_maps_indices_dilation_and_integers_run_as_torch_runs_them() -> None:
    x = torch.randn(3, 10, 10)
    assert torch.equal(max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    got, idx = max_pool2d(x[None], 3, 2, 1, return_indices=True)
    want, want_idx = F.max_pool2d(x[None], 3, 2, 1, return_indices=True)
    assert torch.equal(got, want) and torch.equal(idx, want_idx)
    assert torch.equal(max_pool2d(x[None], 3, 1, 1, dilation=2), F.max_pool2d(x[None], 3, 1, 1, dilation=2))
    ints = torch.randint(-50, 50, (1, 2, 7, 7))
    assert torch.equal(max_pool2d(ints, 2), F.max_pool2d(ints, 2))


def test_nodes_run_it_for_max_pooling() -> None:
    assert ALLOWED["F.max_pool2d"] is max_pool2d


def test_single_plane_maps_are_pooled_without_touching_the_input() -> None:
    """One image of one channel: the first strided view of it is already contiguous, and must
    still be copied before the maxima are folded into it."""
    gen = torch.Generator().manual_seed(1)
    for shape in [(1, 1, 7, 9), (1, 1, 1, 9), (1, 7, 9), (1, 1, 5, 1)]:
        cases: list[tuple[Any, int, int]] = [(1, 1, 0), (5, 1, 2), (3, 2, 1), (2, 2, 0), ((1, 3), 1, 0), ((3, 1), 1, 0)]
        for kernel, stride, pad in cases:
            x = torch.randn(*shape, generator=gen)
            before = x.clone()
            try:
                want = F.max_pool2d(x, kernel, stride, pad)
            except RuntimeError:
                continue
            got = max_pool2d(x, kernel, stride, pad)
            assert torch.equal(got, want) and torch.equal(x, before), (shape, kernel, stride, pad)
            assert got.data_ptr() != x.data_ptr()
    with pytest.raises(RuntimeError):
        max_pool2d(torch.randn(1, 1, 5, 5), (3, 3, 3))  # torch's own refusal


def test_a_model_calling_max_pool2d_itself_traces_to_an_op_every_node_runs() -> None:
    class Pools(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(x, 3, 2, 1)

    graph = trace_model(Pools(), torch.randn(1, 2, 9, 9), "pools")
    assert [call.target for layer in graph for call in layer.ops] == ["F.max_pool2d"]
