"""``edgeflow controller`` and ``edgeflow status``: the long-running service and its dashboard."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

from controller.cli.args import CLUSTER_HELP, add_broker_arguments, add_rates_argument, broker_settings
from controller.cli.status import cmd_status
from controller.control.acl import mosquitto_acl
from controller.control.service import ControllerService
from controller.planner.methods import METHODS
from edgeflowd.node.config import SETTINGS, add_arguments
from edgeflowd.profiles.devices import load_cluster

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
        homeassistant_prefix=args.homeassistant_prefix or SETTINGS["homeassistant_prefix"].default
        if args.homeassistant_discovery
        else None,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return service.run()


def _cmd_acl(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster)
    print(
        mosquitto_acl(
            cluster.name,
            [d.id for d in cluster.devices],
            args.controller_user,
            args.client_user,
            args.dashboard_user,
            operators=args.operator_user,
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
    ctl.add_argument(
        "--model",
        required=True,
        action="append",
        help=model_help + "; again for each further model the cluster serves (each its own plan)",
    )
    ctl.add_argument("--method", choices=[m for m in METHODS if m != "optimal"], default="edgeflow")
    ctl.add_argument("--settle", type=float, default=1.0, help="seconds without change before re-planning")
    add_arguments(ctl.add_argument_group("Home Assistant"), ("homeassistant_discovery", "homeassistant_prefix"))
    add_rates_argument(ctl, "each node's measured speed and load (re-planning when the load moves)")
    ctl.set_defaults(func=_cmd_controller)
    status = sub.add_parser("status", help="table of the cluster's nodes and its current plan")
    add_broker_arguments(status)
    status.add_argument("--cluster", required=True, help=CLUSTER_HELP)
    status.add_argument("--watch", action="store_true", help="a live view, refreshed until Ctrl-C (or --count times)")
    status.add_argument("--json", action="store_true", help="JSON instead (with --watch: one document per line)")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--count", type=int, default=1_000_000)
    status.set_defaults(func=cmd_status)
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
    acl.add_argument(
        "--operator-user", nargs="*", default=["operator"], help="users that may send the controller requests"
    )
    acl.set_defaults(func=_cmd_acl)
