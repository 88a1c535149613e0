"""Home Assistant's MQTT discovery on a real Mosquitto with real daemons and a controller: the
retained device config (device, origin, components with unique ids, availability), every value
template rendered by Jinja2 (Home Assistant's template engine) against what the node really
publishes, availability that a SIGKILL turns offline, announcing again when Home Assistant comes
online, a renamed node's old device removed, and ``edgeflowd --forget``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jinja2
import pytest

from edgeflowd import __version__
from edgeflowd.net.mqtt import Connection, MessageQueue, listen, received
from edgeflowd.wire.topics import Topics
from tests.cluster import DaemonProcess, mosquitto_broker

pytestmark = pytest.mark.integration

CLUSTER = "ha"
PREFIX = "homeassistant"


def _config_topic(name: str) -> str:
    return f"{PREFIX}/device/edgeflow_{CLUSTER}_{name}/config"


def _next(
    messages: MessageQueue, topic: str, wait_s: float, empty: bool = False, seen: dict[str, bytes] | None = None
) -> bytes:
    """The next payload on ``topic`` (an empty one when ``empty``) within ``wait_s``; what else
    comes meanwhile goes into ``seen``."""
    for got, payload in received(messages, wait_s):
        if seen is not None:
            seen[got] = payload
        if got == topic and (payload == b"") == empty:
            return payload
    raise AssertionError(f"nothing {'empty ' if empty else ''}on {topic} within {wait_s:g} s")


def _render(template: str, payload: bytes) -> str:
    return jinja2.Environment(autoescape=False).from_string(template).render(value_json=json.loads(payload))


def _check_config(config: dict[str, Any], device: str, model: str) -> None:
    assert config["device"]["identifiers"] == [device] and config["device"]["model"] == model
    assert config["device"]["sw_version"] == __version__ and config["device"]["name"]
    assert config["origin"]["name"] and config["origin"]["sw_version"] == __version__
    ids = [c["unique_id"] for c in config["components"].values()]
    assert len(set(ids)) == len(ids) and all(i.startswith(f"{device}_") for i in ids)
    assert {c["platform"] for c in config["components"].values()} == {"sensor", "binary_sensor"}
    assert [a["value_template"] for a in config["availability"]] == ["{{ value_json.state }}"]


def test_a_node_is_a_home_assistant_device_whose_availability_follows_it(tmp_path: Path) -> None:
    topics = Topics(CLUSTER)
    cache = tmp_path / "cache"
    cache.mkdir()
    with mosquitto_broker(tmp_path) as broker:
        watch, messages = listen(broker.settings, "ha-watch", [f"{PREFIX}/#", f"{topics.root}/node/#"])
        flags = ("--homeassistant-discovery", "--cache-dir", str(cache))
        daemon = DaemonProcess("ha-1", broker.url, CLUSTER, tmp_path, *flags)
        try:
            last: dict[str, bytes] = {}
            config = json.loads(_next(messages, _config_topic("ha-1"), 120, seen=last))
            _check_config(config, "edgeflow_ha_ha-1", "edgeflowd")
            status = topics.node("ha-1", "status")
            assert config["availability"][0]["topic"] == status
            # Every entity's template, on what the node itself publishes on its state topic (the
            # report's entities have no state before a deploy: their topic stays empty).
            for topic, payload in received(messages, 8.0):  # telemetry comes every 2 s
                last[topic] = payload
            rendered = {
                key: _render(c["value_template"], last[c["state_topic"]])
                for key, c in config["components"].items()
                if c["state_topic"] in last and last[c["state_topic"]]
            }
            print("entities:", rendered)
            assert rendered["online"] == "ON" and _render("{{ value_json.state }}", last[status]) == "online"
            assert {"cpu", "others_load", "gflops", "request_ms"} <= set(rendered)
            assert float(rendered["gflops"]) > 0 and 0 <= float(rendered["cpu"]) <= 100

            # Home Assistant restarted: every device announces itself again.
            ha = Connection(broker.settings, "ha-itself", lambda t, p: None)
            ha.start()
            try:
                ha.publish_wait(f"{PREFIX}/status", b"online")
            finally:
                ha.stop()
            assert json.loads(_next(messages, _config_topic("ha-1"), 10)) == config

            daemon.kill()  # the broker's last will, after 1.5x the 5 s keepalive
            deadline = time.monotonic() + 20
            while _render("{{ value_json.state }}", _next(messages, status, 20)) != "offline":
                assert time.monotonic() < deadline
        finally:
            daemon.kill()

        # The same board, renamed (its cache kept): the old device goes, the new one comes.
        renamed = DaemonProcess("ha-2", broker.url, CLUSTER, tmp_path, *flags)
        try:
            _next(messages, _config_topic("ha-1"), 120, empty=True)
            _next(messages, _config_topic("ha-2"), 30)
        finally:
            assert renamed.terminate() == 0
        watch.stop()

        # A board that leaves the cluster: --forget clears everything it kept on the broker.
        forget = [sys.executable, "-m", "edgeflowd.node.cli", "--node-id", "ha-2", "--broker", broker.url]
        done = subprocess.run(
            [*forget, "--cluster", CLUSTER, "--forget"], check=False, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        kept = [_config_topic("ha-2"), *(topics.node("ha-2", leaf) for leaf in ("status", "info"))]
        after, retained = listen(broker.settings, "ha-after", kept)
        try:
            assert [t for t, p in received(retained, 2.0) if p] == []
        finally:
            after.stop()


def test_the_controller_is_a_home_assistant_device(tmp_path: Path) -> None:
    from controller.lab.launch import controller_process  # noqa: PLC0415 - as the other controller tests

    cluster_file = tmp_path / "ha.yaml"
    cluster_file.write_text(
        f"schema: edgeflow.cluster/1\nname: {CLUSTER}\ndevices:\n  - {{id: n1, profile: local-core}}\n"
    )
    with mosquitto_broker(tmp_path) as broker:
        watch, messages = listen(broker.settings, "ha-watch", [f"{PREFIX}/#"])
        try:
            with controller_process(broker, tmp_path, str(cluster_file), "small_dag", "--homeassistant-discovery"):
                config = json.loads(_next(messages, _config_topic("controller"), 120))
                _check_config(config, "edgeflow_ha_controller", "edgeflow controller")
                wanted = {"plan", "method", "predicted_ms", "measured_ms", "nodes"}
                assert wanted <= set(config["components"]), config["components"]
                assert config["availability"][0]["topic"] == Topics(CLUSTER).controller("status")
        finally:
            watch.stop()
