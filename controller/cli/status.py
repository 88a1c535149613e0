"""``edgeflow status``: the cluster's nodes and its plans (one per model served) as the broker
holds them, in one document
(:func:`status_doc`) shown three ways: a plain table (one snapshot, for logs and pipes), a live
terminal view (``--watch``, drawn by rich), and JSON (``--json``: one document per snapshot, one
per line, for scripts)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.cli.args import broker_settings
from controller.control.registry import NODE_FEEDS, Registry, effective_device, others_load
from edgeflowd.errors import ProtocolError
from edgeflowd.net.mqtt import Connection, MessageQueue, listen, received
from edgeflowd.profiles.devices import load_cluster
from edgeflowd.wire.messages import Costs, PlanInfo, decode_control
from edgeflowd.wire.topics import ControllerTopic, NodeTopic, Topics

__all__ = ["Seen", "cmd_status", "status_doc", "status_lines"]

_COLUMNS = (  # (key in a node's entry, heading, plain width; <0: left-aligned)
    ("node", "node", -14),
    ("state", "state", -8),
    ("cpu_percent", "cpu %", 6),
    ("others_load", "others", 7),
    ("planned_as", "planned as", -10),
    ("gflops", "GFLOP/s", 8),
    ("unit_ms", "unit ms", 8),
    ("mbps", "Mbit/s", 7),
    ("message_ms", "msg ms", 7),
    ("rows", "rows", 5),
    ("units", "units", 6),
    ("generation", "gen", 4),
)
_STYLES = {"online": "green", "silent": "yellow", "offline": "red", "refused": "red", "unknown": "dim"}


@dataclass
class Seen:
    """The plans and cost models heard of, by model."""

    plans: dict[str, PlanInfo] = field(default_factory=dict)
    costs: dict[str, Costs] = field(default_factory=dict)


def _follow(conn: Connection, topics: Topics, registry: Registry, followed: set[str]) -> None:
    """Subscribe to the plan and cost model of every model a node says it serves, by their exact
    topics (some brokers hand retained messages only to those; the filters cover the others)."""
    models = {m for v in registry.views.values() if v.report for m in v.report.models} - followed
    for model in sorted(models):
        followed.add(model)
        for leaf in ("plan", "costs"):
            conn.subscribe(topics.controller(leaf, model), qos=1)


def _snapshot(
    registry: Registry, topics: Topics, messages: MessageQueue, wait_s: float, seen: Seen, follow: Callable[[], None]
) -> None:
    """Feed ``registry`` and ``seen`` what arrives within ``wait_s``."""
    for topic, payload in received(messages, wait_s):
        try:
            about = topics.parse(topic)
            if isinstance(about, ControllerTopic) and about.leaf == "plan":
                if payload:
                    seen.plans[about.model] = decode_control(payload, topic, PlanInfo)
                else:  # cleared: no longer served
                    seen.plans.pop(about.model, None)
            elif isinstance(about, ControllerTopic) and about.leaf == "costs":
                if payload:
                    seen.costs[about.model] = decode_control(payload, topic, Costs)
                else:  # cleared: no longer served
                    seen.costs.pop(about.model, None)
            elif isinstance(about, NodeTopic):
                registry.on_message(about, payload, topic, time.monotonic())
                if about.leaf == "assignment/reported":
                    follow()
        except ProtocolError:
            continue
    registry.silence(time.monotonic())


def status_doc(registry: Registry, seen: Seen) -> dict[str, Any]:
    """Every node with the figures it is planned with (the controller's, else its own), each
    model's plan, and its measured latency: None where nothing is known. A node's ``rows``: its
    share of each model's rows."""
    costs = [seen.costs[m] for m in sorted(seen.costs)]
    nodes = []
    for device in registry.cluster.devices:
        view = registry.views[device.id]
        t, report = view.telemetry, view.report
        shares = {m: c.nodes[device.id].share for m, c in sorted(seen.costs.items()) if device.id in c.nodes}
        planned = next((c.nodes[device.id] for c in costs if device.id in c.nodes), None)  # a node's, per model
        if planned is None:
            mine = effective_device(device, view)
            source, gflops, overhead = None, mine.profile.gflops * (1 - mine.load), mine.profile.op_overhead_ms
            mbps, latency = min(mine.link.up_mbps, mine.link.down_mbps), mine.link.latency_ms
        else:
            source, gflops, overhead = planned.source, planned.gflops * (1 - planned.load), planned.op_overhead_ms
            mbps, latency = min(planned.up_mbps, planned.down_mbps), planned.latency_ms
        nodes.append(
            {
                "node": device.id,
                "state": view.state,
                "cpu_percent": t.cpu_percent if t else None,
                "others_load": others_load(t) if t else None,
                "planned_as": source,
                "gflops": round(gflops, 2),
                "unit_ms": round(overhead, 4),
                "mbps": round(mbps, 1),
                "message_ms": round(latency, 3),
                "rows": shares or None,
                "units": len(report.units) if report else 0,
                "generation": report.generation if report else None,
                "error": (report.error if report else "") or view.refused,
            }
        )
    plans = []
    for model, plan in sorted(seen.plans.items()):
        cost = seen.costs.get(model)
        measured = None
        if cost is not None and cost.generation == plan.generation:
            measured = {
                "median_ms": cost.measured_ms if cost.requests else None,
                "requests": cost.requests,
                "single_node": cost.single_node or None,
                "single_ms": cost.single_ms if cost.single_node else None,
                "message_mflop": cost.message_mflop,
                "alone": cost.alone or None,
            }
        plans.append(
            {
                "plan": plan.plan,
                "generation": plan.generation,
                "model": plan.model,
                "method": plan.method,
                "nodes": plan.nodes,
                "predicted_ms": plan.predicted_ms,
                "measured": measured,
            }
        )
    return {"cluster": registry.cluster.name, "nodes": nodes, "plans": plans}


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "cpu_percent":
        return f"{value:.0f}"
    if key == "others_load":
        return f"{value:.0%}"
    if key == "rows":  # a share per model served
        return "/".join(f"{share:.0%}" for share in value.values())
    if key == "gflops":
        return f"{value:.1f}"
    if key == "unit_ms":
        return f"{value:.3f}"
    if key == "mbps":
        return f"{value:.0f}"
    if key == "message_ms":
        return f"{value:.2f}"
    return str(value)


def _footer(doc: dict[str, Any]) -> list[str]:
    if not doc["plans"]:
        return ["no plan deployed"]
    lines = []
    for plan in doc["plans"]:
        lines.append(
            f"plan {plan['plan']}: {plan['model']} with {plan['method']} on {', '.join(plan['nodes'])}, "
            f"predicted {plan['predicted_ms']:.1f} ms"
        )
        measured = plan["measured"]
        if measured is not None:
            median = measured["median_ms"]
            said = f"{median:.1f} ms over the last {measured['requests']} requests" if median is not None else "-"
            single = measured["single_node"]
            best = f"; best single device {single}: predicted {measured['single_ms']:.1f} ms" if single else ""
            mflop = measured["message_mflop"]
            lines.append(f"  measured median {said}{best}; a message costs {mflop:.1f} MFLOP of handling")
            if measured["alone"]:
                lines.append(f"  {measured['alone']} alone was measured faster than the split: it runs the model")
    return lines


def status_lines(doc: dict[str, Any]) -> list[str]:
    """The plain table: a heading, a line per node, then the plan."""

    def row(cells: list[str]) -> str:
        return " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, _, w) in zip(cells, _COLUMNS, strict=True))

    lines = [row([heading for _, heading, _ in _COLUMNS]) + "  last error"]
    for node in doc["nodes"]:
        lines.append(row([_cell(key, node[key]) for key, _, _ in _COLUMNS]) + f"  {node['error']}")
    return lines + _footer(doc)


def _view(doc: dict[str, Any], when: str) -> Group:
    table = Table(title=f"EdgeFlow cluster {doc['cluster']} at {when}", title_justify="left")
    for key, heading, width in _COLUMNS:
        table.add_column(heading, justify="left" if width < 0 else "right", no_wrap=key == "node")
    table.add_column("last error", overflow="fold")
    for node in doc["nodes"]:
        cells: list[str | Text] = [_cell(key, node[key]) for key, _, _ in _COLUMNS]
        cells[1] = Text(node["state"], style=_STYLES.get(node["state"], ""))
        table.add_row(*cells, Text(node["error"], style="red"))
    return Group(table, *(Text(line) for line in _footer(doc)))


def cmd_status(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster)
    topics = Topics(cluster.name)
    nodes = [d.id for d in cluster.devices]
    every = [f"{topics.root}/controller/{leaf}/+" for leaf in ("plan", "costs")]  # and each model's by name
    conn, messages = listen(broker_settings(args), "edgeflow-status", [*topics.node_feeds(nodes, NODE_FEEDS), *every])
    registry = Registry(cluster)
    seen, followed = Seen(), set[str]()

    def follow() -> None:
        _follow(conn, topics, registry, followed)

    live: Live | None = None
    try:
        for i in range(args.count if args.watch else 1):
            _snapshot(registry, topics, messages, args.interval if i else 1.0, seen, follow)
            doc = status_doc(registry, seen)
            if args.json:
                print(json.dumps(doc), flush=True)
            elif not args.watch:
                print("\n".join(status_lines(doc)), flush=True)
            else:
                view = _view(doc, time.strftime("%H:%M:%S"))
                if live is None:
                    live = Live(view, console=Console(), auto_refresh=False)
                    live.start()
                live.update(view, refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
        conn.stop()
    return 0
