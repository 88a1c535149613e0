"""Argument types shared by the ``edgeflow`` subcommands."""

from __future__ import annotations

import argparse

from controller.planner.methods import SCHEDULES
from controller.zoo import parse_shape
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.node.config import SECURITY, SETTINGS, add_arguments

__all__ = [
    "CLUSTER_HELP",
    "add_broker_arguments",
    "add_rates_argument",
    "broker_settings",
    "input_shape",
    "positive_float",
    "positive_int",
]

CLUSTER_HELP = "cluster YAML file, or a name under profiles/clusters/"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def input_shape(text: str) -> tuple[int, ...]:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--broker`` and how to reach it securely: the same flags as edgeflowd's settings."""
    add_arguments(parser.add_argument_group("broker"), ("broker", "mqtt_version", *SECURITY), required=["broker"])


def broker_settings(args: argparse.Namespace) -> BrokerSettings:
    version = args.mqtt_version or SETTINGS["mqtt_version"].default
    return BrokerSettings(
        args.broker, version, args.ca_file, args.cert_file, args.key_file, args.username, args.password_file
    )


def add_schedule_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="auto",
        help="auto: units send the rows other devices read first, then compute the rest, where the "
        "cost model predicts it pays; whole: every unit computes its rows in one pass",
    )


def add_rates_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--rates measured|declared`` (default measured), the one way every planning command takes it;
    ``what`` says what planning on measurements means for that command."""
    parser.add_argument(
        "--rates",
        choices=["measured", "declared"],
        default="measured",
        help=f"plan with {what}, or with the cluster file's declared figures",
    )
