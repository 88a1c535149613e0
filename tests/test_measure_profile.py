"""``edgeflowd --measure-profile``: the profile it prints loads as a device profile, with the
board's measured compute and, when a broker answers (a real Mosquitto on a free loopback port),
its measured link; without one it says the link was not measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.lab.launch import REPO, free_port, mosquitto_broker
from edgeflowd.profiles.devices import load_device_profile

pytestmark = pytest.mark.integration


def _measure(tmp_path: Path, broker: str) -> tuple[str, Path]:
    out = subprocess.run(
        [sys.executable, "-m", "edgeflowd.node.cli", "--measure-profile", "board-x", "--broker", broker],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    path = tmp_path / "board-x.yaml"
    path.write_text(out)
    return out, path


def test_a_measured_profile_loads_with_its_link(tmp_path: Path) -> None:
    with mosquitto_broker(tmp_path) as broker:
        text, path = _measure(tmp_path, broker.url)
    profile = load_device_profile(path)
    print(text)
    assert profile.name == "board-x"
    assert profile.gflops > 0.5 and profile.weights_gbps > 0 and 0 < profile.op_overhead_ms < 5
    assert "link: through the broker at" in text
    assert profile.link.up_mbps > 50 and profile.link.down_mbps > 50  # loopback
    assert 0 < profile.link.latency_ms < 50


def test_without_a_broker_the_link_is_said_to_be_unmeasured(tmp_path: Path) -> None:
    text, path = _measure(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    assert "link: NOT measured (no broker answered" in text
    assert load_device_profile(path).gflops > 0.5
