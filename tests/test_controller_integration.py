"""The controller service against real daemons: it plans onto the live nodes, re-plans when one
dies mid-stream, and grows back when it returns."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from controller.client import InferenceClient
from controller.launch import REPO
from controller.verify import TOLERANCE, reference_outputs, relative_error
from controller.zoo import build_model
from edgeflowd.messages import PlanInfo, decode_control
from tests.cluster import DaemonProcess, Watcher, mosquitto_broker

pytestmark = pytest.mark.integration

NODES = ("node-a", "node-b", "node-c")
MODEL = "resnet18"


def _plan(watcher: Watcher) -> PlanInfo | None:
    payload = watcher.last.get(f"{watcher.root}/controller/plan", b"")
    return decode_control(payload, "plan", PlanInfo) if payload else None


def _plan_on(watcher: Watcher, nodes: set[str], timeout_s: float) -> PlanInfo:
    watcher.wait_for(f"a plan on {sorted(nodes)}", lambda last: (p := _plan(watcher)) is not None
                     and set(p.nodes) == nodes, timeout_s=timeout_s)  # fmt: skip
    plan = _plan(watcher)
    assert plan is not None
    return plan


def _exact(url: str, n: int) -> int:
    model, shape = build_model(MODEL, None, 0)
    client = InferenceClient.connect(url, "local-3", MODEL)
    try:
        inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(n)]
        results = client.run(iter(inputs), 2, 20.0)
    finally:
        client.close()
    good = 0
    for r, x in zip(results, inputs, strict=True):
        if r.outputs is not None and relative_error(r.outputs, reference_outputs(model, x))[1] <= TOLERANCE:
            good += 1
    return good


def test_controller_replans_around_a_dead_node_and_grows_back(tmp_path: Path) -> None:
    with mosquitto_broker(tmp_path) as broker:
        daemons = {n: DaemonProcess(n, broker.url, "local-3", tmp_path, "--profile", "local-core") for n in NODES}
        log = open(tmp_path / "controller.log", "wb")  # noqa: SIM115 - closed below
        controller = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "controller", "--broker", broker.url, "--cluster", "local-3",
             "--model", MODEL, "--method", "equal"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
        watcher = Watcher(broker.url, "local-3")
        try:
            first = _plan_on(watcher, set(NODES), 120)
            # A stream of requests; node-b dies in the middle of it.
            _, shape = build_model(MODEL, None, 0)
            inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(60)]
            client = InferenceClient.connect(broker.url, "local-3", MODEL)
            killed_at: list[float] = []

            def kill() -> None:
                killed_at.append(time.monotonic())
                daemons["node-b"].kill()

            timer = threading.Timer(3.0, kill)
            timer.start()
            try:
                results = client.run(iter(inputs), 2, 10.0)
            finally:
                timer.cancel()
                client.close()
            second = _plan_on(watcher, {"node-a", "node-c"}, 60)
            replan_s = watcher.arrived[f"{watcher.root}/controller/plan"] - killed_at[0]
            assert second.generation > first.generation
            failed = [r for r in results if not r.ok]
            assert all("timed out" in r.error or "was replaced by" in r.error for r in failed), failed
            late = results[-10:]  # well after the re-plan: served by the two-node plan
            assert all(r.ok for r in late), [r.error for r in late]
            print(f"stream: {len(results) - len(failed)}/{len(results)} requests succeeded across the fault; "
                  f"two-node plan live within {replan_s:.1f} s of the kill")  # fmt: skip
            assert _exact(broker.url, 4) == 4
            t0 = time.monotonic()
            daemons["node-b"].start()
            third = _plan_on(watcher, set(NODES), 90)
            print(f"three-node plan (generation {third.generation}) live {time.monotonic() - t0:.1f} s after restart")
            assert _exact(broker.url, 4) == 4
        finally:
            watcher.close()
            controller.terminate()
            controller.wait(15)
            log.close()
            for daemon in daemons.values():
                daemon.terminate()
        assert controller.returncode == 0, (tmp_path / "controller.log").read_text()
