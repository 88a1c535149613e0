"""``edgeflow controller`` and ``edgeflow status``: the long-running service and its dashboard."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from dataclasses import dataclass
from types import FrameType

from controller.cli.args import CLUSTER_HELP, add_broker_arguments, add_rates_argument, broker_settings
from controller.control.acl import mosquitto_acl
from controller.control.registry import NODE_FEEDS, Registry, effective_device, others_load
from controller.control.service import ControllerService
from controller.planner.methods import METHODS
from edgeflowd.errors import ProtocolError
from edgeflowd.net.mqtt import MessageQueue, listen, received
from edgeflowd.profiles.devices import load_cluster
from edgeflowd.wire.messages import Costs, PlanInfo, decode_control
from edgeflowd.wire.topics import ControllerTopic, NodeTopic, Topics

__all__ = ["add_service_commands"]


def _cmd_controller(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = ControllerService(
        broker_settings(args),
        load_cluster(args.cluster),
        args.model,
        args.method,
        args.settle,
        measured_rates=args.rates == "measured",
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return service.run()


@dataclass
class _Seen:
    plan: PlanInfo | None = None
    costs: Costs | None = None


def _snapshot(registry: Registry, topics: Topics, messages: MessageQueue, wait_s: float, seen: _Seen) -> None:
    """Feed ``registry`` and ``seen`` what arrives within ``wait_s``."""
    for topic, payload in received(messages, wait_s):
        try:
            about = topics.parse(topic)
            if about == ControllerTopic("plan") and payload:
                seen.plan = decode_control(payload, topic, PlanInfo)
            elif about == ControllerTopic("costs") and payload:
                seen.costs = decode_control(payload, topic, Costs)
            elif isinstance(about, NodeTopic):
                registry.on_message(about, payload, topic, time.monotonic())
        except ProtocolError:
            continue
    registry.silence(time.monotonic())


def _table(registry: Registry, seen: _Seen) -> list[str]:
    plan, costs = seen.plan, seen.costs
    lines = [
        f"{'node':<14} {'state':<8} {'cpu %':>6} {'others':>7} {'planned as':<10} {'GFLOP/s':>8} "
        f"{'unit ms':>8} {'Mbit/s':>7} {'msg ms':>7} {'rows':>5} {'units':>6} {'gen':>4}  last error"
    ]
    for device in registry.cluster.devices:
        view = registry.views[device.id]
        t = view.telemetry
        planned = costs.nodes.get(device.id) if costs else None
        if planned is None:
            mine = effective_device(device, view)
            source, gflops, overhead = "-", mine.profile.gflops * (1 - mine.load), mine.profile.op_overhead_ms
            mbps, latency, share = min(mine.link.up_mbps, mine.link.down_mbps), mine.link.latency_ms, "-"
        else:
            source, gflops, overhead = planned.source, planned.gflops * (1 - planned.load), planned.op_overhead_ms
            mbps, latency = min(planned.up_mbps, planned.down_mbps), planned.latency_ms
            share = f"{planned.share:.0%}"
        report = view.report
        heard = view.online or view.last_seen > 0  # a status came: online, or its offline / last will
        online = "silent" if view.silent else "online"
        state = "refused" if view.refused else (online if view.online else "offline" if heard else "unknown")
        lines.append(
            f"{device.id:<14} {state:<8} {(f'{t.cpu_percent:.0f}' if t else '-'):>6} "
            f"{(f'{others_load(t):.0%}' if t else '-'):>7} {source:<10} {gflops:>8.1f} {overhead:>8.3f} "
            f"{mbps:>7.0f} {latency:>7.2f} {share:>5} {(len(report.units) if report else 0):>6} "
            f"{(report.generation if report else '-'):>4}  {(report.error if report else '') or view.refused}"
        )
    if plan is not None:
        lines.append(
            f"plan {plan.plan}: {plan.model} with {plan.method} on {', '.join(plan.nodes)}, "
            f"predicted {plan.predicted_ms:.1f} ms"
        )
    else:
        lines.append("no plan deployed")
    if costs is not None and plan is not None and costs.generation == plan.generation:
        measured = f"{costs.measured_ms:.1f} ms over the last {costs.requests} requests" if costs.requests else "-"
        single = (
            f"; best single device {costs.single_node}: predicted {costs.single_ms:.1f} ms" if costs.single_node else ""
        )
        lines.append(f"measured median {measured}{single}; a message costs {costs.message_mflop:.1f} MFLOP of handling")
    return lines


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster)
    topics = Topics(cluster.name)
    nodes = [d.id for d in cluster.devices]
    feeds = [*topics.node_feeds(nodes, NODE_FEEDS), topics.controller("plan"), topics.controller("costs")]
    conn, messages = listen(broker_settings(args), "edgeflow-status", feeds)
    registry = Registry(cluster)
    seen = _Seen()
    try:
        for i in range(args.count if args.watch else 1):
            _snapshot(registry, topics, messages, args.interval if i else 1.0, seen)
            if args.watch:
                print("\033[2J\033[H", end="")
            print("\n".join(_table(registry, seen)), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        conn.stop()
    return 0


def _cmd_acl(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster)
    print(
        mosquitto_acl(
            cluster.name, [d.id for d in cluster.devices], args.controller_user, args.client_user, args.dashboard_user
        ),
        end="",
    )
    return 0


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], model_help: str) -> None:
    ctl = sub.add_parser(
        "controller",
        help="run the controller service: plan, watch the nodes, re-plan when the cluster changes",
        description="Long-running: deploys the model to the live nodes of the cluster and re-plans when a node "
        "leaves, joins, or its load changes for good.",
    )
    add_broker_arguments(ctl)
    ctl.add_argument("--cluster", required=True, help=CLUSTER_HELP)
    ctl.add_argument("--model", required=True, help=model_help)
    ctl.add_argument("--method", choices=[m for m in METHODS if m != "optimal"], default="edgeflow")
    ctl.add_argument("--settle", type=float, default=1.0, help="seconds without change before re-planning")
    add_rates_argument(ctl, "each node's measured speed and load (re-planning when the load moves)")
    ctl.set_defaults(func=_cmd_controller)
    status = sub.add_parser("status", help="table of the cluster's nodes and its current plan")
    add_broker_arguments(status)
    status.add_argument("--cluster", required=True, help=CLUSTER_HELP)
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C (or --count times)")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--count", type=int, default=1_000_000)
    status.set_defaults(func=_cmd_status)
    acl = sub.add_parser(
        "acl",
        help="print a Mosquitto ACL for a cluster: each node writes only its own topics and the data plane",
        description="Print a Mosquitto acl_file for the cluster's nodes (username = node id), a controller, "
        "requesters and read-only dashboards. Use it with a password file or client certificates "
        "(use_identity_as_username); see packaging/mosquitto/edgeflow.conf.",
    )
    acl.add_argument("--cluster", required=True, help=CLUSTER_HELP)
    acl.add_argument("--controller-user", default="controller")
    acl.add_argument("--client-user", nargs="*", default=["client"], help="users that may send requests")
    acl.add_argument("--dashboard-user", nargs="*", default=["dashboard"], help="read-only users")
    acl.set_defaults(func=_cmd_acl)
