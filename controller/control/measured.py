"""The cluster as its nodes measure it, read once from their retained reports: what a one-shot
``edgeflow deploy`` plans on (the controller service keeps a registry of its own, live).

Every node publishes, retained, its status and its ``info`` with the benchmark it ran where it
runs (conv, depthwise and matmul rates, the weight pass, a unit's cost, its link through the
broker); :func:`measured_cluster` waits for them and gives the cluster file's devices at those
rates and at the load the nodes last reported, so that no plan rests on a speed declared in a file.
"""

from __future__ import annotations

import time

from controller.control.registry import NODE_FEEDS, Registry
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import listen, received
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.profiles.devices import Cluster
from edgeflowd.wire.topics import NodeTopic, Topics

__all__ = ["MeasurementsMissingError", "measured_cluster"]


class MeasurementsMissingError(EdgeFlowError):
    """Some node of the cluster has not published its measurements."""


def measured_cluster(broker: BrokerSettings, cluster: Cluster, topic_cluster: str, wait_s: float) -> Cluster:
    """``cluster``'s devices as their nodes measured them (all of them: a deploy places work on
    every node of the file); raises :class:`MeasurementsMissingError` naming those that have not
    reported within ``wait_s`` seconds. Malformed reports are skipped, as the controller does."""
    topics = Topics(topic_cluster)
    registry = Registry(cluster)
    conn, messages = listen(
        broker, "edgeflow-deploy-rates", topics.node_feeds([d.id for d in cluster.devices], NODE_FEEDS)
    )
    try:
        deadline = time.monotonic() + wait_s
        while True:
            missing = [d.id for d in cluster.devices if d.id not in registry.live()]
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                break
            for topic, payload in received(messages, min(left, 0.2)):
                try:
                    about = topics.parse(topic)
                    if isinstance(about, NodeTopic):
                        registry.on_message(about, payload, topic, time.monotonic())
                except ProtocolError:
                    continue
    finally:
        conn.stop()
    if missing:
        raise MeasurementsMissingError(
            f"no measurements from {', '.join(missing)} within {wait_s:.0f} s: each node publishes "
            "them when its edgeflowd connects (is it running, on this broker and cluster?); "
            "--rates declared plans with the cluster file's figures instead"
        )
    return registry.live_cluster(measured=True)
