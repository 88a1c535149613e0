"""``edgeflow demo``: a whole cluster on this machine. Mosquitto on a free loopback port, three
``edgeflowd`` processes (the ``local-3`` cluster), then for each partition method: plan, deploy,
send requests, and measure; a table puts measured beside predicted latency. Everything it starts
is stopped on the way out, Ctrl-C included."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from controller.client import InferenceClient
from controller.deploy import deploy_plan
from controller.graph.trace import trace_model
from controller.launch import DaemonProcess, mosquitto_broker
from controller.partitioners import plan_model
from controller.progress import progress_bar
from controller.verify import TOLERANCE, reference_outputs, relative_error
from controller.zoo import build_model
from edgeflowd.errors import EdgeFlowError
from edgeflowd.profiles import load_cluster

__all__ = ["DemoRow", "run_demo"]

CLUSTER = "local-3"


@dataclass(frozen=True)
class DemoRow:
    method: str
    predicted_ms: float
    p50_ms: float
    p90_ms: float
    succeeded: int
    requests: int
    messages: float
    mib: float
    relative_error: float


def run_demo(
    model_spec: str, methods: Sequence[str], requests: int, say: Callable[[str], None] = print
) -> list[DemoRow]:
    cluster = load_cluster(CLUSTER)
    nodes = [d.id for d in cluster.devices]
    model, shape = build_model(model_spec, None, 0)
    graph = trace_model(model, torch.zeros(shape), model_spec)
    inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(requests)]
    want = reference_outputs(model, inputs[0])
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeflow-demo-") as tmp, mosquitto_broker(Path(tmp)) as broker:
        say(f"broker {broker.url}; starting {len(nodes)} edgeflowd processes: {', '.join(nodes)}")
        daemons = [DaemonProcess(n, broker.url, CLUSTER, Path(tmp), "--profile", "local-core") for n in nodes]
        try:
            for method in methods:
                planned = plan_model(graph, cluster, method)
                t0 = time.perf_counter()
                info = deploy_plan(broker.settings, CLUSTER, planned, graph, nodes, timeout_s=120.0)
                say(f"{method}: generation {info.generation} live on {len(nodes)} nodes in "
                    f"{time.perf_counter() - t0:.1f} s; {requests} requests")  # fmt: skip
                client = InferenceClient.connect(broker.settings, CLUSTER, model_spec, tap=True)
                try:
                    m = client.measure(inputs, 1, on_result=progress_bar(requests, f"  {method:<10}"))
                finally:
                    client.close()
                if not m.succeeded:
                    raise EdgeFlowError(f"{method}: no request succeeded: {m.results[0].error}")
                first = m.results[0].outputs
                rows.append(DemoRow(
                    method, info.predicted_ms, m.p50_ms, m.p90_ms, m.succeeded, requests, m.messages, m.mib,
                    relative_error(first, want)[1] if first is not None else float("nan"),
                ))  # fmt: skip
        finally:
            say("stopping the daemons and the broker")
            for daemon in daemons:
                daemon.terminate()
    return rows


def demo_table(rows: list[DemoRow]) -> list[str]:
    lines = [
        f"{'method':<10} {'predicted ms':>12} {'measured p50':>12} {'p90':>8} {'ok':>7} "
        f"{'msgs/req':>8} {'MiB/req':>8} {'rel. error':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r.method:<10} {r.predicted_ms:>12.1f} {r.p50_ms:>12.1f} {r.p90_ms:>8.1f} "
            f"{f'{r.succeeded}/{r.requests}':>7} {r.messages:>8.1f} {r.mib:>8.2f} {r.relative_error:>10.1e}"
        )
    exact = all(r.relative_error <= TOLERANCE for r in rows)
    lines.append(f"every method's output equals the local model's within {TOLERANCE:g}: {'yes' if exact else 'NO'}")
    return lines
