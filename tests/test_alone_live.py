"""Never slower than one device, measured, against real daemons: MobileNet-V2 split over two
daemons pinned one per core runs slower than one of them alone on this machine kind (31 ms against
24 ms on 2026-12-04, bench/cores.py), while the cost model fitted to the split's units predicts one
alone no faster. The controller tries the best single device alone and keeps whichever the
requesters measured faster (controller/control/alone.py)."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
import torch

from controller.control.requester import InferenceClient
from controller.control.verify import TOLERANCE, reference_outputs, relative_error
from controller.lab.launch import controller_process
from controller.lab.learn import settled_costs
from controller.zoo import build_model
from edgeflowd.wire.messages import ControllerEvent, Costs, PlanInfo, decode_control
from tests.cluster import DaemonProcess, Watcher, mosquitto_broker

pytestmark = pytest.mark.integration

MODEL = "mobilenet_v2"
NODES = ("node-0", "node-1")
VERDICTS = ("alone-faster", "split-faster")


def _events(watcher: Watcher) -> list[ControllerEvent]:
    topic = f"{watcher.root}/controller/event"
    return [decode_control(p, topic, ControllerEvent) for t, p, _ in watcher.seen if t == topic]


def _listen(watcher: Watcher, seconds: float) -> None:
    until = time.monotonic() + seconds
    watcher.wait_for("time to pass", lambda last: time.monotonic() > until, timeout_s=seconds + 5)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin a daemon on each")
def test_a_split_slower_than_one_device_is_replaced_by_that_device_alone(tmp_path: Path) -> None:
    cluster = tmp_path / "cores-2.yaml"
    devices = "".join(f"  - {{id: {n}, profile: local-core}}\n" for n in NODES)
    cluster.write_text(f"schema: edgeflow.cluster/1\nname: cores-2\ndevices:\n{devices}")
    config = tmp_path / "fast-telemetry.yaml"
    config.write_text("telemetry_interval_s: 1\n")
    cpus = sorted(os.sched_getaffinity(0))
    model, shape = build_model(MODEL, None, 0)
    inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(6)]
    with mosquitto_broker(tmp_path) as broker, ExitStack() as stack:
        for i, node in enumerate(NODES):
            flags = ("--profile", "local-core", "--config", str(config))
            stack.callback(DaemonProcess(node, broker.url, "cores-2", tmp_path, *flags, cpus=[cpus[i]]).terminate)
        watcher = stack.enter_context(closing(Watcher(broker.settings, "cores-2", keep=True)))
        stack.enter_context(controller_process(broker, tmp_path, str(cluster), MODEL, "--method", "edgeflow"))
        plan_topic = f"{watcher.root}/controller/plan/{MODEL}"
        watcher.wait_for("a plan on both nodes", lambda last: bool(last.get(plan_topic)), timeout_s=120)
        deadline, served = time.monotonic() + 240.0, 0
        for _ in range(60):  # bounded: rounds of requests until the trial has decided
            if any(e.event in VERDICTS for e in _events(watcher)) or time.monotonic() > deadline:
                break
            client = InferenceClient.connect(broker.settings, "cores-2", MODEL)
            try:
                results = client.run(iter(inputs), 1, timeout_s=60.0)
            finally:
                client.close()
            for result, x in zip(results, inputs, strict=True):  # exact whatever the plan
                if result.outputs is None:  # a new generation drops the requests in flight, and says so
                    assert "was replaced by" in result.error, result.error
                    continue
                assert relative_error(result.outputs, reference_outputs(model, x))[1] <= TOLERANCE
                served += 1
            _listen(watcher, 1.5)  # a telemetry report of each node: their units' times
        events = _events(watcher)
        for event in events:
            print(event.event, event.node, event.detail)
        names = [e.event for e in events]
        print(f"{served} requests served exactly")
        assert "trying-alone" in names, f"the split was never tried against one device: {names}"
        decided = next((e for e in events if e.event in VERDICTS), None)
        assert decided is not None, f"the trial did not decide within 240 s: {names}"
        assert names.index("trying-alone") < names.index(decided.event)
        # The decision holds what was measured: the medians are in the event, and the plan follows it.
        watcher.wait_for(
            "the costs of the plan after the verdict",
            lambda last: (
                (c := last.get(f"{watcher.root}/controller/costs/{MODEL}")) is not None
                and decode_control(c, "costs", Costs).generation
                == decode_control(last[plan_topic], "plan", PlanInfo).generation
            ),
            timeout_s=60,
        )
        costs = decode_control(watcher.last[f"{watcher.root}/controller/costs/{MODEL}"], "costs", Costs)
        plan = decode_control(watcher.last[plan_topic], "plan", PlanInfo)
        if decided.event == "alone-faster":
            assert costs.alone == decided.node
            assert [n for n, c in costs.nodes.items() if c.share > 0] == [decided.node]
            # What a lab waits for before it plans on these costs (controller/lab/learn.py).
            assert costs.judged and not costs.replanning and settled_costs(costs, plan, plan.generation)
        else:
            assert costs.alone == ""
