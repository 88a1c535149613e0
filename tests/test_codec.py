"""Units cross the wire as JSON + raw tensor bytes, round-trip exactly, and malformed bundles
fail with ProtocolError naming the field."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.control.verify import run_plan
from controller.graph.trace import trace_model
from controller.planner.partitions import even_partition
from controller.planner.plan import Plan, build_plan
from controller.zoo import build_model
from edgeflowd.core.ops import allowed_resolver
from edgeflowd.core.units import CLIENT
from edgeflowd.errors import ProtocolError
from edgeflowd.wire.codec import decode_bundle, decode_units, encode_bundle, encode_units
from tests import models


@pytest.fixture(scope="module")
def yolo() -> tuple[Plan, dict[str, torch.Tensor], torch.Tensor]:
    model, _ = build_model("yolov5s")
    x = torch.randn(1, 3, 96, 96)
    graph = trace_model(model, x, "yolov5s")
    return build_plan(graph, even_partition(graph, 3)), graph.tensors, x


def test_units_round_trip_and_run_from_decoded_bytes(yolo: tuple[Plan, dict[str, torch.Tensor], torch.Tensor]) -> None:
    plan, tensors, x = yolo
    want, _, _ = run_plan(plan, x, tensors, allowed_resolver)
    decoded_units = []
    decoded_tensors: dict[str, torch.Tensor] = {}
    for device in range(plan.n_devices):
        units = plan.on_device(device)
        blob = encode_units(units, tensors)
        got_units, got_tensors = decode_units(blob)
        assert [u.to_json() for u in got_units] == [u.to_json() for u in units]
        for name, t in got_tensors.items():
            assert torch.equal(t, tensors[name])
        decoded_units += got_units
        decoded_tensors.update(got_tensors)
    rebuilt = Plan(plan.model, plan.n_devices, tuple(plan.on_device(CLIENT) + decoded_units), plan.outputs)
    rebuilt = Plan(
        rebuilt.model,
        rebuilt.n_devices,
        tuple(sorted(rebuilt.units, key=lambda u: plan.units.index(plan.unit(u.uid)))),
        rebuilt.outputs,
    )
    got, _, _ = run_plan(rebuilt, x, decoded_tensors, allowed_resolver)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_plan_json_round_trip(yolo: tuple[Plan, dict[str, torch.Tensor], torch.Tensor]) -> None:
    plan, _, _ = yolo
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
    again.validate()


def test_a_unit_only_carries_the_weights_it_names(yolo: tuple[Plan, dict[str, torch.Tensor], torch.Tensor]) -> None:
    plan, tensors, _ = yolo
    unit = plan.unit("model_0_conv@d1")
    _, got = decode_units(encode_units([unit], tensors))
    assert sorted(got) == unit.const_names() and "model.0.conv.weight" in got


def test_model_local_ops_are_refused_where_the_model_is_not_loaded() -> None:
    model = models.unknown_ops()
    x = torch.randn(1, 3, 9, 5)
    graph = trace_model(model, x, "unknown")
    plan = build_plan(graph, even_partition(graph, 2))
    units, tensors = decode_units(encode_units(list(plan.units), graph.tensors))
    with pytest.raises(ProtocolError, match=r"op 'local\.module\.pad' is not allow-listed"):
        run_plan(Plan(plan.model, 2, tuple(units), plan.outputs), x, tensors, allowed_resolver)


def _header(meta: object, tensors: object) -> bytes:
    header = json.dumps({"meta": meta, "tensors": tensors}).encode()
    return b"EFB1" + struct.pack(">I", len(header)) + header


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "bad magic"),
        (b"EFB2" + bytes(8), "bad magic"),
        (b"EFB1" + struct.pack(">I", 99) + b"{}", "exceeds"),
        (b"EFB1" + struct.pack(">I", 2) + b"{]", "not JSON"),
        (_header([], {}), "needs objects"),
        (_header({}, {"w": {"dtype": "object", "shape": [1], "offset": 0, "nbytes": 4}}), r"tensors\.w: needs dtype"),
        (_header({}, {"w": {"dtype": "float32", "shape": [2], "offset": 0, "nbytes": 4}}) + bytes(8), "needs 8 bytes"),
        (_header({}, {"w": {"dtype": "float32", "shape": [2], "offset": 4, "nbytes": 8}}) + bytes(8), "payload has 8"),
        (_header({"schema": "edgeflow.units/1", "units": [{"layer": "a"}]}, {}), r"units\[0\]"),
        (_header({"schema": "other"}, {}), "meta.schema"),
    ],
)
def test_malformed_bundles_name_the_fault(blob: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_units(blob)


def test_unknown_op_names_and_value_kinds_are_rejected() -> None:
    unit = {
        "layer": "a",
        "device": 0,
        "rows": [0, 1],
        "out_shape": [1],
        "inputs": [],
        "forwards": [],
        "ops": [{"target": "F.relu", "args": {"$pickle": "x"}}],
    }
    with pytest.raises(ProtocolError, match=r"ops\[0\]\.args: unknown value kind '\$pickle'"):
        decode_units(encode_bundle({"schema": "edgeflow.units/1", "units": [unit]}, {}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_units(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 400))
def test_truncated_bundles_fail_cleanly(cut: int) -> None:
    blob = encode_bundle({"schema": "edgeflow.units/1", "units": []}, {"w": torch.arange(24.0).view(2, 3, 4)})
    if cut >= len(blob):
        _meta, tensors = decode_bundle(blob)
        assert torch.equal(tensors["w"], torch.arange(24.0).view(2, 3, 4))
        return
    with pytest.raises(ProtocolError):
        decode_bundle(blob[:cut])
