"""Integration-test harness: the local-cluster launchers plus a watcher that records the broker's
control topics. Every wait has a deadline."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable

import pytest
import torch

from controller.cli.main import main
from controller.control.requester import InferenceClient
from controller.control.verify import TOLERANCE, reference_outputs, relative_error
from controller.lab.launch import Broker, DaemonProcess, free_port, mosquitto_broker
from controller.zoo import build_model
from edgeflowd.net.mqtt import Connection
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.wire.messages import Status, decode_control

__all__ = [
    "Broker",
    "DaemonProcess",
    "Watcher",
    "count_exact",
    "free_port",
    "mosquitto_broker",
    "node_status",
    "run_cli",
]


class Watcher:
    """Subscribes to a cluster's control topics and keeps the last payload of each topic."""

    def __init__(self, broker: BrokerSettings, cluster: str, keep: bool = False) -> None:
        """``keep``: also keep every message in :attr:`seen`, in order (events are not retained)."""
        self.root = f"edgeflow/v2/{cluster}"
        self.keep = keep
        self.seen: list[tuple[str, bytes, float]] = []
        self.messages: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
        self.last: dict[str, bytes] = {}
        self.arrived: dict[str, float] = {}  # time.monotonic() when each topic's last payload arrived
        self.conn = Connection(
            broker,
            f"watcher-{os.getpid()}-{time.monotonic_ns()}",
            lambda t, p: self.messages.put((t, p, time.monotonic())),
        )
        self.conn.subscribe(f"{self.root}/node/#", qos=1)
        self.conn.subscribe(f"{self.root}/controller/#", qos=1)
        self.conn.start()

    def _drain(self, timeout_s: float) -> None:
        try:
            self._keep(*self.messages.get(timeout=timeout_s))
            while True:
                self._keep(*self.messages.get_nowait())
        except queue.Empty:
            pass

    def _keep(self, topic: str, payload: bytes, at: float) -> None:
        self.last[topic], self.arrived[topic] = payload, at
        if self.keep:
            self.seen.append((topic, payload, at))

    def wait_for(self, what: str, check: Callable[[dict[str, bytes]], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check(self.last):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; last: {sorted(self.last)}")
            self._drain(min(left, 0.2))

    def payload(self, node: str, leaf: str) -> bytes:
        self._drain(0.0)
        return self.last.get(f"{self.root}/node/{node}/{leaf}", b"")

    def close(self) -> None:
        self.conn.stop()


def node_status(last: dict[str, bytes], root: str, node: str) -> Status | None:
    payload = last.get(f"{root}/node/{node}/status")
    return decode_control(payload, "status", Status) if payload else None


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    print(out, err)  # shown when the test fails, and in -s runs (the note's figures)
    return code, out + err


def count_exact(
    url: str, cluster: str, spec: str, n: int, built: tuple[torch.nn.Module, tuple[int, ...]] | None = None
) -> int:
    """``n`` requests (two in flight) to the plan of ``spec`` deployed under ``cluster``: how many
    results equal the local model's. ``built``: the model as :func:`build_model` made it (build
    it beforehand where threads run this: the zoo's seeding is global)."""
    model, shape = built or build_model(spec, None, 0)
    client = InferenceClient.connect(BrokerSettings(url), cluster, spec)
    try:
        inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(n)]
        results = client.run(iter(inputs), 2, 30.0)
    finally:
        client.close()
    return sum(
        1
        for r, x in zip(results, inputs, strict=True)
        if r.outputs is not None and relative_error(r.outputs, reference_outputs(model, x))[1] <= TOLERANCE
    )
