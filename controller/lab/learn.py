"""What a lab (``edgeflow demo``, ``bench/cores.py``) does to plan on what the controller learned:
run the controller while warm-up requests flow, until the cost model it publishes is fitted from
the nodes' real unit times and its plan has settled; then plan any method on that cost model.
A plan made on the nodes' start-up benchmark alone misses what only real work shows (here: the
core that also runs the broker and the requester computes a node's units slower)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from controller.control.learning import device_of_costs
from controller.control.requester import InferenceClient
from controller.graph.layers import LayerGraph
from controller.lab.launch import Broker
from controller.planner.methods import Planned, plan_model, plan_partition
from controller.planner.methods.baselines import single_on
from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.net.mqtt import listen, received
from edgeflowd.profiles.devices import Cluster
from edgeflowd.wire.messages import Costs, Info, PlanInfo, decode_control
from edgeflowd.wire.topics import ControllerTopic, NodeTopic, Topics

__all__ = ["PlaneWatch", "fitted_cluster", "learn_costs", "planned_as_learned", "settled_costs"]

log = logging.getLogger(__name__)


class PlaneWatch:
    """A lab's view of the control plane: the nodes' retained info, the deployed plan and the
    controller's published cost model, as they change."""

    def __init__(self, broker: Broker, cluster: str, model: str) -> None:
        self.topics = Topics(cluster)
        plan, costs = self.topics.controller("plan", model), self.topics.controller("costs", model)
        feeds = [self.topics.node_filter("info"), plan, costs]
        self.conn, self.messages = listen(broker.settings, "edgeflow-lab", feeds)
        self.infos: dict[str, Info] = {}
        self.plan: PlanInfo | None = None
        self.plan_at = 0.0
        self.costs: Costs | None = None

    def close(self) -> None:
        self.conn.stop()

    def poll(self, wait_s: float) -> None:
        for topic, payload in received(self.messages, wait_s):
            if not payload:
                continue
            try:
                about = self.topics.parse(topic)
                if isinstance(about, NodeTopic) and about.leaf == "info":
                    self.infos[about.node] = decode_control(payload, topic, Info)
                elif isinstance(about, ControllerTopic) and about.leaf == "plan":
                    self.plan, self.plan_at = decode_control(payload, topic, PlanInfo), time.monotonic()
                elif isinstance(about, ControllerTopic) and about.leaf == "costs":
                    self.costs = decode_control(payload, topic, Costs)
            except ProtocolError as exc:  # not the lab's to fail on: the controller and nodes judge
                log.warning("ignored: %s", exc)

    def until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise EdgeFlowError(f"{what} did not happen within {timeout_s:g} s")
            self.poll(0.2)

    def measured_since(self, nodes: Sequence[str], since: float) -> bool:
        """Every node has published measurements taken after ``since`` (wall clock)."""
        return all(n in self.infos and float(self.infos[n].benchmark.get("measured_at", 0.0)) > since for n in nodes)

    def settled(self, nodes: Sequence[str], quiet_s: float) -> bool:
        """A plan covers ``nodes`` and none has replaced it for ``quiet_s``."""
        plan = self.plan
        return plan is not None and set(plan.nodes) == set(nodes) and time.monotonic() - self.plan_at >= quiet_s


def learn_costs(
    watch: PlaneWatch, broker: Broker, model_spec: str, inputs: list[torch.Tensor], nodes: Sequence[str]
) -> Costs:
    """Warm-up rounds while the controller runs: their unit times are what it fits the nodes'
    cost models to, and it re-plans when they differ from its plan or when it tries one device
    alone against the split (:mod:`controller.control.alone`). Until the controller has judged the
    live plan on fitted costs and asked for no re-plan after it (at most ten rounds); the last
    published costs."""
    for _ in range(10):
        watch.until(lambda: watch.settled(nodes, 3.0), 300.0, "a settled plan on every node")
        assert watch.plan is not None
        generation = watch.plan.generation
        client = InferenceClient.connect(broker.settings, watch.topics.cluster, model_spec)
        try:
            client.run(iter(inputs[:6]), 1, timeout_s=120.0)
        finally:
            client.close()
        watch.poll(2.5)  # a telemetry report of every node, and a re-plan if the fit asks for one
        if settled_costs(watch.costs, watch.plan, generation):
            break
    if watch.costs is None:
        raise EdgeFlowError("the controller published no cost model")
    return watch.costs


def settled_costs(costs: Costs | None, plan: PlanInfo | None, generation: int) -> bool:
    """The controller's published ``costs`` are final for the plan of ``generation``: it is still the
    live plan, its nodes are fitted, its median was judged and no re-plan followed."""
    if costs is None or plan is None or plan.generation != generation or costs.generation != generation:
        return False
    fitted = all(c.source == "fitted" for c in costs.nodes.values() if c.share > 0)
    return fitted and costs.judged and not costs.replanning


def fitted_cluster(cluster: Cluster, costs: Costs) -> Cluster:
    """``cluster`` with the controller's published cost model for every node it has one for."""
    return cluster.with_devices(
        tuple(device_of_costs(d, costs.nodes[d.id]) if d.id in costs.nodes else d for d in cluster.devices)
    )


def planned_as_learned(
    graph: LayerGraph, learned: Cluster, costs: Costs, method: str, schedule: str = "auto"
) -> Planned:
    """``method``'s plan on the ``learned`` cluster (:func:`fitted_cluster`). EdgeFlow's is the
    controller's: where it measured one node alone faster than the split, that node alone
    (:mod:`controller.control.alone`), as the controller itself would deploy it."""
    names = [d.id for d in learned.devices]
    if method == "edgeflow" and costs.alone in names:
        partition = single_on(graph, learned, names.index(costs.alone))
        return plan_partition(graph, learned, method, partition, schedule=schedule, deployable=True)
    return plan_model(graph, learned, method, schedule=schedule, deployable=True)
