"""``edgeflow demo``: a whole heterogeneous cluster on this machine.

A broker (Mosquitto, else the embedded pure-Python one), four ``edgeflowd`` processes made 1x-4x
apart with 50-200 Mbit/s links by the testbed (``testbed-4``; as root, otherwise four unthrottled
processes, and the demo says so), and the controller, which plans with EdgeFlow and deploys as
the nodes come online. Then, with the controller stopped so that it cannot re-plan them away, the
baselines are deployed in turn. Every plan gets the same requests, one at a time; a table puts
measured beside predicted latency. Everything it starts is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from controller.control.deploy import deploy_plans
from controller.control.requester import InferenceClient
from controller.control.traced import draw_request
from controller.control.verify import TOLERANCE, reference_outputs, relative_error
from controller.graph.trace import trace_model
from controller.lab.launch import Broker, DaemonProcess, controller_process, local_broker, wait_online
from controller.lab.learn import PlaneWatch, fitted_cluster, learn_costs, planned_as_learned
from controller.lab.testbed import Testbed, missing_rights, slots_for
from controller.terminal import progress_bar
from controller.zoo import build_model
from edgeflowd.errors import EdgeFlowError
from edgeflowd.profiles.devices import load_cluster

__all__ = ["DEFAULT_BASELINES", "DemoRow", "demo_table", "run_demo"]

log = logging.getLogger(__name__)

CLUSTER = "testbed-4"
CORES = 1.0  # the four devices' quotas together; the other core runs the broker and the requester
DEFAULT_BASELINES = ("single", "coedge", "ftp")
PREDICTION_TOLERANCE = 0.2


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


def _measure(
    broker: Broker,
    cluster: str,
    model_spec: str,
    method: str,
    inputs: list[torch.Tensor],
    want: list[torch.Tensor],
    timeline: Path | None,
    say: Callable[[str], None],
) -> DemoRow:
    client = InferenceClient.connect(broker.settings, cluster, model_spec, tap=True)
    try:
        m = client.measure(inputs, 1, timeout_s=120.0, on_result=progress_bar(len(inputs), f"  {method:<10}"))
        if timeline is not None:
            say(f"  {draw_request(client, m.results, timeline)}")
    finally:
        client.close()
    if not m.succeeded:
        raise EdgeFlowError(f"{method}: no request succeeded: {m.results[0].error}")
    first = m.results[0].outputs
    error = relative_error(first, want)[1] if first is not None else float("nan")
    return DemoRow(
        method, client.info.predicted_ms, m.p50_ms, m.p90_ms, m.succeeded, len(inputs), m.messages, m.mib, error
    )


def run_demo(
    model_spec: str,
    baselines: Sequence[str],
    requests: int,
    broker_kind: str = "auto",
    say: Callable[[str], None] = print,
    cluster_spec: str = CLUSTER,
    cores: float = CORES,
    timelines: Path | None = None,
) -> list[DemoRow]:
    """``timelines``: a directory to draw one request of each method in (``METHOD.png``)."""
    if timelines is not None:
        timelines.mkdir(parents=True, exist_ok=True)
    cluster = load_cluster(cluster_spec)
    nodes = [d.id for d in cluster.devices]
    model, shape = build_model(model_spec, None, 0)
    graph = trace_model(model, torch.zeros(shape), model_spec)
    inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(requests)]
    want = reference_outputs(model, inputs[0])
    slots = slots_for(cluster, cores)
    missing = missing_rights(shape_links=True)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeflow-demo-")))
        bed = None if missing else stack.enter_context(Testbed(slots))
        if bed is None:
            say(
                f"no device emulation ({'; '.join(missing)}): the daemons run unthrottled on shared cores, "
                "so measured latency will not follow the cluster file's speeds"
            )
        else:
            say(
                "emulated devices: "
                + ", ".join(f"{s.node} {s.cores:g} core, {s.up_mbps:g} Mbit/s, {s.latency_ms:g} ms" for s in slots)
            )
        broker = stack.enter_context(local_broker(tmp, broker_kind, bed.broker_hosts() if bed else []))
        if bed is not None:
            bed.start_relays(broker.port)
        say(f"broker at {broker.url} (MQTT {broker.mqtt_version}); starting {len(nodes)} edgeflowd processes")
        for slot in slots:
            daemon = DaemonProcess(
                slot.node,
                broker.url_at(bed.host_ip(slot)) if bed else broker.url,
                cluster.name,
                tmp,
                "--profile",
                "local-core",
                "--mqtt-version",
                broker.mqtt_version,
                "--telemetry-interval-s",
                "1",
                "--measure-interval-s",
                "5",
                prefix=bed.command(slot, []) if bed else (),
            )
            stack.callback(daemon.terminate)
        wait_online(broker, cluster.name, nodes, timeout_s=120.0)
        throttled = time.time()
        if bed is not None:
            bed.throttle()  # from here on each device runs at its share
        watch = PlaneWatch(broker, cluster.name, model_spec)
        stack.callback(watch.close)
        with controller_process(broker, tmp, cluster_spec, model_spec, "--method", "edgeflow", "--rates", "measured"):
            say("controller: plans with EdgeFlow on what the nodes measure, and deploys as they come online")
            t0 = time.perf_counter()
            # Each node measures itself again once idle and it sees its new quota (11-18 s on
            # 2026-12-04). It took 12-130 s while probes were timed on the wall clock, which under
            # a quota read a rate at random, and a node saw no cgroup in its namespace (the testbed
            # mounts one now). The wait stays long for slower machines.
            watch.until(lambda: watch.measured_since(nodes, throttled), 300.0, "every node measuring itself")
            say(f"every node measured itself as emulated after {time.perf_counter() - t0:.1f} s; warm-up requests")
            costs = learn_costs(watch, broker, model_spec, inputs, nodes)
            say(
                f"learned in {time.perf_counter() - t0:.1f} s: "
                + ", ".join(f"{n} {c.source} {c.gflops:.1f} GFLOP/s" for n, c in costs.nodes.items())
            )
        # Stopped, the controller cannot re-plan under a measurement. Every method, EdgeFlow's
        # included, is planned here on the cost model it learned and deployed the same way.
        learned = fitted_cluster(cluster, costs)
        rows = []
        for method in ["edgeflow", *baselines]:
            planned = planned_as_learned(graph, learned, costs, method)
            t0 = time.perf_counter()
            (info,) = deploy_plans(broker.settings, cluster.name, [(planned, graph)], nodes, timeout_s=300.0)
            say(f"{method}: generation {info.generation} live in {time.perf_counter() - t0:.1f} s; {requests} requests")
            drawn = timelines / f"{method}.png" if timelines else None
            rows.append(_measure(broker, cluster.name, model_spec, method, inputs, want, drawn, say))
        say("stopping the daemons, the broker and the emulation")
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
    ours = next((r for r in rows if r.method == "edgeflow"), None)
    others = [r for r in rows if r.method != "edgeflow"]
    if ours is not None and others:
        best = min(others, key=lambda r: r.p50_ms)
        change = 1 - ours.p50_ms / best.p50_ms
        verdict = f"{change:.0%} below" if change > 0 else f"{-change:.0%} above"
        lines.append(
            f"edgeflow's measured p50 is {verdict} the best other method ({best.method}, {best.p50_ms:.0f} ms)"
        )
    single = next((r for r in rows if r.method == "single"), None)
    if ours is not None and single is not None:
        lines.append(f"edgeflow / the best single device: {ours.p50_ms / single.p50_ms:.2f}x")
    worst = max(rows, key=lambda r: abs(r.predicted_ms / r.p50_ms - 1)) if rows else None
    if worst is not None:
        off = worst.predicted_ms / worst.p50_ms - 1
        lines.append(
            f"predictions within {PREDICTION_TOLERANCE:.0%} of measurements: "
            f"{'yes' if abs(off) <= PREDICTION_TOLERANCE else 'NO'} (worst: {worst.method}, {off:+.0%})"
        )
    exact = all(r.relative_error <= TOLERANCE for r in rows)
    lines.append(f"every method's output equals the local model's within {TOLERANCE:g}: {'yes' if exact else 'NO'}")
    return lines
