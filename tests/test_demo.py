"""``edgeflow demo`` end to end, on Mosquitto and on the embedded broker: the controller deploys
EdgeFlow's plan to four (emulated, as root) devices, the baselines follow, every output is exact,
and nothing it started is left behind, after a normal exit or Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from controller.cli.main import main
from controller.lab.launch import REPO
from controller.lab.testbed import leftovers, missing_rights

pytestmark = pytest.mark.integration


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_compares_methods_and_leaves_nothing_behind(
    broker: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = _children()  # other tests' processes
    drawn = ["--timelines", str(tmp_path)]
    code = main(["demo", "--model", "small_dag", "--requests", "3", "--methods", "single", "--broker", broker, *drawn])
    captured = capsys.readouterr()
    out = captured.out
    print(out)
    assert code == 0, out + captured.err
    assert "controller: plans with EdgeFlow" in out and ("MQTT 3.1.1" in out) == (broker == "embedded")
    assert ("emulated devices: dev-1x 0.1 core, 200 Mbit/s" in out) == (not missing_rights(True))
    for method in ("edgeflow", "single"):
        assert re.search(rf"^{method} +[\d.]+ +[\d.]+ +[\d.]+ +3/3 ", out, re.M), out
    assert re.search(r"^edgeflow's measured p50 is \d+% (below|above) the best other method \(single", out, re.M)
    assert "equals the local model's within 0.0001: yes" in out
    for method in ("edgeflow", "single"):  # one request of each, as measured, under its prediction
        assert f"wrote {tmp_path / method}.png: request" in out and (tmp_path / f"{method}.png").stat().st_size
    assert _children() - before == set()  # broker, daemons and controller are gone
    if not missing_rights(True):
        assert leftovers() == []  # no cgroup, namespace or veth


def test_demo_stops_everything_on_ctrl_c() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "demo", "--model", "small_dag", "--requests", "1000", "--methods"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = set()
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 420  # the demo waits up to 300 s for the nodes to measure themselves
        said: list[str] = []
        for line in demo.stdout:  # until the requests are under way
            said.append(line)
            if "warm-up requests" in line:  # the controller is learning the nodes' costs
                break
            assert time.monotonic() < deadline, "the demo did not start its requests"
        else:
            raise AssertionError("the demo ended before its requests:\n" + "".join(said[-30:]))
        started = {p.pid for p in psutil.Process(demo.pid).children(recursive=True)}
        assert len(started) >= 6  # broker, 4 daemons, controller
        time.sleep(1.0)
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        demo.kill()
    assert demo.returncode == 130, rest
    assert "interrupted; the broker and the daemons were stopped" in rest
    assert not [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert leftovers(demo.pid) == []
