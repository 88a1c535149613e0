"""What dashboards see and ask, as pure logic: the request/response answers (no broker: the
answer is computed before anything is published) and the Home Assistant discovery configs."""

from __future__ import annotations

import json
from typing import Any, cast

from controller.control.dashboard import Dashboard, Request
from edgeflowd.errors import EdgeFlowError
from edgeflowd.net.mqtt import Connection
from edgeflowd.wire.discovery import controller_config, node_config, object_id
from edgeflowd.wire.topics import RequestTopic, Topics

TOPICS = Topics("lab")


def _refuse(request: Request) -> dict[str, Any]:
    raise EdgeFlowError("not now")


def _dashboard() -> Dashboard:
    operations = {"status": lambda r: {"ok": True}, "set_method": lambda r: {"method": r.method}, "busy": _refuse}
    return Dashboard(cast(Connection, None), TOPICS, operations, None, ["small_dag"])  # answer() publishes nothing


def _answer(op: str, payload: bytes) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(_dashboard().answer(op, payload, TOPICS.request(op)))
    return answer


def test_answers_echo_the_transaction_and_name_what_is_wrong() -> None:
    assert _answer("status", b'{"transaction": 3}') == {"status": "ok", "data": {"ok": True}, "transaction": 3}
    assert _answer("status", b"") == {"status": "ok", "data": {"ok": True}}
    assert _answer("set_method", b'{"method": "equal"}')["data"] == {"method": "equal"}
    where = TOPICS.request("nope")
    assert _answer("nope", b'{"transaction": "t"}') == {
        "status": "error",
        "error": f"{where}: unknown operation 'nope' (known: busy, set_method, status)",
        "transaction": "t",
    }
    assert _answer("busy", b'{"transaction": "b"}') == {"status": "error", "error": "not now", "transaction": "b"}
    wrong = _answer("set_method", b'{"transaction": "w", "method": 5}')
    assert (
        wrong["transaction"] == "w" and "$.method" in wrong["error"] and TOPICS.request("set_method") in wrong["error"]
    )
    assert "not JSON" in _answer("status", b"{oops")["error"]
    assert "Object contains unknown field `colour`" in _answer("status", b'{"colour": 1}')["error"]
    assert TOPICS.parse(TOPICS.request("replan")) == RequestTopic("replan")


def test_discovery_ids_are_what_home_assistant_allows_and_unique() -> None:
    assert object_id("lab.1", "pi 4/a") == "edgeflow_lab_1_pi_4_a"
    for topic, payload in (
        node_config(TOPICS, "lab", "pi4-a", "1.0", "homeassistant"),
        controller_config(TOPICS, "lab", "1.0", "homeassistant", ["yolov5s"]),
        controller_config(TOPICS, "lab", "1.0", "homeassistant", ["yolov5s", "pkg.models:seg net"]),
    ):
        config = json.loads(payload)
        device = config["device"]["identifiers"][0]
        assert topic == f"homeassistant/device/{device}/config"
        ids = [c["unique_id"] for c in config["components"].values()]
        assert len(set(ids)) == len(ids) and all(i.startswith(device + "_") for i in ids)
        assert all(c["state_topic"].startswith(TOPICS.root + "/") for c in config["components"].values())
