"""``edgeflowd`` entry point: configuration, logging, signals; the service is :class:`Daemon`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from edgeflowd import __version__
from edgeflowd.errors import EdgeFlowError
from edgeflowd.node.allocator import keep_freed_memory
from edgeflowd.node.check import check_config
from edgeflowd.node.config import SETTINGS, DaemonConfig, add_arguments, load_config
from edgeflowd.profiles.devices import DeviceProfile, load_device_profile
from edgeflowd.wire.discovery import discovery_topic, object_id
from edgeflowd.wire.topics import Topics

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeflowd",
        description="EdgeFlow device daemon: runs this node's share of a distributed model. It "
        "connects to the broker, takes its retained assignment, computes its execution units and "
        "forwards their output rows. Settings come from --config, then EDGEFLOWD_* environment "
        "variables (EDGEFLOWD_NODE_ID, EDGEFLOWD_BROKER, ...), then these flags.",
    )
    parser.add_argument("--version", action="version", version=f"edgeflowd {__version__}")
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (keys as the flags, with _)")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective configuration and every error, then exit (0: ready to start)",
    )
    parser.add_argument(
        "--measure-profile",
        metavar="NAME",
        help="measure this board (compute, and its link through --broker if one answers), print a device "
        "profile YAML named NAME for profiles/devices/, then exit",
    )
    parser.add_argument(
        "--forget",
        action="store_true",
        help="clear what this node keeps on the broker (its retained status, info and report, and its Home "
        "Assistant device), then exit: for a board that leaves the cluster (the package's removal runs it)",
    )
    add_arguments(parser, SETTINGS)
    return parser


def _configure_logging(level: str) -> None:
    # Under systemd the journal stamps time and unit itself.
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        k: v for k, v in vars(args).items() if k not in ("config", "check_config", "measure_profile", "forget")
    }
    if args.measure_profile and not overrides.get("node_id"):
        overrides["node_id"] = "measure"  # names only its echo topic
    if args.check_config:
        lines, status = check_config(args.config, overrides)
        print("\n".join(lines))
        return status
    try:
        config = load_config(args.config, overrides)
        profile = load_device_profile(config.profile) if config.profile else None
    except EdgeFlowError as exc:
        print(f"edgeflowd: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    if args.measure_profile:
        return measure_profile(args.measure_profile, config, profile)
    if args.forget:
        return forget(config)
    return serve(config, profile)


def forget(config: DaemonConfig, timeout_s: float = 10.0) -> int:
    """Clear the node's retained topics; 1 (saying why) when the broker does not take them in time."""
    from edgeflowd.net.mqtt import Connection  # noqa: PLC0415 - paho: keep --help and --check-config light

    topics = Topics(config.cluster)
    node = config.node_id
    mine = [topics.node(node, leaf) for leaf in ("status", "info", "assignment/reported")]
    mine.append(discovery_topic(config.homeassistant_prefix, object_id(config.cluster, node)))
    conn = Connection(config.broker_settings(), f"edgeflowd-forget-{node}", lambda topic, payload: None)
    try:
        conn.start(timeout_s)
        for topic in mine:
            conn.publish_wait(topic, b"", timeout_s=timeout_s, retain=True)
    except EdgeFlowError as exc:
        print(f"edgeflowd: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.stop()
    print(f"edgeflowd: node {node} forgotten on {config.broker}: {', '.join(mine)} cleared")
    return 0


def measure_profile(name: str, config: DaemonConfig, profile: DeviceProfile | None) -> int:
    from edgeflowd.node.daemon import Daemon  # noqa: PLC0415 - imports torch
    from edgeflowd.node.measured_profile import profile_yaml  # noqa: PLC0415

    try:
        daemon = Daemon(config, profile)
    except EdgeFlowError as exc:
        print(f"edgeflowd: {exc}", file=sys.stderr)
        return 2
    figures = daemon.measure()
    print(profile_yaml(name, figures, int(figures["threads"]), profile, config.broker), end="")
    return 0


def serve(config: DaemonConfig, profile: DeviceProfile | None) -> int:
    from edgeflowd.node.daemon import Daemon  # noqa: PLC0415 - imports torch: keep --help and config errors fast

    keep_freed_memory()  # before the first request's tensors are allocated

    try:
        daemon = Daemon(config, profile)
    except EdgeFlowError as exc:
        print(f"edgeflowd: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
