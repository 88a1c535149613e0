"""Asking the controller over MQTT, as a dashboard does (zigbee2mqtt's request/response style), on
a real Mosquitto with a real daemon: ``status``, ``replan`` and ``set_method`` answered with the
transaction echoed, and a clear error (never a dead controller) for an unknown operation, a bad
field and a payload that is not JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.lab.launch import controller_process
from edgeflowd.net.mqtt import Connection
from edgeflowd.wire.messages import ControllerEvent, PlanInfo, decode_control
from edgeflowd.wire.topics import Topics
from tests.cluster import DaemonProcess, Watcher, mosquitto_broker

pytestmark = pytest.mark.integration

CLUSTER = "asked"


def _ask(conn: Connection, watcher: Watcher, op: str, payload: bytes) -> dict[str, Any]:
    """Publish a request and wait for the answer on its response topic."""
    topic = Topics(CLUSTER).response(op)
    watcher.last.pop(topic, None)
    conn.publish_wait(Topics(CLUSTER).request(op), payload)
    watcher.wait_for(f"the answer to {op}", lambda last: topic in last, timeout_s=30)
    answer: dict[str, Any] = json.loads(watcher.last[topic])
    print(op, payload, "->", answer)
    return answer


def _events(watcher: Watcher) -> list[ControllerEvent]:
    return [decode_control(p, "event", ControllerEvent) for t, p, _ in watcher.seen if t.endswith("/controller/event")]


def test_status_replan_and_set_method_over_mqtt(tmp_path: Path) -> None:
    cluster_file = tmp_path / "asked.yaml"
    cluster_file.write_text(
        f"schema: edgeflow.cluster/1\nname: {CLUSTER}\ndevices:\n  - {{id: n1, profile: local-core}}\n"
    )
    topics = Topics(CLUSTER)
    with mosquitto_broker(tmp_path) as broker:
        daemon = DaemonProcess("n1", broker.url, CLUSTER, tmp_path)
        watcher = Watcher(broker.settings, CLUSTER, keep=True)
        asker = Connection(broker.settings, "dashboard-asker", lambda t, p: None)
        asker.start()
        try:
            with controller_process(broker, tmp_path, str(cluster_file), "small_dag", "--method", "edgeflow"):
                plan_topic = topics.controller("plan", "small_dag")
                watcher.wait_for("the first plan", lambda last: bool(last.get(plan_topic)), timeout_s=120)
                plan = decode_control(watcher.last[plan_topic], "plan", PlanInfo)

                status = _ask(asker, watcher, "status", b'{"transaction": "t-1"}')
                assert status["status"] == "ok" and status["transaction"] == "t-1"
                data = status["data"]
                assert data["nodes"] == {"n1": "online"} and data["method"] == "edgeflow"
                assert (
                    list(data["models"]) == ["small_dag"]
                    and data["models"]["small_dag"]["generation"] == plan.generation
                )

                replan = _ask(asker, watcher, "replan", b'{"transaction": 7}')
                assert replan == {
                    "status": "ok",
                    "data": {"generations": {"small_dag": plan.generation}, "nodes": ["n1"]},
                    "transaction": 7,
                }
                watcher.wait_for(
                    "the re-plan asked for",
                    lambda last: any("asked for over MQTT" in e.detail for e in _events(watcher)),
                    timeout_s=60,
                )

                unknown = _ask(asker, watcher, "reboot", b'{"transaction": "x"}')
                assert unknown["status"] == "error" and unknown["transaction"] == "x"
                assert "unknown operation 'reboot' (known: replan, set_method, status)" in unknown["error"]
                bad = _ask(asker, watcher, "set_method", b'{"transaction": "m", "method": "fastest"}')
                assert bad["status"] == "error" and "method 'fastest': expected one of" in bad["error"]
                extra = _ask(asker, watcher, "status", b'{"transaction": "e", "verbose": true}')
                assert extra["status"] == "error" and "verbose" in extra["error"] and extra["transaction"] == "e"
                garbage = _ask(asker, watcher, "status", b"{not json")
                assert garbage["status"] == "error" and "not JSON" in garbage["error"]

                switched = _ask(asker, watcher, "set_method", b'{"method": "equal"}')
                assert switched["status"] == "ok" and switched["data"] == {"method": "equal", "was": "edgeflow"}
                watcher.wait_for(
                    "a plan made with equal",
                    lambda last: decode_control(last[plan_topic], "plan", PlanInfo).method == "equal",
                    timeout_s=60,
                )
                assert _ask(asker, watcher, "status", b"")["data"]["method"] == "equal"  # still answering
        finally:
            asker.stop()
            watcher.close()
            daemon.terminate()
