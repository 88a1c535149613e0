"""The daemon against brokers that limit packets, restart, or are not there at all (a real
Mosquitto on a free loopback port, real ``edgeflowd`` processes)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from controller.control.deploy import held_state
from controller.control.deployment import make_deployment
from controller.graph.trace import trace_model
from controller.planner.methods import plan_model
from controller.zoo import build_model
from edgeflowd.net.mqtt import Connection, listen, received
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.profiles.devices import load_cluster
from edgeflowd.wire.messages import AssignmentReport, Info, decode_control, encode_control
from edgeflowd.wire.topics import Topics
from tests.cluster import DaemonProcess, Watcher, free_port, mosquitto_broker, node_status, run_cli

pytestmark = pytest.mark.integration


def test_a_broker_that_is_not_there_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "infer", "--model", "small_dag", "--broker", "mqtt://127.0.0.1:1")
    assert code == 2
    assert "cannot connect to mqtt://127.0.0.1:1" in out


def test_a_message_published_while_the_broker_is_away_is_delivered_when_it_comes_back(tmp_path: Path) -> None:
    """A deploy must not fail on a dropped connection: paho keeps a QoS 1 message published
    while disconnected and sends it after the reconnect, and publish_wait waits for that."""
    port = free_port()
    conn = Connection(BrokerSettings(url=f"mqtt://127.0.0.1:{port}"), "publisher", lambda t, p: None)
    conn.begin()  # nothing listens yet: the network thread keeps retrying
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            conn.publish_wait("t/kept", b"payload", timeout_s=30.0, retain=True)
        except Exception as exc:  # the test reports it below
            failures.append(exc)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        with mosquitto_broker(tmp_path, port=port) as broker:
            publisher.join(40.0)
            assert not publisher.is_alive() and failures == []
            reader, messages = listen(broker.settings, "reader", ["t/kept"])
            try:
                assert ("t/kept", b"payload") in list(received(messages, 5.0))
            finally:
                reader.stop()
    finally:
        conn.stop()
        publisher.join(5.0)


def _benchmarks(broker: BrokerSettings, cluster: str, count: int, wait_s: float) -> dict[str, dict[str, Any]]:
    """The benchmarks in the retained info of ``count`` nodes of ``cluster``."""
    conn, messages = listen(broker, "test", [Topics(cluster).node_filter("info")])
    found: dict[str, dict[str, Any]] = {}
    try:
        for topic, payload in received(messages, wait_s):
            info = decode_control(payload, topic, Info)
            found[info.node] = info.benchmark
            if len(found) == count and all("conv_gflops" in b for b in found.values()):
                break
    finally:
        conn.stop()
    assert len(found) == count, found
    return found


def test_deploy_plans_on_what_the_nodes_measured_and_names_one_that_is_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = tmp_path / "pair.yaml"
    devices = "".join(f"  - {{id: {n}, profile: local-core}}\n" for n in ("p1", "p2"))
    cluster_file.write_text(f"schema: edgeflow.cluster/1\nname: pair\ndevices:\n{devices}")
    deploy = ["deploy", "--model", "small_dag", "--cluster", str(cluster_file)]
    with mosquitto_broker(tmp_path) as broker:
        daemons = [DaemonProcess("p1", broker.url, "pair", tmp_path)]
        try:
            code, out = run_cli(capsys, *deploy, "--broker", broker.url, "--timeout", "15")
            assert code != 0 and "no measurements from p2 within 15 s" in out and "--rates declared" in out
            daemons.append(DaemonProcess("p2", broker.url, "pair", tmp_path))
            before = _benchmarks(broker.settings, "pair", 2, 60.0)
            code, out = run_cli(capsys, *deploy, "--broker", broker.url, "--timeout", "60")
            assert code == 0, out
            after = _benchmarks(broker.settings, "pair", 2, 5.0)
            for node in ("p1", "p2"):  # planned on each node's own figure (an idle re-measure may move it)
                figures = {f"{node} {rates[node]['conv_gflops']:.1f} GFLOP/s" for rates in (before, after)}
                assert any(f in out for f in figures), (figures, out)
        finally:
            for daemon in daemons:
                daemon.terminate()


def test_frames_and_weights_are_cut_to_the_packet_limit_the_broker_announces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    limit = 40000  # small_dag's input slices and several weights are larger
    cluster_file = tmp_path / "tiny.yaml"
    cluster_file.write_text("schema: edgeflow.cluster/1\nname: tiny\ndevices:\n  - {id: t1, profile: local-core}\n")
    with mosquitto_broker(tmp_path, extra=f"max_packet_size {limit}\n") as broker:
        conn = Connection(broker.settings, "probe", lambda t, p: None)
        conn.start()
        try:
            assert conn.max_packet == limit  # from CONNACK (MQTT 5)
        finally:
            conn.stop()
        daemon = DaemonProcess("t1", broker.url, "tiny", tmp_path)
        try:
            code, out = run_cli(
                capsys, "deploy", "--model", "small_dag", "--cluster", str(cluster_file), "--broker", broker.url
            )
            assert code == 0, out
            code, out = run_cli(
                capsys,
                "infer",
                "--model",
                "small_dag",
                "--cluster",
                "tiny",
                "--broker",
                broker.url,
                "--repeat",
                "3",
                "--check",
                "--traffic",
            )
            assert code == 0, out
        finally:
            daemon.terminate()
        assert "oversize" not in daemon.log().lower()


@pytest.mark.reliability
def test_daemon_reconnects_after_the_broker_restarts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broker restart (retained messages kept on disk, as a packaged Mosquitto does): the daemon
    reconnects, re-subscribes, re-announces itself and serves the same generation."""
    cluster_file = tmp_path / "bounce.yaml"
    cluster_file.write_text("schema: edgeflow.cluster/1\nname: bounce\ndevices:\n  - {id: b1, profile: local-core}\n")
    store = Path(tempfile.mkdtemp(prefix="edgeflow-broker-"))
    store.chmod(0o777)  # Mosquitto started as root writes its database as user mosquitto
    daemon = None
    try:
        with mosquitto_broker(tmp_path, store=store) as broker:
            port, url = broker.port, broker.url
            daemon = DaemonProcess("b1", url, "bounce", tmp_path)
            code, out = run_cli(
                capsys, "deploy", "--model", "small_dag", "--cluster", str(cluster_file), "--broker", url
            )
            assert code == 0, out
        with mosquitto_broker(tmp_path, port=port, store=store):  # retained messages restored
            watcher = Watcher(BrokerSettings(url), "bounce")
            try:
                watcher.wait_for(
                    "b1 to reconnect (session 2)",
                    lambda last: (s := node_status(last, watcher.root, "b1")) is not None and s.session >= 2,
                )
            finally:
                watcher.close()
            code, out = run_cli(
                capsys,
                "infer",
                "--model",
                "small_dag",
                "--cluster",
                "bounce",
                "--broker",
                url,
                "--repeat",
                "3",
                "--check",
            )
            assert code == 0, out
    finally:
        if daemon is not None:
            daemon.terminate()
        shutil.rmtree(store, ignore_errors=True)


@pytest.mark.reliability
def test_a_deploy_never_reuses_a_generation_a_stopped_rollout_left(tmp_path: Path) -> None:
    """A controller stopped in the middle of a rollout leaves retained assignments of a
    generation that no plan summary names; the next deploy must go above it, or the nodes would
    keep the first one's units under the second one's name."""
    model, shape = build_model("small_dag", None, 0)
    graph = trace_model(model, torch.zeros(shape), "small_dag")
    planned = plan_model(graph, load_cluster("local-3"), "equal")
    nodes = ["node-a", "node-b", "node-c"]
    topics = Topics("stale")
    with mosquitto_broker(tmp_path) as broker:
        conn = Connection(broker.settings, "stale-writer", lambda t, p: None)
        conn.start()
        try:
            live = make_deployment(planned.plan, graph, nodes, 3, "equal", 1 << 20)
            conn.publish_wait(topics.controller("plan", "small_dag"), encode_control(live.info), retain=True)
            report = AssignmentReport(5, "ready", units=[], instance="x")
            conn.publish_wait(topics.node("node-b", "assignment/reported"), encode_control(report), retain=True)
            stopped = make_deployment(planned.plan, graph, nodes, 7, "equal", 1 << 20)  # never completed
            conn.publish_wait(
                topics.node("node-c", "assignment"), stopped.assignments["node-c"].work().to_bytes(), retain=True
            )
        finally:
            conn.stop()
        feeds = [topics.controller("plan", "small_dag"), topics.reports, topics.node_filter("assignment")]
        reader, messages = listen(broker.settings, "stale-reader", feeds)
        try:
            held = held_state(topics, ["small_dag"], messages, wait_s=1.5)
        finally:
            reader.stop()
    assert held.plans["small_dag"].generation == 3
    assert held.newest == 7 and set(held.works) == {"node-c"}  # its work is carried on by the next deploy


def test_a_deploy_publishes_only_the_blobs_the_broker_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weights are content-addressed and retained: a second deploy of the same weights publishes
    none of them, other weights are published, and after a broker that lost its state every one
    is published again (the nodes can fetch them and serve exact results each time)."""
    cluster_file = tmp_path / "again.yaml"
    cluster_file.write_text("schema: edgeflow.cluster/1\nname: again\ndevices:\n  - {id: a1, profile: local-core}\n")
    deploy = ["deploy", "--model", "small_dag", "--cluster", str(cluster_file), "--timeout", "60"]
    infer = ["infer", "--model", "small_dag", "--cluster", "again", "--repeat", "2", "--check"]
    blobs = f"{Topics('again').root}/blob/#"

    def published(broker_url: str, *extra: str) -> int:
        """Blob parts published by one deploy (a subscriber first takes what is retained)."""
        conn, messages = listen(BrokerSettings(broker_url), "blob-counter", [blobs])
        try:
            list(received(messages, 2.0))  # the retained parts, delivered on subscribing
            code, out = run_cli(capsys, *deploy, "--broker", broker_url, *extra)
            assert code == 0, out
            return sum(1 for _ in received(messages, 2.0))
        finally:
            conn.stop()

    port = free_port()
    daemon = None
    try:
        with mosquitto_broker(tmp_path, port=port) as broker:
            daemon = DaemonProcess("a1", broker.url, "again", tmp_path)
            first = published(broker.url)
            assert first > 0
            assert published(broker.url) == 0  # the same weights: all retained already
            assert run_cli(capsys, *infer, "--broker", broker.url)[0] == 0
            assert published(broker.url, "--seed", "1") > 0  # other weights
            assert run_cli(capsys, *infer, "--broker", broker.url, "--seed", "1")[0] == 0
        with mosquitto_broker(tmp_path, port=port) as broker:  # no persistence: everything lost
            assert published(broker.url) == first
            assert run_cli(capsys, *infer, "--broker", broker.url)[0] == 0
    finally:
        if daemon is not None:
            daemon.terminate()


def test_connection_problems_are_logged_once_with_what_to_fix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No broker at the address, or a wrong password: one warning each that says so (paho
    retries every 1-30 s; the log must not repeat it, nor stay silent)."""
    files = Path(tempfile.mkdtemp(prefix="edgeflow-passwd-"))  # Mosquitto, run as root, reads as user mosquitto
    files.chmod(0o755)
    passwd = files / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "alice", "right"], check=True, timeout=30)
    passwd.chmod(0o644)
    (tmp_path / "wrong").write_text("wrong\n")
    caplog.set_level(logging.WARNING, logger="edgeflowd.net.mqtt")
    closed = f"mqtt://127.0.0.1:{free_port()}"
    with (
        mosquitto_broker(tmp_path, listener=f"allow_anonymous false\npassword_file {passwd}\n") as broker,
        contextlib.ExitStack() as cleanup,
    ):
        cleanup.callback(shutil.rmtree, files, ignore_errors=True)
        for version in ("5", "3.1.1"):
            for settings in (
                BrokerSettings(closed, mqtt_version=version),
                BrokerSettings(broker.url, version, username="alice", password_file=str(tmp_path / "wrong")),
            ):
                caplog.clear()
                conn = Connection(settings, f"c-{version}", lambda t, p: None)
                conn.begin()
                time.sleep(3.5)  # paho retries after 1 s and 2 s: three attempts
                conn.stop()
                said = [r.getMessage() for r in caplog.records]
                assert len(said) == 1, said
                if settings.url == closed:
                    assert f"cannot connect to {closed}" in said[0]
                else:
                    assert "refused the connection: Not authorized (check username and password_file)" in said[0]
