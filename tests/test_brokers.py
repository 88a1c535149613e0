"""Other standard brokers, as docs/protocol.md's compatibility table lists them: daemons with the
default settings (MQTT 5 first, no weights cached) take a deploy, serve exact requests and show
online in ``edgeflow status``. amqtt (pure Python, MQTT 3.1.1 only) always runs; RabbitMQ's MQTT
plugin (3.1.1 only before 3.13, retained messages only for subscriptions of their exact topic)
runs where Debian's rabbitmq-server is installed (``make test-brokers`` installs it) and is
skipped, saying so, elsewhere."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from controller.lab.launch import RABBITMQ_SERVER, Broker, embedded_broker, rabbitmq_broker
from tests.cluster import DaemonProcess, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

CLUSTER = "brokers"
NODES = ("b1", "b2")
BROKERS: dict[str, Callable[[Path], AbstractContextManager[Broker]]] = {
    "amqtt": embedded_broker,
    "rabbitmq": rabbitmq_broker,
}


@pytest.mark.parametrize("kind", BROKERS)
def test_daemons_with_default_settings_deploy_and_serve_exactly(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "rabbitmq" and not RABBITMQ_SERVER.exists():
        pytest.skip("rabbitmq-server is not installed: `make test-brokers` (as root) installs it and runs this")
    cluster_file = tmp_path / "brokers.yaml"
    devices = "".join(f"  - {{id: {n}, profile: local-core}}\n" for n in NODES)
    cluster_file.write_text(f"schema: edgeflow.cluster/1\nname: {CLUSTER}\ndevices:\n{devices}")
    with BROKERS[kind](tmp_path) as broker:
        daemons = [DaemonProcess(node, broker.url, CLUSTER, tmp_path) for node in NODES]
        try:
            # Every command with its default MQTT version too: each falls back by itself.
            where = ["--cluster", str(cluster_file), "--broker", broker.url]
            code, out = run_cli(
                capsys, "deploy", "--model", "small_dag", *where, "--method", "equal", "--timeout", "120"
            )
            assert code == 0, out + "".join(d.log()[-3000:] for d in daemons)
            asks = ["--cluster", CLUSTER, "--broker", broker.url, "--repeat", "4", "--check"]
            code, out = run_cli(capsys, "infer", "--model", "small_dag", *asks)
            assert code == 0 and "4/4 requests succeeded" in out and ": ok" in out, out
            code, out = run_cli(capsys, "status", *where)  # the nodes' retained statuses, read by exact topic
            assert code == 0
            states = {m[1]: m[2] for m in re.finditer(r"^(\S+) +(\S+) ", out, re.M) if m[1] in NODES}
            assert states == dict.fromkeys(NODES, "online"), out
        finally:
            for daemon in daemons:
                daemon.terminate()
    for daemon in daemons:  # one warning each, not one per reconnect
        assert daemon.log().count("speaking MQTT 3.1.1 to it") == 1, daemon.log()[-3000:]
