"""Control messages: round trips, tolerance of unknown keys, and errors naming topic and field."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflowd.errors import ProtocolError
from edgeflowd.wire.messages import AssignmentReport, Info, Status, Telemetry, decode_control, encode_control

TOPIC = "edgeflow/v2/lab/node/pi4-a/telemetry"


@pytest.mark.parametrize(
    "message",
    [
        Status("online", "a1b2", 3),
        Info("pi4-a", "0.1.0", [1], {"gflops": 7.0}, {"conv": 6.1}),
        Telemetry(12.5, 40.0, [0.5, 0.4, 0.3], None, 2),
        AssignmentReport(7, "error", "unit conv1@d0: needs 310 MiB", ["conv1@d0"]),
    ],
)
def test_round_trip(message: object) -> None:
    payload = encode_control(message)  # type: ignore[arg-type]
    assert json.loads(payload)["schema"].startswith("edgeflow.")
    assert decode_control(payload, TOPIC, type(message)) == message  # type: ignore[type-var]


def test_unknown_keys_are_ignored() -> None:
    payload = json.dumps({"schema": "edgeflow.status/1", "state": "online", "instance": "x", "colour": "red"})
    assert decode_control(payload.encode(), TOPIC, Status) == Status("online", "x")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff", "not JSON"),
        (b"[1]", "Expected `object`, got `array`"),
        (b"{}", "missing required field `schema`"),
        (b'{"schema": "edgeflow.info/1"}', "Invalid value 'edgeflow.info/1' - at `\\$.schema`"),
        (b'{"schema": "edgeflow.telemetry/2"}', "Invalid value 'edgeflow.telemetry/2' - at `\\$.schema`"),
        (b'{"schema": "edgeflow.telemetry/1", "cpu_percent": 1}', "missing required field `memory_percent`"),
        (
            b'{"schema": "edgeflow.telemetry/1", "cpu_percent": "busy", "memory_percent": 1, "load_avg": []}',
            "Expected `float`, got `str` - at `\\$.cpu_percent`",
        ),
        (
            b'{"schema": "edgeflow.telemetry/1", "cpu_percent": 1, "memory_percent": 1, "load_avg": ["x"]}',
            "at `\\$.load_avg\\[0\\]`",
        ),
        (
            b'{"schema": "edgeflow.telemetry/1", "cpu_percent": true, "memory_percent": 1, "load_avg": []}',
            "Expected `float`, got `bool` - at `\\$.cpu_percent`",
        ),
    ],
)
def test_bad_messages_name_topic_and_field(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=rf"^{TOPIC}: .*{message}"):
        decode_control(body, TOPIC, Telemetry)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_payloads_only_ever_raise_protocol_errors(data: bytes) -> None:
    for cls in (Status, Info, Telemetry, AssignmentReport):
        with contextlib.suppress(ProtocolError):
            decode_control(data, TOPIC, cls)


def test_deeply_nested_json_is_refused_as_a_protocol_error() -> None:
    nested = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    payload = b'{"schema": "edgeflow.info/1", "node": "a", "version": "1", "profile": ' + nested + b"}"
    with pytest.raises(ProtocolError, match=f"^{TOPIC}: JSON nested too deeply"):
        decode_control(payload, TOPIC, Info)


@pytest.mark.parametrize("value", ["1e999", "1" + "0" * 400, "-3", "1e20"])
def test_a_measurement_out_of_range_is_refused_never_planned_on(value: str) -> None:
    body = f'{{"schema":"edgeflow.info/1","node":"a","version":"x","benchmark":{{"conv_gflops":{value}}}}}'
    with pytest.raises(ProtocolError, match=r"node/a/info: .* - at `\$\.benchmark"):
        decode_control(body.encode(), "node/a/info", Info)
    ok = '{"schema":"edgeflow.info/1","node":"a","version":"x","benchmark":{"conv_gflops":12.5,"measured_at":1.8e9}}'
    assert decode_control(ok.encode(), "node/a/info", Info).benchmark == {"conv_gflops": 12.5, "measured_at": 1.8e9}
