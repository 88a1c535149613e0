"""The daemon's edges that need no broker: configuration, systemd notify, broker URLs, the unit file."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgeflowd.cli import main as edgeflowd_main
from edgeflowd.config import load_config
from edgeflowd.errors import ProfileError
from edgeflowd.mqtt import BrokerURL, MqttError
from edgeflowd.notify import Notifier

REPO = Path(__file__).resolve().parent.parent


def test_config_file_then_flags(tmp_path: Path) -> None:
    (tmp_path / "dev.yaml").write_text((REPO / "profiles/devices/rpi4.yaml").read_text())
    path = tmp_path / "edgeflowd.yaml"
    path.write_text("node_id: pi4-a\nbroker: mqtt://10.0.0.2\nmqtt_version: 5\nrequest_ttl_s: 12\nprofile: dev.yaml\n")
    config = load_config(path, {"broker": "mqtt://127.0.0.1:1884", "workers": None})
    assert (config.node_id, config.broker, config.mqtt_version, config.request_ttl_s) == (
        "pi4-a", "mqtt://127.0.0.1:1884", "5", 12.0,
    )  # fmt: skip
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
    assert got == ["STATUS=connecting", "READY=1\nSTATUS=serving", "STATUS=serving again", "WATCHDOG=1",
                   "STOPPING=1\nSTATUS=stopping"]  # fmt: skip


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
