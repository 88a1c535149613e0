"""The controller's view of the nodes, built from their retained status and info and their
telemetry; and the effective device each node is planned as. Pure: messages and ``now`` in,
events out.

Effective rate of a node for an op kind (what the partitioner uses):

    rate(kind) = conv_gflops x factor(kind) x (1 - load)

- ``conv_gflops`` is the node's measured dense-convolution rate (its start-up micro-benchmark in
  ``info.benchmark``); the declared profile's ``gflops`` when it reported none.
- ``factor(kind)`` is measured where the benchmark covers the kind (``dwconv``, ``matmul``: their
  rate over the conv rate), the declared profile's factor otherwise.
- a unit's fixed cost includes a pass over its layer's weights at the node's measured
  ``weights_gbps`` (the declared one, or none, when it reported none), and the per-unit overhead
  it measured (``unit_overhead_ms``: dispatching a tiny op and framing its output).
- the link is the measured one where the node measured it (through the broker: its uplink and
  downlink rates, ``link_up_mbps`` and ``link_down_mbps``, and the per-message
  ``link_latency_ms``), the declared one otherwise.
- ``load`` is the share of the node's CPUs taken by *other* work: telemetry's ``cpu_percent``
  minus the daemon's own ``process_cpu_percent``, clamped to [0, 0.95], or the cluster file's
  static load when no telemetry came yet.

That is the node's *reference* (:func:`reference_device`, load aside). Once the node has run
units, the controller plans it from the fit of their measured times to the reference instead
(:mod:`controller.control.learning`): the ``fitted`` devices of :meth:`Registry.live_cluster`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from edgeflowd.profiles.devices import MEASURED_KINDS, Cluster, Device, Link
from edgeflowd.wire.messages import PROTOCOL_VERSIONS, AssignmentReport, Info, Status, Telemetry, decode_control
from edgeflowd.wire.topics import NodeTopic

__all__ = [
    "NODE_FEEDS",
    "Event",
    "LoadWatch",
    "NodeView",
    "Registry",
    "effective_device",
    "measurements_moved",
    "others_load",
    "reference_device",
]

NODE_FEEDS = ("status", "info", "telemetry", "assignment/reported")
"""The node topics a registry is built from."""

MAX_LOAD = 0.95
SILENT_PERIODS = 3  # telemetry periods missed before a node counts as frozen or cut off
SILENT_MIN_S = 3.0  # never sooner than this: a busy broker or a loaded node delays a message


@dataclass
class NodeView:
    node: str
    online: bool = False
    instance: str = ""
    info: Info | None = None
    telemetry: Telemetry | None = None
    report: AssignmentReport | None = None
    refused: str = ""  # why the controller will not plan with this node
    last_seen: float = 0.0
    heard: float = 0.0  # when its last telemetry came
    silent: bool = False  # online for the broker, but its telemetry stopped (:meth:`Registry.silence`)

    @property
    def reachable(self) -> bool:
        return self.online and not self.silent

    @property
    def state(self) -> str:
        """refused, silent, online, offline (it said so, or its last will did), or unknown (never
        heard from: not known to be down)."""
        if self.refused:
            return "refused"
        if self.online:
            return "silent" if self.silent else "online"
        return "offline" if self.last_seen > 0 else "unknown"

    def silent_after(self) -> float:
        """When this node counts as silent, if no telemetry comes before (inf: never, as for a
        node that did not say its period)."""
        t = self.telemetry
        if t is None or t.interval_s <= 0:
            return math.inf
        return self.heard + max(SILENT_PERIODS * t.interval_s, SILENT_MIN_S) + t.quiet_s


@dataclass(frozen=True)
class Event:
    event: str  # joined | left | duplicate | refused | unknown: the ControllerEvent it becomes
    node: str
    detail: str

    @property
    def changes_membership(self) -> bool:
        return self.event in ("joined", "left", "refused")


def others_load(telemetry: Telemetry) -> float:
    return min(MAX_LOAD, telemetry.others_load)


def _number(bench: Mapping[str, object], key: str) -> float:
    value = bench.get(key)
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


_MEASURES = {
    "conv_gflops": "GFLOP/s",
    "weights_gbps": "GB/s weight pass",
    "link_up_mbps": "Mbit/s up",
    "link_down_mbps": "Mbit/s down",
}


def measurements_moved(before: Mapping[str, object], after: Mapping[str, object], by: float = 0.3) -> str:
    """What of a node's own measurements (its info's ``benchmark``) moved by more than ``by``
    ("" if nothing did): a reason to plan again."""
    changes = []
    for key, unit in _MEASURES.items():
        old, new = _number(before, key), _number(after, key)
        if old and new and abs(new / old - 1) > by:
            changes.append(f"{new:g} {unit} (was {old:g})")
    return ", ".join(changes)


def reference_device(device: Device, view: NodeView | None) -> Device:
    """``device`` (from the cluster file) as its node measured itself, without load."""
    profile = device.profile
    bench = view.info.benchmark if view and view.info else {}
    conv = _number(bench, "conv_gflops")
    if conv:
        factors = dict(profile.kind_factors)
        for kind in MEASURED_KINDS:
            if rate := _number(bench, f"{kind}_gflops"):
                factors[kind] = rate / conv
        profile = replace(profile, gflops=conv, kind_factors=factors)
    if passes := _number(bench, "weights_gbps"):
        profile = replace(profile, weights_gbps=passes)
    if overhead := _number(bench, "unit_overhead_ms"):
        profile = replace(profile, op_overhead_ms=overhead)
    link = profile.link
    up, down, latency = (_number(bench, f"link_{k}") for k in ("up_mbps", "down_mbps", "latency_ms"))
    link = Link(up or link.up_mbps, down or link.down_mbps, latency or link.latency_ms)
    return Device(device.id, replace(profile, link=link), 0.0, plugin_ops(view))


def plugin_ops(view: NodeView | None) -> frozenset[str]:
    """The plugin ops the node reported in its info (whatever rates a plan is made with)."""
    return frozenset(op for ops in view.info.plugins.values() for op in ops) if view and view.info else frozenset()


def effective_device(device: Device, view: NodeView | None) -> Device:
    """``device`` (from the cluster file) as measured and loaded now (see the module docstring)."""
    load = others_load(view.telemetry) if view and view.telemetry else device.load
    return replace(reference_device(device, view), load=load)


class Registry:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.views: dict[str, NodeView] = {d.id: NodeView(d.id) for d in cluster.devices}
        self._unknown: set[str] = set()

    def _view(self, node: str) -> tuple[NodeView | None, list[Event]]:
        view = self.views.get(node)
        if view is None and node not in self._unknown:
            self._unknown.add(node)
            detail = f"node {node!r} is not in cluster {self.cluster.name}'s profile; it gets no work"
            return None, [Event("unknown", node, detail)]
        return view, []

    def on_status(self, node: str, status: Status, now: float) -> list[Event]:
        view, events = self._view(node)
        if view is None:
            return events
        view.last_seen = now
        if status.state == "online":
            if view.online and view.instance and status.instance != view.instance:
                events.append(
                    Event(
                        "duplicate",
                        node,
                        f"instance {status.instance} came online while instance "
                        f"{view.instance} is still online: the same node id twice, or a last will "
                        "not yet delivered",
                    )
                )
            if not view.online or status.instance != view.instance:
                # A new process or connection: nothing of the old one's silence holds.
                view.online, view.instance, view.silent = True, status.instance, False
                events.append(Event("joined", node, f"instance {status.instance}, session {status.session}"))
        elif view.online and status.instance in (view.instance, ""):
            view.online = False
            if not view.silent:  # a silent node has left already
                events.append(Event("left", node, f"instance {status.instance} offline"))
        return events

    def on_info(self, node: str, info: Info, now: float) -> list[Event]:
        view, events = self._view(node)
        if view is None:
            return events
        view.info, view.last_seen = info, now
        common = set(info.protocol) & set(PROTOCOL_VERSIONS)
        refused = (
            ""
            if common
            else (f"node speaks protocol versions {sorted(info.protocol)}, this controller {list(PROTOCOL_VERSIONS)}")
        )
        if refused and refused != view.refused:
            events.append(Event("refused", node, refused))
        view.refused = refused
        return events

    def on_telemetry(self, node: str, telemetry: Telemetry, now: float) -> list[Event]:
        view = self.views.get(node)
        if view is None:
            return []
        silent_s = now - view.heard
        view.telemetry, view.last_seen, view.heard = telemetry, now, now
        if not view.silent:
            return []
        view.silent = False
        return [Event("joined", node, f"telemetry again after {silent_s:.1f} s of silence")] if view.online else []

    def silence(self, now: float) -> list[Event]:
        """Online nodes whose telemetry stopped for :data:`SILENT_PERIODS` of their period (a
        frozen process, a wedged engine, a half-open connection) leave until it comes again:
        the broker's keepalive says so too, but only after 1.5 keepalives, and not at all while a
        dead process's socket stays open."""
        events = []
        for view in self.views.values():
            if view.reachable and now > view.silent_after():
                view.silent = True
                t = view.telemetry
                period = f"every {t.interval_s:g} s" if t else ""
                detail = f"instance {view.instance}: no telemetry for {now - view.heard:.1f} s ({period})"
                events.append(Event("left", view.node, detail))
        return events

    def heard_all(self, now: float) -> None:
        """Our own connection was down until ``now``: what the nodes said meanwhile never reached
        us, so their silence counts from here."""
        for view in self.views.values():
            view.heard = max(view.heard, now)

    def on_report(self, node: str, report: AssignmentReport) -> None:
        view = self.views.get(node)
        if view is not None:
            view.report = report

    def on_message(self, about: NodeTopic, payload: bytes, topic: str, now: float) -> list[Event]:
        """Apply one node message; raises ProtocolError on a malformed payload. Empty payloads
        (cleared retained topics) are ignored."""
        if not payload:
            return []
        node = about.node
        if about.leaf == "status":
            return self.on_status(node, decode_control(payload, topic, Status), now)
        if about.leaf == "info":
            return self.on_info(node, decode_control(payload, topic, Info), now)
        if about.leaf == "telemetry":
            return self.on_telemetry(node, decode_control(payload, topic, Telemetry), now)
        if about.leaf == "assignment/reported":
            self.on_report(node, decode_control(payload, topic, AssignmentReport))
        return []

    def live(self) -> list[str]:
        """Nodes to plan with, in the cluster file's order: online and not silent, speaking our
        protocol, and benchmarked (their info arrived)."""
        return [d.id for d in self.cluster.devices if (v := self.views[d.id]).reachable and not v.refused and v.info]

    def live_cluster(self, measured: bool = True, fitted: Mapping[str, Device] | None = None) -> Cluster:
        """The live nodes as ``fitted`` has them, else at their measured rates and load, or
        (``measured=False``) as the cluster file declares them."""
        live = [d for d in self.cluster.devices if d.id in self.live()]
        if not measured:  # the file's figures, but what the nodes can run is what they said
            return self.cluster.with_devices(tuple(replace(d, ops=plugin_ops(self.views.get(d.id))) for d in live))
        fits = fitted or {}
        return self.cluster.with_devices(tuple(fits.get(d.id) or effective_device(d, self.views[d.id]) for d in live))


class LoadWatch:
    """Hysteresis on load: a node's load must differ from the load its plan assumed by more than
    ``threshold`` for ``samples`` telemetry messages in a row before a re-plan is asked for."""

    def __init__(self, threshold: float = 0.25, samples: int = 3) -> None:
        self.threshold = threshold
        self.samples = samples
        self.planned: dict[str, float] = {}
        self._streak: dict[str, int] = {}

    def planned_with(self, loads: dict[str, float]) -> None:
        self.planned = dict(loads)
        self._streak = {}

    def observe(self, node: str, load: float) -> bool:
        if node not in self.planned:
            return False
        off = abs(load - self.planned[node]) > self.threshold
        self._streak[node] = self._streak.get(node, 0) + 1 if off else 0
        if self._streak[node] < self.samples:
            return False
        self._streak[node] = 0  # asked once per streak; the re-plan resets the baseline
        return True
