"""Row rules of the ops real vision models use: each op splits by rows (no layer of it runs
whole) and every partition of it, halo-first pieces included, computes what the unsplit model
computes; layout changes that keep rows apart stay split; eval-mode identities vanish."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from controller.control.verify import TOLERANCE, check_partition, plan_runtimes, reference_outputs
from controller.graph.layers import LayerGraph
from controller.graph.trace import trace_model
from controller.planner.partitions import even_partition, random_partition
from controller.planner.plan import build_plan
from edgeflowd.core.ops import OpCall, RowConst, allowed_resolver
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import RowRule
from edgeflowd.core.units import ExecutionUnit, UnitInput
from edgeflowd.errors import ProtocolError
from edgeflowd.wire.units import unit_doc, unit_of


class Op(nn.Module):
    """A 1x1 convolution (so that the op under test reads a computed map), then ``fn``."""

    def __init__(self, fn: Callable[..., torch.Tensor], channels: int = 4, *mods: nn.Module) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, channels, 1)
        self.mods = nn.ModuleList(mods)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.pre(x), *self.mods)


def _apply(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    out: torch.Tensor = module(x)
    return out


def _exact_everywhere(model: nn.Module, shape: tuple[int, ...]) -> LayerGraph:
    """Trace ``model``, require every layer split by rows, and check 1-4 devices' partitions."""
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(shape)
    graph = trace_model(model, x, "rules")
    whole = [(layer.name, layer.note) for layer in graph.compute_layers if not layer.splittable]
    assert not whole, whole
    want = reference_outputs(model, x)
    rng = random.Random(1)
    for devices in (1, 2, 3, 4):
        for partition in [even_partition(graph, devices)] + [random_partition(graph, devices, rng) for _ in range(4)]:
            check = check_partition("p", graph, partition, x, want)
            assert check.relative <= TOLERANCE, (devices, partition, check.relative)
    return graph


TRANSPOSED = [  # kernel, stride, padding, output padding, dilation, groups
    (2, 2, 0, 0, 1, 1),  # U-Net's
    (3, 2, 1, 1, 1, 1),
    (1, 3, 0, 2, 1, 1),  # stride past the kernel: rows only the bias reaches
    (3, 1, 2, 0, 2, 2),
    (4, 2, 1, 0, 1, 4),
    (5, 3, 4, 1, 1, 1),
]


@pytest.mark.parametrize(("k", "s", "p", "op", "d", "g"), TRANSPOSED)
def test_transposed_convolution_splits_exactly(k: int, s: int, p: int, op: int, d: int, g: int) -> None:
    deconv = nn.ConvTranspose2d(4, 4, k, s, p, op, g, dilation=d)
    _exact_everywhere(Op(_apply, 4, deconv), (1, 3, 11, 7))


RESAMPLES = [
    {"size": (29, 9), "mode": "bilinear", "align_corners": False},
    {"size": (29, 9), "mode": "bilinear", "align_corners": True},
    {"size": (17, 5), "mode": "bicubic", "align_corners": False},
    {"size": (26, 14), "mode": "bicubic", "align_corners": True},
    {"scale_factor": 1.5, "mode": "nearest"},
    {"scale_factor": 2.01, "mode": "nearest"},  # 26 rows from 13: a whole multiple, not a whole factor
    {"scale_factor": (2.3, 1.7), "mode": "bilinear", "align_corners": False},
    {"scale_factor": 1.7, "mode": "bilinear", "recompute_scale_factor": True},
    {"size": (20, 7), "mode": "nearest-exact"},
    {"size": (5, 3), "mode": "area"},
    {"size": (6, 4), "mode": "bilinear", "antialias": True},
    {"size": (5, 4), "mode": "bicubic", "antialias": True},
]


@pytest.mark.parametrize("kwargs", RESAMPLES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_resampling_of_any_mode_and_size_splits_exactly(kwargs: dict[str, object]) -> None:
    _exact_everywhere(Op(lambda x: F.interpolate(x, **kwargs)), (1, 3, 13, 7))  # type: ignore[arg-type]


POOLS = [  # kernel, stride, padding, ceil mode, count_include_pad, divisor_override
    (2, 2, 0, True, False, None),  # ResNet-D's shortcut on an odd map
    (3, 2, 1, True, False, None),
    (3, 1, 1, False, False, None),
    (3, 2, 1, True, True, None),
    (3, 2, 1, False, True, 4),
]


@pytest.mark.parametrize(("k", "s", "p", "ceil", "include", "divisor"), POOLS)
def test_average_pooling_with_partial_windows_splits_exactly(
    k: int, s: int, p: int, ceil: bool, include: bool, divisor: int | None
) -> None:
    pool = nn.AvgPool2d(k, s, p, ceil, include, divisor)
    _exact_everywhere(Op(_apply, 4, pool), (1, 3, 13, 11))


def test_pixel_shuffle_adaptive_pooling_and_layouts_split_exactly() -> None:
    def body(x: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
        y = F.pixel_unshuffle(x, 2)  # 4 -> 16 channels, half the rows
        y = F.adaptive_avg_pool2d(y, (y.shape[2], 3)) + F.adaptive_max_pool2d(y, (y.shape[2], 3))
        n, c, h, w = y.size()
        y = y.view(n, 4, c // 4, h, w).transpose(1, 2).contiguous().view(n, c, h, w)  # channel shuffle
        y = y + mlp(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # a per-pixel MLP in NHWC
        y = y * torch.sigmoid(y.mean(1, keepdim=True))  # spatial attention: a mean over channels
        return F.pixel_shuffle(F.adaptive_avg_pool2d(y, (y.shape[2] // 2, 3)), 2)

    mlp = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    graph = _exact_everywhere(Op(body, 4, mlp), (1, 3, 24, 10))
    targets = [op.target for layer in graph for op in layer.ops]
    assert "F.linear" in targets and "F.pixel_shuffle" in targets


def test_a_layout_that_leaves_the_rows_at_dim_2_stays_split_and_one_that_moves_them_runs_whole() -> None:
    """YOLOv5's head layout (N, anchors, H, W, outputs) keeps the rows at dim 2: the layer stays
    split by rows to its end. A layout with the rows elsewhere runs whole from where it leaves."""

    class Leaves(nn.Module):
        def __init__(self, order: tuple[int, ...]) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, 1, 1)
            self.order = order

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.conv(x))
            return y.view(1, 2, 3, 9, 5).permute(*self.order).sigmoid()

    x = torch.randn(1, 3, 9, 5)
    for order, split in (((0, 1, 3, 4, 2), True), ((0, 1, 2, 4, 3), False)):
        model = Leaves(order).eval()
        graph = trace_model(model, x)
        if split:
            (layer,) = graph.compute_layers
            assert layer.splittable and layer.out_shape == (1, 2, 9, 5, 3) and layer.height == 9
        else:
            conv, tail = graph.compute_layers
            assert conv.splittable and [op.target for op in conv.ops] == ["F.conv2d", "F.relu"]
            assert not tail.splittable and tail.inputs == (conv.name,) and "NCHW" in tail.note
        check = check_partition("p", graph, even_partition(graph, 3), x, reference_outputs(model, x))
        assert check.relative <= TOLERANCE, order


class _Decode(nn.Module):
    """A detection head's decode, with a grid per row and an anchor grid expanded along rows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 14, 1)
        yv, xv = torch.meshgrid(torch.arange(9.0), torch.arange(5.0), indexing="ij")
        self.register_buffer("grid", torch.stack((xv, yv), 2).view(1, 1, 9, 5, 2).expand(1, 2, 9, 5, 2))
        self.register_buffer("anchor", torch.tensor([[2.0, 3.0], [5.0, 7.0]]).view(1, 2, 1, 1, 2).expand(1, 2, 9, 5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).view(1, 2, 7, 9, 5).permute(0, 1, 3, 4, 2).contiguous().sigmoid()
        xy, wh, conf = y.split((2, 2, 3), 4)
        xy = (xy * 2 + self.grid) * 8.0
        wh = (wh * 2) ** 2 * self.anchor
        return torch.cat((xy, wh, conf), 4).view(1, -1, 7)


def test_a_constant_that_goes_with_the_rows_is_read_by_each_unit_for_its_rows() -> None:
    """A detection head's decode: element-wise ops with a grid that has a value per row (and
    one expanded along the rows) stay split; each unit reads its rows of the grid (RowConst)."""

    model, x = _Decode().eval(), torch.randn(1, 3, 9, 5)
    graph = trace_model(model, x)
    split = [layer for layer in graph.compute_layers if layer.splittable]
    row_consts = [a for layer in split for op in layer.ops for a in op.args if isinstance(a, RowConst)]
    assert {c.name for c in row_consts} == {"grid", "anchor"} and all(c.dim == 2 for c in row_consts)
    assert all(layer.splittable for layer in graph.compute_layers)
    assert [op.target for layer in graph.epilogue for op in layer.ops] == ["method.view"]  # the requester's
    for n in (2, 3):
        check = check_partition("p", graph, even_partition(graph, n), x, reference_outputs(model, x))
        assert check.relative <= TOLERANCE, n


@pytest.mark.parametrize(
    "body",
    [
        lambda x: (x * 2).squeeze(2),  # a no-op on the map, but not on a slice of one row
        lambda x: (x * 2).view(torch.int32).float(),  # a view of the bits, not a reshape
        lambda x: (x * 2).unsqueeze(2).flatten(2, 3),
    ],
    ids=["squeeze-rows", "view-dtype", "unsqueeze-flatten"],
)
def test_layout_ops_that_only_look_per_pixel_stay_exact(body: Callable[[torch.Tensor], torch.Tensor]) -> None:
    model = Op(body).eval()
    x = torch.randn(1, 3, 12, 5)
    graph = trace_model(model, x)
    want = reference_outputs(model, x)
    rng = random.Random(2)
    for partition in [even_partition(graph, 3)] + [random_partition(graph, 4, rng) for _ in range(6)]:
        check = check_partition("p", graph, partition, x, want)
        assert check.relative <= TOLERANCE, (partition, check.relative)


def test_eval_identities_vanish() -> None:
    def body(x: torch.Tensor, ident: nn.Module, drop: nn.Module) -> torch.Tensor:
        return F.relu(drop(ident(F.dropout(x, 0.5, training=False))))

    graph = _exact_everywhere(Op(body, 4, nn.Identity(), nn.Dropout2d(0.2)), (1, 3, 9, 5))
    (layer,) = graph.compute_layers
    assert [op.target for op in layer.ops] == ["F.conv2d", "F.relu"]


def test_dropout_that_trains_is_not_an_identity() -> None:
    graph = trace_model(Op(lambda x: F.dropout(x, 0.5)).eval(), torch.randn(1, 3, 9, 5))
    assert "F.dropout" in [op.target for layer in graph for op in layer.ops]


def test_table_rules_bound_their_reach_and_travel_checked() -> None:
    graph = trace_model(Op(lambda x: F.interpolate(x, size=(23, 5), mode="bicubic")), torch.randn(1, 3, 10, 4))
    layer = next(layer for layer in graph if layer.rules and layer.rules[0].pattern == "table")
    rule = layer.rules[0]
    ratio, lo, hi = rule.affine()
    for a in range(23):
        for b in range(a + 1, 24):
            need = rule.needed(RowRange(a, b), 10)
            assert ratio * a + lo <= need.start + 1e-9 and need.stop <= ratio * b + hi + 1e-9
            assert rule.needed_clipped(a, b, 10) == (need.clip(10).start, need.clip(10).stop)
    unit = ExecutionUnit(
        layer.name,
        0,
        RowRange(0, 23),
        layer.out_shape,
        (UnitInput("x", RowRange(0, 10), RowRange(0, 10), rule, (1, 4, 10, 4)),),
        layer.ops,
        (),
    )
    assert unit_of(unit_doc(unit), "$").inputs[0].rule == rule
    for table, why in [(rule.table[:-2], "entries"), ((3, 4, *rule.table[2:]), "row-ordered")]:
        forged = ExecutionUnit(
            unit.layer,
            0,
            unit.rows,
            unit.out_shape,
            (UnitInput("x", RowRange(0, 10), RowRange(0, 10), RowRule("table", table=table), (1, 4, 10, 4)),),
            unit.ops,
            (),
        )
        with pytest.raises(ProtocolError, match=rf"inputs\[0\]\.rule: field 'table'.*{why}"):
            unit_of(unit_doc(forged), "$")


def test_antialiased_resampling_to_one_column_runs_whole_as_pytorch_computes_it() -> None:
    # PyTorch's own result there is not the separable filter (found by the property test): a
    # row-by-row slice would be right and differ from the model, so the layer stays whole.
    model = Op(lambda x: F.interpolate(x, size=(4, 1), mode="bilinear", antialias=True)).eval()
    x = torch.randn(1, 3, 10, 6)
    graph = trace_model(model, x)
    layer = graph["interpolate"]
    assert not layer.splittable and "one column" in layer.note
    check = check_partition("p", graph, even_partition(graph, 2), x, reference_outputs(model, x))
    assert check.relative <= TOLERANCE


def test_a_node_refuses_a_weight_read_by_rows_along_a_dimension_without_the_layer_s_rows() -> None:
    """A forged ``$trows`` dimension would slice another axis (of a square map, and still
    broadcast): the node refuses the unit when it takes the plan."""
    model, x = _Decode().eval(), torch.randn(1, 3, 9, 5)
    graph = trace_model(model, x)
    plan = build_plan(graph, even_partition(graph, 2))

    def forged(value: object) -> object:
        return RowConst(value.name, 3) if isinstance(value, RowConst) else value

    units = tuple(
        dataclasses.replace(
            u, ops=tuple(OpCall(c.target, tuple(forged(a) for a in c.args), c.kwargs, c.node) for c in u.ops)
        )
        for u in plan.units
    )
    with pytest.raises(ProtocolError, match=r"weight (grid|anchor) \(1, 2, 9, 5, 2\) is read by rows along dim 3"):
        plan_runtimes(dataclasses.replace(plan, units=units), graph.tensors, allowed_resolver)
    plan_runtimes(plan, graph.tensors, allowed_resolver)  # as traced: taken
