"""MQTT topic names: every topic of a cluster, built and parsed in one place (pure).

Topics live under ``edgeflow/v2/<cluster>/``; docs/protocol.md has the tree with example payloads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgeflowd.errors import ProtocolError

__all__ = [
    "CONTROLLER_LEAVES",
    "MODEL_LEAVES",
    "NODE_LEAVES",
    "BlobTopic",
    "BusyTopic",
    "ControllerTopic",
    "DataTopic",
    "LatencyTopic",
    "NodeTopic",
    "RequestTopic",
    "ResultTopic",
    "SpansTopic",
    "Topic",
    "Topics",
    "TraceTopic",
    "UnitInputTopic",
]


def _level(value: str, what: str) -> str:
    if not value or any(c in value for c in "/#+\x00"):
        raise ProtocolError(f"{what} {value!r} cannot be an MQTT topic level (empty, or contains / # +)")
    return value


NODE_LEAVES = ("status", "info", "telemetry", "assignment", "assignment/reported", "echo")
CONTROLLER_LEAVES = ("status", "event")
MODEL_LEAVES = ("plan", "costs", "timeline")  # one topic per model the cluster serves


@dataclass(frozen=True)
class NodeTopic:
    """``node/<node>/<leaf>``: what one node says about itself, or its assignment."""

    node: str
    leaf: str


@dataclass(frozen=True)
class ControllerTopic:
    """``controller/<leaf>``: the controller's status and its events; ``controller/<leaf>/<model>``
    (``model`` set): what the cluster serves of one model: its plan's summary, cost model and
    predicted timeline."""

    leaf: str
    model: str = ""


@dataclass(frozen=True)
class RequestTopic:
    """``controller/request/<op>``: a dashboard asks the controller to do ``op``; the answer goes
    to ``controller/response/<op>``."""

    op: str


@dataclass(frozen=True)
class UnitInputTopic:
    """``data/<plan>/<unit>/in``: row slices for one execution unit."""

    plan: str
    unit: str


@dataclass(frozen=True)
class ResultTopic:
    """``data/<plan>/result/<request>``: output rows of one request, for its requester."""

    plan: str
    request: str


@dataclass(frozen=True)
class LatencyTopic:
    """``data/<plan>/latency``: a requester's measured latency of one of its requests."""

    plan: str


@dataclass(frozen=True)
class BusyTopic:
    """``data/<plan>/busy``: a node refused a request (admission control): every node of the plan
    drops it, its requester fails it at once."""

    plan: str


@dataclass(frozen=True)
class TraceTopic:
    """``data/<plan>/trace``: a requester asks how one of its requests went on each node."""

    plan: str


@dataclass(frozen=True)
class SpansTopic:
    """``data/<plan>/spans``: a node's answer to a trace request."""

    plan: str


@dataclass(frozen=True)
class BlobTopic:
    """``blob/<sha256>/<part>``: one retained part of a content-addressed weight blob."""

    sha256: str
    part: int


Topic = (
    NodeTopic
    | ControllerTopic
    | RequestTopic
    | UnitInputTopic
    | ResultTopic
    | LatencyTopic
    | BusyTopic
    | TraceTopic
    | SpansTopic
    | BlobTopic
)
DataTopic = UnitInputTopic | ResultTopic


def _node_leaf(leaf: str) -> str:
    if leaf not in NODE_LEAVES:
        raise ProtocolError(f"unknown node topic leaf {leaf!r}")
    return leaf


@dataclass(frozen=True)
class Topics:
    """Every topic of one cluster, built and parsed in one place."""

    cluster: str

    def __post_init__(self) -> None:
        _level(self.cluster, "cluster name")

    @property
    def root(self) -> str:
        return f"edgeflow/v2/{self.cluster}"

    def node(self, node_id: str, leaf: str) -> str:
        return f"{self.root}/node/{_level(node_id, 'node id')}/{_node_leaf(leaf)}"

    def controller(self, leaf: str, model: str | None = None) -> str:
        """``controller/<leaf>``, or ``controller/<leaf>/<model>`` for a leaf of one model's plan."""
        if leaf in MODEL_LEAVES and model is not None:
            return f"{self.root}/controller/{leaf}/{_level(model, 'model name')}"
        if leaf in MODEL_LEAVES:
            raise ProtocolError(f"controller topic {leaf!r} is one model's: name the model")
        if leaf not in CONTROLLER_LEAVES or model is not None:
            raise ProtocolError(f"unknown controller topic leaf {leaf!r}" + (f" of model {model!r}" if model else ""))
        return f"{self.root}/controller/{leaf}"

    def request(self, op: str) -> str:
        return f"{self.root}/controller/request/{_level(op, 'operation')}"

    def response(self, op: str) -> str:
        return f"{self.root}/controller/response/{_level(op, 'operation')}"

    @property
    def requests(self) -> str:
        """Subscription filter for every request to the controller."""
        return f"{self.root}/controller/request/+"

    def unit_input(self, plan: str, unit: str) -> str:
        return f"{self.root}/data/{_level(plan, 'plan id')}/{_level(unit, 'unit id')}/in"

    def result(self, plan: str, request: str) -> str:
        return f"{self.root}/data/{_level(plan, 'plan id')}/result/{_level(request, 'request id')}"

    def latency(self, plan: str) -> str:
        return f"{self.root}/data/{_level(plan, 'plan id')}/latency"

    def trace(self, plan: str) -> str:
        return f"{self.root}/data/{_level(plan, 'plan id')}/trace"

    def spans(self, plan: str) -> str:
        return f"{self.root}/data/{_level(plan, 'plan id')}/spans"

    def busy(self, plan: str) -> str:
        return f"{self.root}/data/{_level(plan, 'plan id')}/busy"

    @property
    def latencies(self) -> str:
        """Subscription filter for the requesters' latency reports of every plan."""
        return f"{self.root}/data/+/latency"

    def node_filter(self, leaf: str) -> str:
        """Subscription filter for one leaf of every node (``node/+/<leaf>``)."""
        return f"{self.root}/node/+/{_node_leaf(leaf)}"

    def node_feeds(self, nodes: Iterable[str], leaves: Iterable[str]) -> list[str]:
        """What a watcher of ``nodes`` subscribes to: each of their ``leaves`` by its exact topic,
        since some brokers (RabbitMQ's MQTT plugin) hand retained messages only to subscriptions of
        their exact topic, and every node's status by filter as well, so that a node missing from
        the cluster file is still heard of when it comes online. A known node's status then comes
        twice on most brokers; a status says a state, so the second copy changes nothing."""
        leaves = list(leaves)
        exact = [self.node(node, leaf) for node in nodes for leaf in leaves]
        return exact + ([self.node_filter("status")] if "status" in leaves else [])

    @property
    def reports(self) -> str:
        """Subscription filter for every node's assignment report."""
        return self.node_filter("assignment/reported")

    def results(self, plan: str) -> str:
        """Subscription filter for every result of one plan."""
        return f"{self.root}/data/{_level(plan, 'plan id')}/result/+"

    def blob(self, sha256: str, part: int) -> str:
        """Retained part ``part`` of a content-addressed weight blob."""
        return f"{self.root}/blob/{_level(sha256, 'blob hash')}/{part}"

    @property
    def all_blobs(self) -> str:
        """Filter for every weight blob of the cluster."""
        return f"{self.root}/blob/#"

    @property
    def all_data(self) -> str:
        """Filter for the whole data plane: unit inputs and results of every plan."""
        return f"{self.root}/data/#"

    def data_filter(self, plan: str) -> str:
        """Subscription filter for every data-plane message of one plan (a traffic tap)."""
        return f"{self.root}/data/{_level(plan, 'plan id')}/#"

    def parse(self, topic: str) -> Topic:
        """The typed value of a topic of this cluster; anything else raises :class:`ProtocolError`."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            raise ProtocolError(f"topic {topic!r} is not under {prefix}")
        parts = topic[len(prefix) :].split("/")
        if parts[0] == "node" and len(parts) in (3, 4) and "/".join(parts[2:]) in NODE_LEAVES:
            return NodeTopic(parts[1], "/".join(parts[2:]))
        if parts[0] == "controller" and len(parts) == 2 and parts[1] in CONTROLLER_LEAVES:
            return ControllerTopic(parts[1])
        if parts[0] == "controller" and len(parts) == 3 and parts[1] in MODEL_LEAVES and parts[2]:
            return ControllerTopic(parts[1], parts[2])
        if parts[0] == "controller" and len(parts) == 3 and parts[1] == "request" and parts[2]:
            return RequestTopic(parts[2])
        if parts[0] == "data" and len(parts) == 4 and parts[3] == "in":
            return UnitInputTopic(parts[1], parts[2])
        if parts[0] == "data" and len(parts) == 4 and parts[2] == "result":
            return ResultTopic(parts[1], parts[3])
        if parts[0] == "data" and len(parts) == 3 and parts[2] == "latency":
            return LatencyTopic(parts[1])
        if parts[0] == "data" and len(parts) == 3 and parts[2] == "busy":
            return BusyTopic(parts[1])
        if parts[0] == "data" and len(parts) == 3 and parts[2] == "trace":
            return TraceTopic(parts[1])
        if parts[0] == "data" and len(parts) == 3 and parts[2] == "spans":
            return SpansTopic(parts[1])
        if parts[0] == "blob" and len(parts) == 3 and parts[2].isdigit():
            return BlobTopic(parts[1], int(parts[2]))
        raise ProtocolError(f"topic {topic!r}: unknown topic")
