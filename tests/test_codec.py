"""Units cross the wire inside assignments: they round-trip exactly through their JSON document and
weight blobs and compute the same rows, and malformed documents fail with ProtocolError naming
the path of the fault."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.control.deployment import Deployment, make_deployment
from controller.control.verify import run_plan
from controller.graph.trace import trace_model
from controller.planner.partitions import even_partition
from controller.planner.plan import Plan, build_plan
from controller.zoo import build_model
from edgeflowd.core.ops import allowed_resolver
from edgeflowd.core.units import CLIENT, ExecutionUnit
from edgeflowd.errors import ProtocolError
from edgeflowd.wire.assignment import Assignment, split_blob, tensor_of_blob
from edgeflowd.wire.units import unit_doc, unit_of
from tests import models

TOPIC = "edgeflow/v2/lab/node/n0/assignment"
Yolo = tuple[Plan, Deployment, torch.Tensor]


@pytest.fixture(scope="module")
def yolo() -> Yolo:
    model, _ = build_model("yolov5s")
    x = torch.randn(1, 3, 96, 96)
    graph = trace_model(model, x, "yolov5s")
    plan = build_plan(graph, even_partition(graph, 3))
    return plan, make_deployment(plan, graph, ["n0", "n1", "n2"], 1, "even", part_bytes=1 << 16), x


def test_units_round_trip_and_run_from_decoded_bytes(yolo: Yolo) -> None:
    plan, deployment, x = yolo
    tensors: dict[str, torch.Tensor] = {}
    decoded_units: list[ExecutionUnit] = []
    for node, assignment in deployment.assignments.items():
        decoded = Assignment.from_bytes(assignment.to_bytes(), node)
        assert decoded == assignment
        for name, ref in decoded.weights.items():
            raw = deployment.blobs[ref.sha256][1]
            tensors[name] = tensor_of_blob(ref, dict(enumerate(split_blob(raw, ref))), name)
        decoded_units += decoded.units
    rebuilt = dataclasses.replace(plan, units=(*plan.on_device(CLIENT), *decoded_units))
    want, _, _ = run_plan(plan, x, {n: tensors[n] for n in tensors}, allowed_resolver)
    got, _, _ = run_plan(rebuilt, x, tensors, allowed_resolver)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_the_decode_head_s_grids_travel_as_constants_read_by_rows(yolo: Yolo) -> None:
    """YOLOv5s' box decode is split by rows: its grids cross the wire as row-read constants."""
    _, deployment, _ = yolo
    docs = [json.loads(a.to_bytes()) for a in deployment.assignments.values()]
    assert '"$trows"' in json.dumps(docs)


def test_a_unit_only_carries_the_weights_it_names(yolo: Yolo) -> None:
    plan, deployment, _ = yolo
    unit = plan.unit("model_0_conv@d1")
    weights = deployment.assignments["n1"].weights
    assert set(unit.const_names()) <= set(weights) and "model.0.conv.folded_weight" in weights
    assert set(weights) == {n for u in plan.on_device(1) for n in u.const_names()}


def test_model_local_ops_are_refused_where_the_model_is_not_loaded() -> None:
    model = models.unknown_ops()
    x = torch.randn(1, 3, 9, 5)
    graph = trace_model(model, x, "unknown")
    plan = build_plan(graph, even_partition(graph, 2))
    units = tuple(unit_of(unit_doc(u), "t") for u in plan.units)
    assert units == plan.units
    with pytest.raises(ProtocolError, match=r"op 'local\.module\.pad' is not allow-listed"):
        run_plan(Plan(plan.model, 2, units, plan.outputs), x, graph.tensors, allowed_resolver)


def _document(yolo: Yolo) -> dict[str, object]:
    data: dict[str, object] = json.loads(yolo[1].assignments["n0"].to_bytes())
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["units"][0].pop("layer"), r"missing required field `layer` - at `\$.units\[0\]`"),
        (lambda d: d["units"][0].update(rows=[5, 2]), r"\$.units\[0\]\[.*#0\].rows: row range \[5, 2\) has stop"),
        (
            lambda d: d["units"][0]["inputs"][0]["rule"].update(kind="spiral"),
            r"at `\$.units\[0\].inputs\[0\].rule.kind`",
        ),
        (
            lambda d: d["units"][0]["ops"][0].update(args={"$pickle": "x"}),
            r"ops\[0\].args: unknown value kind '\$pickle'",
        ),
        (lambda d: d["units"][0]["ops"][0].update(args=[1]), r"ops\[0\]: 'args' must encode a tuple"),
        (
            lambda d: d["units"][0]["ops"][0].update(args={"$tuple": [{"$trows": ["grid", -1]}]}),
            r"ops\[0\].args\[0\]: bad \$trows value \['grid', -1\]",
        ),
        (lambda d: d["units"][0].update(device="0"), r"Expected `int`, got `str` - at `\$.units\[0\].device`"),
    ],
)
def test_malformed_units_name_the_path(yolo: Yolo, change: object, message: str) -> None:
    data = _document(yolo)
    change(data)  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=message):
        Assignment.from_bytes(json.dumps(data).encode(), TOPIC)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Assignment.from_bytes(data, TOPIC)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 1.0))
def test_truncated_assignments_fail_cleanly(yolo: Yolo, share: float) -> None:
    payload = yolo[1].assignments["n0"].to_bytes()
    cut = int(share * (len(payload) - 1))
    with pytest.raises(ProtocolError):
        Assignment.from_bytes(payload[:cut], TOPIC)
