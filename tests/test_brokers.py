"""Other standard brokers, as docs/protocol.md's compatibility table lists them: daemons with the
default settings (MQTT 5 first, no weights cached) take a deploy, serve exact requests and show
online in ``edgeflow status``. amqtt (pure Python, MQTT 3.1.1 only) always runs; RabbitMQ's MQTT
plugin (3.1.1 only before 3.13, retained messages only for subscriptions of their exact topic)
and ejabberd's MQTT service (MQTT 5; every client logs in with a password, anonymous login
takes any) run where Debian's packages are installed (``make test-brokers`` installs them; ejabberd
also needs root, which its ejabberdctl wants) and are skipped, saying so, elsewhere."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from controller.lab.launch import (
    EJABBERDCTL,
    RABBITMQ_SERVER,
    Broker,
    ejabberd_broker,
    embedded_broker,
    rabbitmq_broker,
)
from tests.cluster import DaemonProcess, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

CLUSTER = "brokers"
NODES = ("b1", "b2")
BROKERS: dict[str, Callable[[Path], AbstractContextManager[Broker]]] = {
    "amqtt": embedded_broker,
    "rabbitmq": rabbitmq_broker,
    "ejabberd": ejabberd_broker,
}


@pytest.mark.parametrize("kind", BROKERS)
def test_daemons_with_default_settings_deploy_and_serve_exactly(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "rabbitmq" and not RABBITMQ_SERVER.exists():
        pytest.skip("rabbitmq-server is not installed: `make test-brokers` (as root) installs it and runs this")
    if kind == "ejabberd" and (not EJABBERDCTL.exists() or os.geteuid() != 0):
        pytest.skip("ejabberd needs installing and root: `make test-brokers` (as root) installs it and runs this")
    cluster_file = tmp_path / "brokers.yaml"
    devices = "".join(f"  - {{id: {n}, profile: local-core}}\n" for n in NODES)
    cluster_file.write_text(f"schema: edgeflow.cluster/1\nname: {CLUSTER}\ndevices:\n{devices}")
    with BROKERS[kind](tmp_path) as broker:
        login = broker.login_flags()  # a password, where the broker wants one
        daemons = [DaemonProcess(node, broker.url, CLUSTER, tmp_path, *login) for node in NODES]
        try:
            # Every command with its default MQTT version too: each falls back by itself.
            where = ["--cluster", str(cluster_file), "--broker", broker.url, *login]
            code, out = run_cli(
                capsys, "deploy", "--model", "small_dag", *where, "--method", "equal", "--timeout", "120"
            )
            assert code == 0, out + "".join(d.log()[-3000:] for d in daemons)
            asks = ["--cluster", CLUSTER, "--broker", broker.url, *login, "--repeat", "4", "--check"]
            code, out = run_cli(capsys, "infer", "--model", "small_dag", *asks)
            assert code == 0 and "4/4 requests succeeded" in out and ": ok" in out, out
            code, out = run_cli(capsys, "status", *where)  # the nodes' retained statuses, read by exact topic
            assert code == 0
            states = {m[1]: m[2] for m in re.finditer(r"^(\S+) +(\S+) ", out, re.M) if m[1] in NODES}
            assert states == dict.fromkeys(NODES, "online"), out
        finally:
            for daemon in daemons:
                daemon.terminate()
    for daemon in daemons:  # one warning each where the broker refuses MQTT 5, not one per reconnect
        said = daemon.log().count("speaking MQTT 3.1.1 to it")
        assert said == (1 if broker.mqtt_version == "3.1.1" else 0), daemon.log()[-3000:]
