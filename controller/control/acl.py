"""A Mosquitto ACL for one cluster: each node, logged in with its node id as username, may write
only its own ``node/<id>/`` leaves and the data plane; it reads its assignment, the weight blobs and
the data plane. A requester may write only where requests enter (unit inputs, which only take the
model input from it: :class:`~edgeflowd.wire.frames.FrameKeys`) and its latency reports, and read
results and refusals. The controller, dashboards (read only) and operators (who may also send the
controller requests) get their own users. Each node and the
controller may also write its own Home Assistant discovery config and read Home Assistant's status
(used only with ``homeassistant_discovery``). Pure text: the topics
come from :class:`Topics`, so the ACL follows the protocol."""

from __future__ import annotations

from collections.abc import Sequence

from edgeflowd.wire.discovery import discovery_topic, ha_status_topic, object_id
from edgeflowd.wire.topics import NODE_LEAVES, Topics

__all__ = ["mosquitto_acl"]


def mosquitto_acl(
    cluster: str,
    nodes: Sequence[str],
    controller: str = "controller",
    clients: Sequence[str] = ("client",),
    dashboards: Sequence[str] = ("dashboard",),
    homeassistant_prefix: str = "homeassistant",
    operators: Sequence[str] = ("operator",),
) -> str:
    topics = Topics(cluster)

    def discovery(name: str) -> list[str]:
        config = discovery_topic(homeassistant_prefix, object_id(cluster, name))
        return [f"topic write {config}", f"topic read {ha_status_topic(homeassistant_prefix)}"]

    lines = [
        f"# Mosquitto acl_file for EdgeFlow cluster {cluster!r} (topic root {topics.root}/).",
        "# Usernames: each node's node_id; the node may not write another node's topics or its own assignment.",
        "",
    ]
    for node in nodes:
        lines.append(f"user {node}")
        lines += [
            f"topic write {topics.node(node, leaf)}" for leaf in NODE_LEAVES if leaf not in ("assignment", "echo")
        ]
        lines += [
            f"topic readwrite {topics.node(node, 'echo')}",  # its link probe goes through the broker and back
            f"topic read {topics.node(node, 'assignment')}",
            f"topic read {topics.all_blobs}",
            f"topic readwrite {topics.all_data}",
            *discovery(node),
            "",
        ]
    lines += ["# plans, deploys and watches every node", f"user {controller}", f"topic readwrite {topics.root}/#"]
    lines += [*discovery("controller"), ""]
    data = f"{topics.root}/data/+"
    for client in clients:
        lines += [
            "# sends requests: reads the plan (and its request key), writes inputs and its latencies,",
            "# reads results, refusals and the nodes' timings of its requests (--timeline); never",
            "# writes a result, nor reads the frames between nodes",
            f"user {client}",
            f"topic read {topics.root}/controller/plan/+",
            f"topic read {topics.root}/controller/timeline/+",
            f"topic write {data}/+/in",
            f"topic write {data}/latency",
            f"topic write {data}/trace",
            f"topic read {data}/spans",
            f"topic read {data}/result/+",
            f"topic read {data}/busy",
            "",
        ]
    for operator in operators:
        lines += [
            "# asks the controller over MQTT (replan, status, set_method) and reads its answers",
            f"user {operator}",
            f"topic write {topics.requests}",
            f"topic read {topics.root}/controller/response/+",
            "",
        ]
    seen = [topics.node_filter(leaf) for leaf in NODE_LEAVES if leaf not in ("assignment", "echo")]
    for dashboard in dashboards:
        lines += [
            "# broker dashboard: reads everything but the nodes'",
            "# assignments, which hold the plan key; writes nothing",
            f"user {dashboard}",
            *(f"topic read {topic}" for topic in seen),
            f"topic read {topics.root}/controller/#",
            f"topic read {topics.all_data}",
            f"topic read {topics.all_blobs}",
            "",
        ]
    return "\n".join(lines)
