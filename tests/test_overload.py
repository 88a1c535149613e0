"""Overload on a live cluster (Mosquitto, three ``edgeflowd`` processes): far more requests at once
than the nodes admit. Each request completes exactly or is refused as busy at once; none is left
to time out, and the cluster serves normally afterwards. The figures at 1,000 in flight are
``bench/overload.py``'s."""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path

import msgspec
import pytest
import torch

from controller.control.requester import InferenceClient
from controller.control.verify import TOLERANCE, reference_outputs, relative_error
from controller.zoo import build_model
from tests.cluster import DaemonProcess, Watcher, mosquitto_broker, node_status, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

CLUSTER = "local-3"
NODES = ("node-a", "node-b", "node-c")
MODEL = "resnet18"
ADMITTED = 2  # requests each node holds at once


def test_requests_beyond_what_the_nodes_admit_are_refused_at_once_and_the_rest_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with mosquitto_broker(tmp_path) as broker:
        flags = ("--profile", "local-core", "--max-requests", str(ADMITTED))
        daemons = [DaemonProcess(n, broker.url, CLUSTER, tmp_path, *flags) for n in NODES]
        try:
            with closing(Watcher(broker.settings, CLUSTER)) as watcher:
                root = watcher.root
                watcher.wait_for(
                    "three nodes online",
                    lambda last: all((s := node_status(last, root, n)) and s.state == "online" for n in NODES),
                )
            argv = ("deploy", "--model", MODEL, "--cluster", CLUSTER, "--broker", broker.url, "--method", "equal")
            code, out = run_cli(capsys, *argv, "--timeout", "120")
            assert code == 0 and re.search(r"ready on 3 nodes", out), out
            model, shape = build_model(MODEL, None, 0)
            inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(40)]
            client = InferenceClient.connect(broker.settings, CLUSTER, MODEL)
            # A requester that does not honour the plan's admits (a foreign or older one): the nodes refuse.
            greedy = InferenceClient.connect(broker.settings, CLUSTER, MODEL)
            greedy.info = msgspec.structs.replace(greedy.info, admits=0)
            try:
                assert client.info.admits == ADMITTED, client.info
                polite = client.run(iter(inputs), len(inputs), timeout_s=60.0)  # all 40 at once
                flood = greedy.run(iter(inputs), len(inputs), timeout_s=60.0)
                after = client.run(iter(inputs[:4]), 1, timeout_s=60.0)
            finally:
                client.close()
                greedy.close()
        finally:
            for daemon in daemons:
                daemon.terminate()
    # The plan's summary says what its nodes admit: the requester sends that many, refuses the rest.
    assert sum(r.ok for r in polite) == ADMITTED, [r.error for r in polite]
    assert all(r.ok or f"admits {ADMITTED} requests at once" in r.error for r in polite)
    done = [(r, x) for r, x in zip(flood, inputs, strict=True) if r.ok]
    busy = [r for r in flood if r.error.startswith("busy: ")]
    assert len(done) + len(busy) == len(flood), [r.error for r in flood if not r.ok and r not in busy]
    assert ADMITTED <= len(done) < len(flood) and busy, f"{len(done)} completed, {len(busy)} refused"
    for r, x in [*done, *((r, x) for r, x in zip(polite, inputs, strict=True) if r.ok)]:
        assert relative_error(r.outputs or [], reference_outputs(model, x))[1] <= TOLERANCE
    assert all(re.search(rf"node node-[abc] holds {ADMITTED} requests, as many as it admits", r.error) for r in busy)
    # Refused when its first rows reached a full node, not left to the 60 s timeout.
    assert max(r.latency_s for r in busy) < 30.0
    assert all(r.ok for r in after), [r.error for r in after]  # nothing of the flood is still held
    print(
        f"\n{len(flood)} at once from a requester that ignores admits: {len(done)} completed, "
        f"{len(busy)} refused as busy, slowest refusal {max(r.latency_s for r in busy):.2f} s"
    )
