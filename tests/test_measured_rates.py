"""Plans from measurements, on the testbed (root: cgroup CPU quotas, shaped network namespaces):
a node measures a link shaped to known rates and delayed by a known latency, through the broker;
and when one node's CPU quota
drops in the middle of a stream of requests, the controller's fit of that node follows and the
next plan moves rows away from it. Traffic goes only to this host's broker, on loopback or the
testbed's own links; every wait is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
import torch

from controller.control.requester import InferenceClient
from controller.lab.launch import DaemonProcess, controller_process, mosquitto_broker
from controller.lab.testbed import Slot, Testbed, missing_rights
from controller.zoo import build_model
from edgeflowd.wire.messages import Costs, Info, decode_control
from tests.cluster import Watcher

pytestmark = pytest.mark.integration
needs_rights = pytest.mark.skipif(bool(missing_rights(True)), reason="; ".join(missing_rights(True)) or "ok")

UP_MBPS, DOWN_MBPS = 20.0, 40.0  # asymmetric, as most boards' links are
LATENCY_MS = 5.0


@needs_rights
def test_a_node_measures_its_shaped_link_within_15_percent(tmp_path: Path) -> None:
    slot = Slot(0, "linked", 1.0, UP_MBPS, DOWN_MBPS, LATENCY_MS)
    with ExitStack() as stack:
        bed = stack.enter_context(Testbed([slot]))
        broker = stack.enter_context(mosquitto_broker(tmp_path))
        bed.start_relays(broker.port)  # the link's host end: a relay that adds its latency
        watcher = stack.enter_context(closing(Watcher(broker.settings, "shaped")))
        daemon = DaemonProcess(
            slot.node, broker.url_at(bed.host_ip(slot)), "shaped", tmp_path, prefix=bed.command(slot, [])
        )
        stack.callback(daemon.terminate)
        topic = f"{watcher.root}/node/{slot.node}/info"
        watcher.wait_for(
            "the node's measured link", lambda last: b"link_down_mbps" in last.get(topic, b""), timeout_s=90
        )
        bench = decode_control(watcher.last[topic], topic, Info).benchmark
    print(
        f"shaped {UP_MBPS:g} Mbit/s up, {DOWN_MBPS:g} down, {LATENCY_MS:g} ms; measured "
        f"{bench['link_up_mbps']:.1f} up, {bench['link_down_mbps']:.1f} down, {bench['link_latency_ms']:.2f} ms"
    )
    assert bench["link_up_mbps"] == pytest.approx(UP_MBPS, rel=0.15)
    assert bench["link_latency_ms"] == pytest.approx(LATENCY_MS, rel=0.3)
    assert bench["link_down_mbps"] == pytest.approx(DOWN_MBPS, rel=0.15)


CLUSTER = """\
schema: edgeflow.cluster/1
name: quota-2
devices:
  - {id: steady, profile: local-core}
  - {id: throttled, profile: local-core}
client: {up_mbps: 3000, down_mbps: 3000, latency_ms: 0.2}
"""
MODEL = "resnet18"


def _costs(watcher: Watcher) -> Costs | None:
    payload = watcher.last.get(f"{watcher.root}/controller/costs/{MODEL}", b"")
    return decode_control(payload, "costs", Costs) if payload else None


def _fitted(watcher: Watcher, check: Callable[[Costs], bool], what: str, timeout_s: float) -> Costs:
    """The first published costs, with every node that has rows fitted, for which ``check`` holds."""

    def done(last: dict[str, bytes]) -> bool:
        costs = _costs(watcher)
        return (
            costs is not None
            and all(c.source == "fitted" and c.runs >= 5 for c in costs.nodes.values() if c.share > 0)
            and check(costs)
        )

    try:
        watcher.wait_for(what, done, timeout_s=timeout_s)
    except AssertionError as exc:
        last = _costs(watcher)
        raise AssertionError(f"{exc}; {_say('the last costs', last) if last else 'no costs'}") from None
    costs = _costs(watcher)
    assert costs is not None
    return costs


def _say(when: str, costs: Costs) -> str:
    nodes = ", ".join(f"{n} {c.gflops:.1f} GFLOP/s ({c.source}) {c.share:.0%} of rows" for n, c in costs.nodes.items())
    return f"{when}: generation {costs.generation}: {nodes}"


@needs_rights
def test_a_quota_cut_mid_stream_moves_rows_away(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "quota-2.yaml").write_text(CLUSTER)
    slots = [Slot(0, "steady", 0.45), Slot(1, "throttled", 0.45)]
    stop = threading.Event()
    with ExitStack() as stack:
        bed = stack.enter_context(Testbed(slots, shape_links=False))
        broker = stack.enter_context(mosquitto_broker(tmp_path))
        for slot in slots:
            flags = ("--profile", "local-core", "--telemetry-interval-s", "1", "--measure-interval-s", "0")
            daemon = DaemonProcess(slot.node, broker.url, "quota-2", tmp_path, *flags, prefix=bed.command(slot, []))
            stack.callback(daemon.terminate)
        watcher = stack.enter_context(closing(Watcher(broker.settings, "quota-2")))
        infos = [f"{watcher.root}/node/{slot.node}/info" for slot in slots]
        watcher.wait_for("both nodes' info", lambda last: all(last.get(t) for t in infos), timeout_s=90)
        bed.throttle()
        stack.enter_context(controller_process(broker, tmp_path, str(tmp_path / "quota-2.yaml"), MODEL))
        _, shape = build_model(MODEL, None, 0)

        def inputs() -> Iterator[torch.Tensor]:
            for i in range(3000):  # bounded: the test stops it long before
                if stop.is_set():
                    return
                yield torch.randn(shape, generator=torch.Generator().manual_seed(i))

        def stream() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    client = InferenceClient.connect(broker.settings, "quota-2", MODEL)
                    break
                except Exception:  # no plan yet
                    time.sleep(0.5)
            else:
                return
            try:
                client.run(inputs(), 1, timeout_s=20.0)
            finally:
                client.close()

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        stack.callback(streamer.join, 30)
        stack.callback(stop.set)
        first = _fitted(watcher, lambda c: True, "a plan fitted on its nodes", 150)
        # Settled: the plan made once the nodes' unit times were in, a few seconds on.
        settled = _fitted(watcher, lambda c: c.generation > first.generation or c.requests >= 20, "a settled plan", 120)
        time.sleep(3)
        before = _fitted(watcher, lambda c: c.generation >= settled.generation, "the settled plan's costs", 30)
        cut = max(before.nodes, key=lambda n: before.nodes[n].share)  # the node that has the most rows
        bed.set_share(slots[[s.node for s in slots].index(cut)], 0.12)  # mid-stream: a quarter of its speed
        # The plan that moved rows away because the fit saw the cut: a re-plan on the requesters'
        # medians alone (their noise moves rows too) is not the one this test is about. The
        # controller re-plans once a node's fitted unit times are 1.5x the plan's, and a node given
        # no rows runs no units, so its fit stays where it stood at that re-plan (the quota's
        # nominal 0.27x is not reached): below 0.8x is what a fit-driven move guarantees.
        after = _fitted(
            watcher,
            lambda c: (
                c.generation > before.generation
                and c.nodes[cut].share < before.nodes[cut].share - 0.1
                and c.nodes[cut].gflops < 0.8 * before.nodes[cut].gflops
            ),
            f"a plan with fewer rows on {cut}, whose fit is slower",
            120,
        )
        with capsys.disabled():
            print()
            print(_say("before the cut", before))
            print(_say(f"after {cut}'s quota was cut to 0.12 core", after))
