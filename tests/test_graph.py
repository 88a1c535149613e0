"""Layer graph: row maps, fusion, unknown ops and the errors users see."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from controller.control.verify import TOLERANCE, check_partition, reference_outputs
from controller.graph.layers import Layer, LayerGraph
from controller.graph.trace import trace_model
from controller.planner.partitions import even_partition, random_partition
from controller.planner.plan import build_plan
from controller.zoo import build_model, parse_shape
from edgeflowd.core.ops import Const, In, OpCall
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import RowRule
from edgeflowd.core.units import check_epilogue, run_epilogue
from edgeflowd.errors import GraphError, ProtocolError
from tests import models


def test_window_rule_reaches_into_padding() -> None:
    conv = RowRule("window", span=5, stride=2, pad=2)  # 3x3, dilation 2, stride 2
    assert conv.needed(RowRange(0, 1), 9) == RowRange(-2, 3)
    assert conv.needed(RowRange(3, 5), 9) == RowRange(4, 11)
    assert conv.needed(RowRange(3, 5), 9).clip(9) == RowRange(4, 9)
    assert conv.needed(RowRange(2, 2), 9).empty


def test_upsample_and_whole_rules() -> None:
    assert RowRule("upsample", factor=2).needed(RowRange(3, 6), 10) == RowRange(1, 3)
    assert RowRule("whole").needed(RowRange(3, 4), 10) == RowRange(0, 10)
    assert RowRule("identity").needed(RowRange(3, 4), 10) == RowRange(3, 4)


def _graph(model: nn.Module, shape: tuple[int, ...]) -> tuple[LayerGraph, torch.Tensor]:
    x = torch.randn(shape)
    return trace_model(model.eval(), x, type(model).__name__), x


def test_conv_bn_activation_fuse_into_one_layer() -> None:
    model, shape = build_model("resnet18")
    graph, _ = _graph(model, shape)
    conv1 = graph["conv1"]
    assert [op.target for op in conv1.ops] == ["F.conv2d", "F.relu"]  # the normalisation folded in
    assert conv1.rules == (RowRule("window", span=7, stride=2, pad=3),)
    assert conv1.kind == "conv" and conv1.splittable


def test_batch_norm_folds_into_the_convolution_before_it() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(8)
    bn.running_mean = torch.empty(8).uniform_(-2, 2)  # statistics far from the identity: a wrong fold shows
    bn.running_var = torch.empty(8).uniform_(0.1, 4)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4, affine=False))
    graph, x = _graph(model, (1, 3, 12, 10))
    assert [[op.target for op in layer.ops] for layer in graph.compute_layers] == [
        ["F.conv2d", "F.relu"],
        ["F.conv2d"],  # no bias and no affine part: folded all the same
    ]
    folded = graph.compute_layers[0].ops[0].kwargs["weight"].name
    assert folded == "0.folded_weight" and not torch.equal(graph.tensors[folded], conv.weight)
    want = reference_outputs(model, x)
    assert check_partition("even", graph, even_partition(graph, 2), x, want).relative <= 1e-6


def test_rule_per_op_kind_in_yolov5s() -> None:
    model, _ = build_model("yolov5s")
    graph, _ = _graph(model, (1, 3, 64, 64))
    kinds: dict[str, Layer] = {}
    for layer in graph:
        kinds.setdefault(layer.kind, layer)  # the first of each kind
    assert kinds["upsample"].rules == (RowRule("upsample", factor=2),)
    assert all(rule.pattern == "identity" for rule in kinds["concat"].rules)
    assert kinds["pool"].rules == (RowRule("window", span=5, stride=1, pad=2),)  # SPPF
    stem = graph["model_0_conv"]
    assert stem.rules == (RowRule("window", span=6, stride=2, pad=2),)
    # The detection levels' boxes are decoded split by rows (N, 3, H, W, 85) and delivered so;
    # the requester flattens and concatenates them (the epilogue).
    levels = [graph[name] for name in graph.outputs]
    assert [layer.out_shape for layer in levels] == [(1, 3, h, h, 85) for h in (8, 4, 2)]
    assert all(layer.splittable for layer in levels)
    assert [layer.ops[-1].target for layer in graph.epilogue] == ["method.view"] * 3 + ["torch.cat"]
    assert graph.model_outputs == (graph.epilogue[-1].name,)
    assert graph.epilogue[-1].out_shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 85)


def test_depthwise_and_broadcast_layers() -> None:
    model, _ = build_model("mobilenet_v2")
    graph, _ = _graph(model, (1, 3, 64, 64))
    assert any(layer.kind == "dwconv" for layer in graph)

    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(F.adaptive_avg_pool2d(x, 1))

    g, _ = _graph(Gate(), (1, 2, 7, 5))
    mul = next(layer for layer in g if layer.ops and layer.ops[0].target == "operator.mul")
    assert [r.pattern for r in mul.rules] == ["identity", "whole"] and mul.splittable


def test_flops_of_a_convolution() -> None:
    graph, _ = _graph(nn.Conv2d(3, 8, 3, 1, 1), (1, 3, 10, 6))
    (conv,) = graph.compute_layers
    assert conv.flops == 2 * 8 * 10 * 6 * 3 * 3 * 3
    assert conv.param_bytes == 4 * (8 * 3 * 3 * 3 + 8)


def test_unknown_ops_run_whole_and_stay_exact() -> None:
    model = models.unknown_ops()
    graph, x = _graph(model, (1, 3, 13, 7))
    notes = {layer.name: layer.note for layer in graph if layer.note}
    assert len(notes) == 3 and all("unknown to EdgeFlow" in n for n in notes.values())
    want = reference_outputs(model, x)
    rng = random.Random(1)
    for i, partition in enumerate([even_partition(graph, 3)] + [random_partition(graph, 3, rng) for _ in range(10)]):
        assert check_partition(f"p{i}", graph, partition, x, want).relative <= TOLERANCE


def test_a_wrong_row_map_is_caught() -> None:
    """The exactness check can fail: treat torch.roll's layer as row-local and it does."""
    model = models.unknown_ops()
    graph, x = _graph(model, (1, 3, 13, 7))
    want = reference_outputs(model, x)
    roll = next(layer for layer in graph.compute_layers if "roll" in layer.ops[0].target)
    graph.layers[roll.name] = dataclasses.replace(roll, splittable=True, rules=(RowRule("identity"),))
    check = check_partition("even", graph, even_partition(graph, 3), x, want)
    assert check.relative > TOLERANCE


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (models.ControlFlow, r"cannot trace model .*control flow.*tests/models.py:\d+ in forward"),
        (models.DataDependent, r"node item .* computes a .* from tensor data"),
        (models.TwoInputs, r"takes 2 inputs"),
    ],
)
def test_models_that_cannot_be_planned_get_a_clear_error(factory: type[nn.Module], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        trace_model(factory(), torch.randn(1, 3, 8, 8), factory.__name__)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.models:missing", "has no callable 'missing'"),
        ("no_such_package.mod:f", "cannot import no_such_package.mod"),
        ("tests.models:not_a_module", "returned int, not a torch.nn.Module"),
        ("resnet", "expected a zoo name"),
    ],
)
def test_bad_model_specs(spec: str, message: str) -> None:
    with pytest.raises(GraphError, match=message):
        build_model(spec)


def test_parse_shape() -> None:
    assert parse_shape("1x3x640x640") == (1, 3, 640, 640)
    for bad in ("3x640x640", "1x3xax4", "1x3x0x4"):
        with pytest.raises(ValueError, match="1x3xHxW"):
            parse_shape(bad)


def test_rows_computed_from_padding_alone() -> None:
    """Padding wider than the kernel: edge rows read no input row at all."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1, padding=2), nn.ReLU(), nn.Conv2d(4, 2, 3, 2, 3))
    graph, x = _graph(model, (1, 3, 6, 5))
    want = reference_outputs(model, x)
    rng = random.Random(2)
    for partition in [even_partition(graph, 4)] + [random_partition(graph, 4, rng) for _ in range(10)]:
        assert check_partition("p", graph, partition, x, want).relative <= TOLERANCE


def test_needed_clipped_matches_needed() -> None:
    rules = [
        RowRule("window", span=5, stride=2, pad=2),
        RowRule("upsample", factor=2),
        RowRule("identity"),
        RowRule("whole"),
    ]
    for rule in rules:
        for start in range(0, 9):
            for stop in range(start + 1, 10):
                want = rule.needed(RowRange(start, stop), 9).clip(9)
                lo, hi = rule.needed_clipped(start, stop, 9)
                assert (max(lo, 0), hi) == (want.start, want.stop) or (want.empty and lo >= hi)


def test_the_last_layers_that_only_move_data_are_the_requester_s_epilogue() -> None:
    """A model ending in flattening views and a concatenation (a detection head's) delivers what
    they read, row by row, and the requester runs them; a layer with a weight, one that reads the
    model input, or one larger to deliver than its result stays in the plan."""

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(3, 4, 3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat((self.a(x).flatten(1), self.b(x).flatten(1)), 1)

    x, model = torch.randn(1, 3, 8, 6), Heads().eval()
    graph = trace_model(model, x)
    assert [layer.ops[0].target for layer in graph.epilogue] == ["method.flatten", "method.flatten", "torch.cat"]
    assert graph.outputs == ("a", "b") and all(graph[o].splittable for o in graph.outputs)
    assert graph.model_outputs == (graph.epilogue[-1].name,)
    check = check_partition("even", graph, even_partition(graph, 2), x, reference_outputs(model, x))
    assert check.relative <= 1e-6

    class Kept(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, 1, 1), nn.Linear(4 * 8 * 6, 5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            y = self.conv(x).flatten(1)
            return self.fc(y), x.flatten(1), y[:, :10].contiguous()

    graph = trace_model(Kept().eval(), x)
    assert not graph.epilogue and graph.results == ()


def test_a_model_returning_one_tensor_twice_returns_it_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.conv(x)
            return y, y

    x, model = torch.randn(1, 3, 8, 6), Twice().eval()
    graph = trace_model(model, x)
    assert graph.outputs == ("conv",) and graph.model_outputs == ("conv", "conv")
    check = check_partition("even", graph, even_partition(graph, 2), x, reference_outputs(model, x))
    assert check.relative <= 1e-6


def test_a_requester_refuses_an_epilogue_it_should_not_run() -> None:
    """The epilogue comes from the network (the plan summary): checked before anything runs."""
    model = build_model("yolov5s")[0]
    x = torch.randn(1, 3, 64, 64)
    graph = trace_model(model, x, "yolov5s")
    plan = build_plan(graph, even_partition(graph, 2))
    delivered = {name: graph[name].out_shape for name in plan.outputs}
    check_epilogue(plan.epilogue, plan.results, delivered, "$")  # as planned: fine
    first = plan.epilogue[0]
    weighted = dataclasses.replace(first, ops=(OpCall("operator.add", (In(0), Const("w")), {}),))
    with pytest.raises(ProtocolError, match=r"\$.epilogue\[0\] \(view_1\).ops\[0\]: names weight 'w'"):
        check_epilogue((weighted, *plan.epilogue[1:]), plan.results, delivered, "$")
    with pytest.raises(ProtocolError, match=r"inputs\[0\]: 'cat_13' .* is neither delivered"):
        check_epilogue(plan.epilogue, plan.results, {}, "$")
    with pytest.raises(ProtocolError, match=r"\$.results: empty"):
        check_epilogue(plan.epilogue, (), delivered, "$")
    with pytest.raises(ProtocolError, match=r"not allow-listed"):
        check_epilogue((dataclasses.replace(first, ops=(OpCall("os.system", (In(0),), {}),)),), (), delivered, "$")
    tensors = {name: torch.zeros(shape) for name, shape in delivered.items()}
    wrong = dataclasses.replace(first, out_shape=(1, 7, 85))
    with pytest.raises(ProtocolError, match=r"epilogue unit view_1 gave shape"):
        run_epilogue((wrong,), (first.layer,), tensors)
