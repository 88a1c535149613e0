"""The daemon's edges that need no broker: configuration, systemd notify, broker URLs, the unit file."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from controller.control.acl import mosquitto_acl
from edgeflowd.errors import MqttError, ProfileError
from edgeflowd.net.settings import BrokerURL
from edgeflowd.node.cli import main as edgeflowd_main
from edgeflowd.node.config import SETTINGS, DaemonConfig, load_config, read_config
from edgeflowd.node.daemon import Daemon
from edgeflowd.node.notify import Notifier
from edgeflowd.profiles.devices import load_cluster
from edgeflowd.wire.topics import Topics

REPO = Path(__file__).resolve().parent.parent


def test_config_file_then_flags(tmp_path: Path) -> None:
    (tmp_path / "dev.yaml").write_text((REPO / "profiles/devices/rpi4.yaml").read_text())
    path = tmp_path / "edgeflowd.yaml"
    path.write_text("node_id: pi4-a\nbroker: mqtt://10.0.0.2\nmqtt_version: 5\nrequest_ttl_s: 12\nprofile: dev.yaml\n")
    config = load_config(path, {"broker": "mqtt://127.0.0.1:1884", "workers": None})
    assert (config.node_id, config.broker, config.mqtt_version, config.request_ttl_s) == (
        "pi4-a",
        "mqtt://127.0.0.1:1884",
        "5",
        12.0,
    )
    assert config.profile == str(tmp_path / "dev.yaml")  # relative to the configuration file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node_id: a\nworkers: many\n", "edgeflowd.yaml:2: workers: expected int, got 'many'"),
        ("node_id: a\nbrokr: x\n", "edgeflowd.yaml:2: brokr: unknown field"),
        ("node_id: a\nrequest_ttl_s: -1\n", "edgeflowd.yaml:2: request_ttl_s: expected a positive number"),
        ("node_id: a\n  broker: [\n", "edgeflowd.yaml:2: not valid YAML"),
        ("node_id: a/b\n", "node_id must be set and contain no"),
        ("- a\n", "edgeflowd.yaml:1: \\(top\\): the configuration is a mapping"),
    ],
)
def test_config_errors_name_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "edgeflowd.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_config(path, {})


def test_edgeflowd_reports_a_bad_configuration_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edgeflowd.yaml"
    path.write_text("node_id: a\nthreads: 0\n")
    assert edgeflowd_main(["--config", str(path)]) == 2
    assert "threads must be at least 1" in capsys.readouterr().err
    assert edgeflowd_main(["--node-id", "a", "--profile", "no-such-board"]) == 2
    assert "no-such-board" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("mqtt://broker.lan:1884", "broker.lan", 1884),
        ("mqtt://10.0.0.2", "10.0.0.2", 1883),
        ("localhost:9", "localhost", 9),
    ],
)
def test_broker_urls(url: str, host: str, port: int) -> None:
    assert BrokerURL.parse(url) == BrokerURL(host, port)


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://x:port"])
def test_bad_broker_urls(url: str) -> None:
    with pytest.raises(MqttError, match="broker URL"):
        BrokerURL.parse(url)


def test_notifier_speaks_the_datagram_protocol_without_systemd_python() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as short, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(f"{short}/n")
        sock.settimeout(5)
        env = {"NOTIFY_SOCKET": f"{short}/n", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        notifier = Notifier(env, use_library=False)
        assert notifier.watchdog_s == 2.0
        notifier.status("connecting")
        notifier.ready("serving")
        notifier.ready("serving again")  # READY=1 is sent once
        notifier.watchdog()
        notifier.stopping()
        got = [sock.recv(256).decode() for _ in range(5)]
    assert got == [
        "STATUS=connecting",
        "READY=1\nSTATUS=serving",
        "STATUS=serving again",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_notifier_is_silent_in_the_foreground_and_ignores_another_process_watchdog() -> None:
    assert not Notifier({}).enabled
    Notifier({}).ready("x")  # no socket: nothing happens, nothing fails
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    text = (REPO / "edgeflow.service").read_text()
    assert re.search(r"^Type=notify$", text, re.M) and not re.search(r"^MemoryDenyWriteExecute", text, re.M)
    exec_start = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert exec_start is not None and exec_start.group(1) == "/opt/edgeflow/bin/edgeflowd"  # where the deb puts it
    # The analyser checks that ExecStart exists: point it at this checkout's daemon instead.
    daemon = Path(sys.executable).parent / "edgeflowd"
    unit = tmp_path / "edgeflowd.service"
    unit.write_text(text.replace(exec_start.group(1), str(daemon)))
    result = _verify(unit)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    unit.write_text(text.replace(exec_start.group(1), str(daemon)).replace("NoNewPrivileges", "NoNewPrivilege"))
    assert "Unknown key" in _verify(unit).stderr  # the check can fail: warnings count


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = tmp_path / "edgeflowd.yaml"
    path.write_text("node_id: from-file\nworkers: 2\ncluster: lab\n")
    env = {
        "EDGEFLOWD_NODE_ID": "from-env",
        "EDGEFLOWD_WORKERS": "3",
        "EDGEFLOWD_ARGS": "--log-level debug",
        "EDGEFLOWD_CLUSTER": "",
    }
    report = read_config(path, {"workers": 4}, env)
    assert report.errors == []
    assert (report.config.node_id, report.config.workers, report.config.cluster) == ("from-env", 4, "lab")
    assert report.sources == {
        "node_id": "environment EDGEFLOWD_NODE_ID",
        "workers": "--workers",
        "cluster": f"{path}:3",
    }


def test_every_error_is_reported_at_once_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "edgeflowd.yaml"
    path.write_text("node_id: a\nworkers: many\nbroker: mqtt://b\nca_file: ca.pem\npassword_file: pw\n")
    report = read_config(path, {}, {"EDGEFLOWD_THREADS": "two", "EDGEFLOWD_THREADZ": "1"})
    assert report.errors == [
        f"{path}:2: workers: expected int, got 'many'",
        "environment EDGEFLOWD_THREADS: expected int, got 'two'",
        "environment EDGEFLOWD_THREADZ: unknown setting (expected EDGEFLOWD_ + one of NODE_ID, BROKER, "
        + report.errors[2].split("BROKER, ")[1],
        f"{path}:4: ca_file needs TLS: the broker URL mqtt://b is not mqtts://",
        f"{path}:5: password_file needs a username",
    ]


def test_check_config_prints_sources_and_checks_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o644)
    path = tmp_path / "edgeflowd.yaml"
    path.write_text(
        f"node_id: n1\nbroker: mqtts://broker.lan\nca_file: {tmp_path}/missing.pem\nusername: n1\n"
        "password_file: pw\nprofile: rpi4\n"
    )
    assert edgeflowd_main(["--check-config", "--config", str(path), "--cache-dir", str(tmp_path / "cache")]) == 2
    out = capsys.readouterr().out
    assert re.search(rf"^username: +n1 +# {re.escape(str(path))}:4$", out, re.M)
    assert re.search(r"^cache_dir: +\S+/cache +# --cache-dir$", out, re.M)
    assert f"error: ca_file {tmp_path}/missing.pem: cannot read: No such file or directory" in out
    assert "ok: profile: rpi4" in out and "# 1 error" in out
    path.write_text(path.read_text().replace(f"ca_file: {tmp_path}/missing.pem\n", ""))
    assert edgeflowd_main(["--check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: password_file {tmp_path}/pw is readable by every user" in out  # relative to the file
    assert "ok: broker: mqtts://broker.lan as n1" in out and "# 0 errors: ready to start" in out


def test_the_shipped_configuration_documents_only_real_settings(tmp_path: Path) -> None:
    text = (REPO / "packaging/edgeflowd.yaml").read_text()
    examples = re.findall(r"^#(\w+): (\S+)", text, re.M)
    assert {k for k, _ in examples} | set(re.findall(r"^(\w+):", text, re.M)) == set(SETTINGS)
    uncommented = tmp_path / "edgeflowd.yaml"
    uncommented.write_text(re.sub(r"^#(\w+: )", r"\1", text, flags=re.M))
    report = read_config(uncommented, {}, {})
    assert [e for e in report.errors if "cannot read" not in e and "unknown" in e] == []
    assert read_config(REPO / "packaging/edgeflowd.yaml", {}, {}).errors == [
        "default: node_id must be set and contain no '/', '#', '+' (got '')"
    ]


def test_the_example_acl_is_the_generated_one() -> None:
    cluster = load_cluster("paper-4")
    assert (REPO / "packaging/mosquitto/edgeflow.acl").read_text() == mosquitto_acl(
        cluster.name, [d.id for d in cluster.devices]
    )
    acl = mosquitto_acl("lab", ["n1", "n2"])
    n1 = acl.split("user n1\n")[1].split("\n\n")[0].splitlines()
    assert "topic write edgeflow/v2/lab/node/n1/status" in n1 and "topic read edgeflow/v2/lab/node/n1/assignment" in n1
    assert "topic write edgeflow/v2/lab/node/n1/assignment" not in n1 and not [line for line in n1 if "n2" in line]


def test_every_setting_is_a_key_a_variable_and_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        edgeflowd_main(["--help"])
    help_text = capsys.readouterr().out
    for s in SETTINGS.values():
        assert s.flag in help_text
        value = s.choices[-1] if s.choices else ("true" if bool in s.kinds else "7" if int in s.kinds else "x")
        report = read_config(None, {}, {s.variable: value})
        assert report.source(s.name) == f"environment {s.variable}"
        assert str(getattr(report.config, s.name)) in (value, "7.0", "True")


def test_a_setting_that_is_not_a_finite_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edgeflowd.yaml"
    path.write_text("node_id: a\nbuffer_mb: .nan\n")
    report = read_config(path, {}, {"EDGEFLOWD_TELEMETRY_INTERVAL_S": "inf"})
    assert f"{path}:2: buffer_mb: expected a positive number, got nan" in report.errors
    assert "environment EDGEFLOWD_TELEMETRY_INTERVAL_S: expected a finite number, got 'inf'" in report.errors


def test_the_inbound_queue_holds_at_most_buffer_mb_of_data_payloads() -> None:
    """Payloads wait for the engine in a queue that paho's thread fills: bounded in bytes too, so
    a flood of large data messages cannot take the node's memory (weights are not counted: a new
    assignment's parts arrive in one retained burst, on topics only the controller writes)."""
    daemon = Daemon(replace(DaemonConfig(), node_id="n", buffer_mb=4.0))  # built, never connected
    topics = Topics("default")
    data = topics.unit_input("g1", "conv@d0")
    for _ in range(10):
        daemon._on_wire(data, bytes(1 << 20))
    assert daemon.events.waiting() == 4 and daemon.counts.snapshot().get("dropped") == 6
    for part in range(8):
        daemon._on_wire(topics.blob("a" * 64, part), bytes(1 << 20))
    assert daemon.events.waiting() == 12


def test_a_file_that_cannot_be_read_says_so_beside_what_it_leaves_unset(tmp_path: Path) -> None:
    path = tmp_path / "edgeflowd.yaml"
    path.write_text("node_id: a\ncluster: lab\ncluster: lab2\n")  # a repeated key: the file is not read
    assert read_config(path, {}, {}).errors == [
        f"{path}:3: cluster: repeated key (first at line 2)",
        f"default: node_id must be set and contain no '/', '#', '+' (got '') ({path} could not be read: see above)",
    ]
