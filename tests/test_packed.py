"""Convolution weights packed once per plan: the same rows as ``F.conv2d``, only where packing is
possible and, on a node, faster."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from controller.control.verify import check_partition, reference_outputs
from controller.graph.trace import trace_model
from controller.planner.partitions import even_partition
from controller.planner.plan import build_plan
from edgeflowd.core.packed import PACKED, conv2d_packed, pack_convolutions, packed_name
from edgeflowd.node.runtime import NodeRuntime
from edgeflowd.wire.frames import FrameKeys
from edgeflowd.wire.topics import Topics

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
    reason="this torch has no oneDNN",
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(32, 32, 1),
        nn.Conv2d(32, 32, 3, padding=1, groups=4),
    ).eval()


def test_spatial_convolutions_are_packed_and_compute_what_conv2d_does() -> None:
    model, x = _model(), torch.randn(1, 3, 20, 18)
    graph = trace_model(model, x, "convs")
    units = [u for u in build_plan(graph, even_partition(graph, 2)).units if u.device == 0]
    packed = pack_convolutions([(u.ops[0], u.inputs[0].shape) for u in units], graph.tensors)
    weights = [u.ops[0].kwargs["weight"].name for u in units]
    spatial = {packed_name(n) for n in weights if graph.tensors[n].shape[2] > 1}
    assert set(packed) == spatial and len(spatial) == 3 and all(n.endswith(PACKED) for n in packed)  # not the 1x1
    w, b = graph.tensors[weights[0]], graph.tensors[units[0].ops[0].kwargs["bias"].name]
    for rows in (1, 5, 13):  # inputs of other heights than the one it was packed for, uneven padding
        xi = torch.randn(1, 3, rows + 2, 18)
        got = conv2d_packed(xi, packed[packed_name(weights[0])], b, (1, 1), (0, 1), (1, 1), 1)
        torch.testing.assert_close(got, F.conv2d(xi, w, b, 1, (0, 1)), rtol=1e-5, atol=1e-5)
        assert got.is_contiguous()
    want = reference_outputs(model, x)
    assert check_partition("even", graph, even_partition(graph, 2), x, want).relative <= 1e-5  # verify packs all


def _timer(plain_s: float, packed_s: float) -> Iterator[float]:
    """A clock under which each timed run of the plain op takes ``plain_s`` and of the packed one ``packed_s``."""
    now = 0.0
    while True:
        for step in (plain_s, packed_s):
            for _ in range(3):
                yield now
                now += step
                yield now


def test_a_node_keeps_a_packed_weight_only_where_it_runs_faster() -> None:
    model, x = _model(), torch.randn(1, 3, 20, 18)
    graph = trace_model(model, x, "convs")
    plan = build_plan(graph, even_partition(graph, 1))
    units = plan.on_device(0)
    for plain_s, packed_s, kept in ((1.0, 2.0, False), (2.0, 1.0, True)):
        clock = _timer(plain_s, packed_s)
        runtime = NodeRuntime(
            "p",
            Topics("t"),
            units,
            graph.tensors,
            1 << 30,
            10.0,
            FrameKeys.fresh("x@client"),
            timer=partial(next, clock),
        )
        assert any(name.endswith(PACKED) for name in runtime.tensors) is kept


def test_ops_that_pad_themselves_give_the_same_rows_as_the_model() -> None:
    """A unit runs its window op with the op's own padding only where the rows to synthesise are
    that padding; strides that leave the last rows unread and ceil-mode pooling stay exact."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=2),  # padding above the stride: the last rows go unread
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AvgPool2d(2, stride=2, ceil_mode=True),
    ).eval()
    x = torch.randn(1, 3, 23, 17)
    graph = trace_model(model, x, "pads")
    want = reference_outputs(model, x)
    for devices in (1, 2, 3):
        assert check_partition(f"even-{devices}", graph, even_partition(graph, devices), x, want).relative <= 1e-5
