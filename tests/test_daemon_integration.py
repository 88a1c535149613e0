"""Real distributed inference: Mosquitto on a free loopback port, three ``edgeflowd`` processes,
``edgeflow deploy`` and ``edgeflow infer``; outputs compared with the local model."""

from __future__ import annotations

import json
import re
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflowd.core.rows import RowRange
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.wire.assignment import Assignment, BlobRef, NodeWork
from edgeflowd.wire.frames import encode_frames
from edgeflowd.wire.messages import AssignmentReport, PlanInfo, Telemetry, decode_control
from edgeflowd.wire.topics import Topics
from tests.cluster import Broker, DaemonProcess, Watcher, free_port, mosquitto_broker, node_status, run_cli

pytestmark = pytest.mark.integration

CLUSTER = "local-3"
NODES = ("node-a", "node-b", "node-c")


@dataclass
class Local:
    broker: Broker
    daemons: dict[str, DaemonProcess]
    watcher: Watcher
    tmp: Path


def _raw_frame(header: dict[str, object]) -> bytes:
    """A frame envelope around any header, for frames the encoder would never write."""
    raw = json.dumps(header).encode()
    return b"EFF1" + struct.pack(">I", len(raw)) + raw


def _report(last: dict[str, bytes], root: str, node: str) -> AssignmentReport | None:
    payload = last.get(f"{root}/node/{node}/assignment/reported")
    return decode_control(payload, "report", AssignmentReport) if payload else None


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    tmp = tmp_path_factory.mktemp("local3")
    with mosquitto_broker(tmp) as broker:
        daemons = {n: DaemonProcess(n, broker.url, CLUSTER, tmp, "--profile", "local-core") for n in NODES}
        watcher = Watcher(broker.settings, CLUSTER)
        try:
            root = watcher.root
            watcher.wait_for(
                "three nodes online",
                lambda last: all((s := node_status(last, root, n)) is not None and s.state == "online" for n in NODES),
            )
            yield Local(broker, daemons, watcher, tmp)
        finally:
            watcher.close()
            for daemon in daemons.values():
                daemon.terminate()


def _deploy(local: Local, capsys: pytest.CaptureFixture[str], model: str, method: str = "equal") -> PlanInfo:
    code, out = run_cli(
        capsys,
        "deploy",
        "--model",
        model,
        "--cluster",
        CLUSTER,
        "--broker",
        local.broker.url,
        "--method",
        method,
        "--timeout",
        "120",
    )
    assert code == 0, out
    found = re.search(r"generation (\d+) \(plan (\w+)\) ready on 3 nodes", out)
    assert found, out
    topic = f"{local.watcher.root}/controller/plan/{model}"

    def current(last: dict[str, bytes]) -> bool:
        return topic in last and decode_control(last[topic], topic, PlanInfo).generation == int(found.group(1))

    local.watcher.wait_for("the new plan summary", current)
    info = decode_control(local.watcher.last[topic], topic, PlanInfo)
    assert info.model == model and info.plan == found.group(2)
    return info


def _infer(local: Local, capsys: pytest.CaptureFixture[str], model: str, *extra: str) -> tuple[int, str]:
    return run_cli(capsys, "infer", "--model", model, "--cluster", CLUSTER, "--broker", local.broker.url, *extra)


@pytest.mark.parametrize("model", ["yolov5s", "resnet50"])
def test_distributed_outputs_equal_the_local_model(
    local: Local, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    info = _deploy(local, capsys, model)
    root = local.watcher.root
    for node in NODES:  # every daemon takes part
        report = _report(local.watcher.last, root, node)
        assert report is not None and report.generation == info.generation and report.state == "ready"
        assert report.units, f"{node} got no units"
    code, out = _infer(local, capsys, model, "--repeat", "20", "--concurrency", "4", "--check", "--traffic")
    assert code == 0, out
    assert "20/20 requests succeeded, 4 in flight" in out
    assert "against the local model" in out and ": ok" in out


@pytest.mark.parametrize("model", ["unet", "fpn", "shufflenet_v2", "convnext", "resnet18_d"])
def test_vision_models_of_every_row_rule_deploy_and_answer_exactly(
    local: Local, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    """Transposed convolutions, resampling to odd sizes, channel shuffle, per-pixel NHWC ops,
    partial pooling windows: split over three daemons, each a real process."""
    _deploy(local, capsys, model)
    code, out = _infer(local, capsys, model, "--repeat", "3", "--check")
    assert code == 0, out
    assert "3/3 requests succeeded" in out and "against the local model" in out and ": ok" in out


def _node_assignment(local: Local, node: str) -> Assignment:
    payload = local.watcher.payload(node, "assignment")
    (assignment,) = NodeWork.from_bytes(payload, "assignment").plans.values()
    return assignment


def _telemetry(local: Local, node: str) -> Telemetry:
    return decode_control(local.watcher.payload(node, "telemetry"), "telemetry", Telemetry)


@pytest.mark.reliability
def test_malformed_input_on_every_topic_leaves_the_daemon_serving(
    local: Local, capsys: pytest.CaptureFixture[str]
) -> None:
    info = _deploy(local, capsys, "small_dag")
    topics = Topics(CLUSTER)
    local.watcher.conn.subscribe(f"{local.watcher.root}/node/+/telemetry")
    local.watcher.wait_for("node-a's assignment", lambda last: bool(local.watcher.payload("node-a", "assignment")))
    assignment = _node_assignment(local, "node-a")
    unit = next(u for u in assignment.units if u.inputs and len(u.inputs[0].shape) == 4 and not u.inputs[0].rows.empty)
    need = unit.inputs[0]
    good = torch.zeros(need.slice_shape())
    wrong_shape = torch.zeros((*need.slice_shape()[:-1], need.slice_shape()[-1] + 1))
    topic = topics.unit_input(info.plan, unit.uid)
    key = assignment.keys.plan or b""  # what a node holds: frames that pass the tag, to test the rest

    def frames(tensor: torch.Tensor, rows: RowRange = need.rows, packet: int = 1 << 20) -> list[bytes]:
        return encode_frames("bad-1", info.plan, "x@d9", need.producer, rows, tensor, packet, key)

    before = _telemetry(local, "node-a").malformed if local.watcher.payload("node-a", "telemetry") else 0
    bad = [
        (topic, b"\x00 garbage bytes"),  # not a frame
        (topic, _raw_frame({"schema": "edgeflow.frame/9"})),  # wrong schema
        (topic, _raw_frame({"schema": "edgeflow.frame/1", "request": 7})),  # wrong field types
        (topic, frames(wrong_shape)[0]),  # wrong shape
        (topic, frames(good)[0][:-5]),  # truncated chunk
        (topic, frames(good, RowRange(need.rows.start, need.rows.stop + 50))[0]),  # rows it does not read
        (topics.unit_input(info.plan, "conv_nowhere@d0"), frames(good)[0]),  # unknown unit (not subscribed)
        (topic, encode_frames("bad-2", "g0", "x@d9", need.producer, need.rows, good, 1 << 20, key)[0]),  # another plan
        (
            topic,
            encode_frames("bad-3", info.plan, "x@d9", need.producer, need.rows, good, 1 << 20, bytes(32))[0],
        ),  # forged
        (topics.node("node-a", "assignment"), b"{not json"),  # garbage assignment (not retained)
        (topics.node("node-a", "assignment"), json.dumps({"schema": "edgeflow.node-work/1"}).encode()),
    ]
    for t, payload in bad:
        local.watcher.conn.publish(t, payload, qos=1)
    # Half of a two-chunk slice: held until it expires, never fatal.
    local.watcher.conn.publish(topic, frames(good, packet=600 + good.numel() * 2)[0], qos=1)
    # An assignment whose only new weight arrives corrupt: refused, and the node keeps the old plan.
    fake_sha = "ab" * 32
    refs = dict(assignment.weights)
    name = next(iter(refs))
    refs[name] = BlobRef(fake_sha, refs[name].dtype, refs[name].shape, refs[name].nbytes, 1)
    corrupt = replace(assignment, generation=info.generation + 100, weights=refs)
    local.watcher.conn.publish_wait(topics.blob(fake_sha, 0), b"\x01" * refs[name].nbytes, retain=True)
    try:
        local.watcher.conn.publish(topics.node("node-a", "assignment"), corrupt.work().to_bytes(), qos=1)
        root = local.watcher.root
        local.watcher.wait_for(
            "node-a to refuse the corrupt weight",
            lambda last: (r := _report(last, root, "node-a")) is not None and r.generation == corrupt.generation,
        )
        report = _report(local.watcher.last, root, "node-a")
        assert report is not None and report.state == "error" and "do not hash" in report.error
    finally:
        local.watcher.conn.publish_wait(topics.blob(fake_sha, 0), b"", retain=True)
    refused = 10  # the frames and assignments above that reach node-a's engine and are invalid
    local.watcher.wait_for(
        "telemetry counting the refused messages",
        lambda last: (
            bool(local.watcher.payload("node-a", "telemetry"))
            and _telemetry(local, "node-a").malformed >= before + refused
        ),
        timeout_s=30,
    )
    assert all(d.alive() for d in local.daemons.values())
    assert _telemetry(local, "node-a").interval_s == 2.0  # its period, by which the controller judges silence
    code, out = _infer(local, capsys, "small_dag", "--repeat", "5", "--concurrency", "2", "--check")
    assert code == 0, out
    assert "5/5 requests succeeded" in out


@pytest.mark.reliability
def test_restart_recovers_from_the_retained_assignment(local: Local, capsys: pytest.CaptureFixture[str]) -> None:
    info = _deploy(local, capsys, "resnet18")
    root = local.watcher.root
    victim = local.daemons["node-b"]
    first = node_status(local.watcher.last, root, "node-b")
    victim.kill()
    local.watcher.wait_for(
        "the broker's last will for node-b",
        lambda last: (s := node_status(last, root, "node-b")) is not None and s.state == "offline",
        timeout_s=60,
    )
    code, out = _infer(local, capsys, "resnet18", "--repeat", "2", "--concurrency", "2", "--timeout", "3")
    assert code == 1
    assert out.count("timed out after 3 s") == 2, out
    assert re.search(r"timed out after 3 s; missing \w+ rows \[\d+,\d+\) from node-[abc] \(\w+@d\d\)", out), out
    t0 = time.monotonic()
    victim.start()
    local.watcher.wait_for(
        "node-b back with a new instance, ready on the same generation",
        lambda last: (
            (s := node_status(last, root, "node-b")) is not None
            and s.state == "online"
            and first is not None
            and s.instance != first.instance
            and (r := _report(last, root, "node-b")) is not None
            and r.instance == s.instance
            and r.generation == info.generation
            and r.state == "ready"
        ),
        timeout_s=90,
    )
    print(f"node-b ready again {time.monotonic() - t0:.1f} s after restart, without a new deploy")
    code, out = _infer(local, capsys, "resnet18", "--repeat", "5", "--concurrency", "2", "--check")
    assert code == 0, out
    assert "5/5 requests succeeded" in out


def _input_file(tmp: Path) -> Path:
    path = tmp / "input.npy"
    np.save(path, np.random.default_rng(0).standard_normal((1, 3, 128, 128), dtype=np.float32))
    return path


def _notify_messages(sock: socket.socket, until: str, timeout_s: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} within {timeout_s:g} s; got {got}")


def test_systemd_notify_protocol_over_mqtt_311(local: Local, capsys: pytest.CaptureFixture[str]) -> None:
    """READY once started, before any assignment (STATUS says it waits for one), serving once
    assigned, WATCHDOG while serving, STOPPING and an offline status on SIGTERM; this node and its
    requester speak MQTT 3.1.1."""
    cluster_file = local.tmp / "solo.yaml"
    cluster_file.write_text("schema: edgeflow.cluster/1\nname: solo\ndevices:\n  - {id: solo, profile: local-core}\n")
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # AF_UNIX paths are limited to 108 bytes
        path = f"{short}/notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "500000"}
            daemon = DaemonProcess("solo", local.broker.url, "solo", local.tmp, "--mqtt-version", "3.1.1", env=env)
            try:
                early = _notify_messages(sock, "waiting for an assignment", 60)
                assert "READY=1" in early[0] and "STATUS=connecting to" in early[0], early
                code, out = run_cli(
                    capsys,
                    "deploy",
                    "--model",
                    "small_dag",
                    "--cluster",
                    str(cluster_file),
                    "--broker",
                    local.broker.url,
                    "--mqtt-version",
                    "3.1.1",
                )
                assert code == 0, out
                serving = _notify_messages(sock, "STATUS=serving generation", 30)
                assert "small_dag plan" in serving[-1], serving
                assert not any("READY=1" in m for m in serving), serving  # sent once, at start
                assert "WATCHDOG=1" in "".join(_notify_messages(sock, "WATCHDOG=1", 5))
                saved = local.tmp / "out.npy"
                code, out = run_cli(
                    capsys,
                    "infer",
                    "--model",
                    "small_dag",
                    "--cluster",
                    "solo",
                    "--broker",
                    local.broker.url,
                    "--mqtt-version",
                    "3.1.1",
                    "--repeat",
                    "3",
                    "--check",
                    "--input",
                    str(_input_file(local.tmp)),
                    "--output",
                    str(saved),
                )
                assert code == 0, out
                assert np.load(saved).shape == (1, 16, 32, 32)
                watcher = Watcher(BrokerSettings(local.broker.url, "3.1.1"), "solo")
                try:
                    assert daemon.terminate() == 0
                    assert "STOPPING=1" in "".join(_notify_messages(sock, "STOPPING=1", 10))
                    watcher.wait_for(
                        "solo's offline status",
                        lambda last: (
                            (s := node_status(last, watcher.root, "solo")) is not None and s.state == "offline"
                        ),
                    )
                finally:
                    watcher.close()
            finally:
                if daemon.alive():
                    daemon.kill()


def test_a_daemon_without_a_broker_starts_and_says_why_it_waits(tmp_path: Path) -> None:
    """systemd must see the start complete (READY) even while no broker answers; STATUS and the
    journal say what is wrong, once, and the daemon keeps retrying."""
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # AF_UNIX paths are limited to 108 bytes
        path = f"{short}/notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            closed = f"mqtt://127.0.0.1:{free_port()}"
            daemon = DaemonProcess("lonely", closed, "none", tmp_path, env={"NOTIFY_SOCKET": path})
            try:
                said = _notify_messages(sock, "cannot connect to", 60)
                assert "READY=1" in said[0], said
                assert daemon.alive()
            finally:
                daemon.terminate()
            assert daemon.log().count(f"cannot connect to {closed}") == 1
