"""Several models on one cluster: one controller keeps a plan per model (its own generation and
topics) on the same three daemons, each node's one retained assignment carries both, requests
to both are exact at once, and both are re-planned when a node leaves."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import cast

import msgspec
import pytest
import torch

from controller.cli.main import main
from controller.control.deployment import Deployment, make_deployment
from controller.control.learning import PLANS_KEPT, CostLearner, LatencyBook
from controller.control.rollout import Rolling, Rollout, completion_messages
from controller.control.served import Served, live_works, memory_left, running_works
from controller.graph.layers import LayerGraph
from controller.graph.trace import trace_model
from controller.lab.launch import controller_process
from controller.planner.methods import plan_model
from controller.planner.methods.evaluate import memory_used
from controller.planner.plan import Plan
from controller.zoo import build_model
from edgeflowd.errors import ProtocolError
from edgeflowd.net.mqtt import Connection, listen, received
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.node.assignments import Activate, AssignmentAction, Assignments, Report
from edgeflowd.node.config import DaemonConfig
from edgeflowd.node.daemon import Daemon
from edgeflowd.node.weights import WeightStore
from edgeflowd.profiles.devices import load_cluster
from edgeflowd.wire.assignment import NodeWork, blob_of, split_blob, tensor_of_blob
from edgeflowd.wire.messages import AssignmentReport, PlanInfo, decode_control
from edgeflowd.wire.topics import Topics
from tests.cluster import DaemonProcess, Watcher, count_exact, mosquitto_broker, run_cli

NODES = ("node-a", "node-b", "node-c")
MODELS = ("resnet18", "small_dag")


def test_each_model_is_planned_on_the_memory_the_others_leave() -> None:
    """The second model's cluster has each node's budget less what the first one's live plan keeps
    there (weights and output rows)."""
    cluster = load_cluster("local-3")
    model, shape = build_model("small_dag", None, 0)
    graph = trace_model(model, torch.zeros(shape), "small_dag")
    planned = plan_model(graph, cluster, "equal", deployable=True)
    nodes = [d.id for d in cluster.devices]
    deployment = make_deployment(planned.plan, graph, nodes, 4, "equal", 1 << 20)
    first = Served("small_dag", graph)
    first.live = Rolling(Rollout(deployment, 0.0, 10.0), "start", cluster, planned, 0.0, cluster)
    left = memory_left(cluster, [first, Served("other", graph)])  # a model not yet live takes nothing
    used = memory_used(planned.plan, graph)
    assert all(u > 0 for u in used)
    for before, after, taken in zip(cluster.devices, left.devices, used, strict=True):
        assert after.profile.memory_mb == pytest.approx(before.profile.memory_mb - taken / 2**20)


def _plans(watcher: Watcher) -> dict[str, PlanInfo]:
    plans = {}
    for model in MODELS:
        payload = watcher.last.get(f"{watcher.root}/controller/plan/{model}", b"")
        if payload:
            plans[model] = decode_control(payload, "plan", PlanInfo)
    return plans


def _plans_on(watcher: Watcher, nodes: set[str], newer: dict[str, int], timeout_s: float) -> dict[str, PlanInfo]:
    """Both models' plans on ``nodes``, each of a generation above ``newer``'s."""

    def done(last: dict[str, bytes]) -> bool:
        plans = _plans(watcher)
        return len(plans) == len(MODELS) and all(
            set(p.nodes) == nodes and p.generation > newer.get(m, 0) for m, p in plans.items()
        )

    watcher.wait_for(f"a plan of each model on {sorted(nodes)}", done, timeout_s=timeout_s)
    return _plans(watcher)


def _exact_at_once(url: str, n: int) -> dict[str, int]:
    """``n`` requests to each model, both models' requests in flight together: how many were exact."""
    good: dict[str, int] = {}
    built = {spec: build_model(spec, None, 0) for spec in MODELS}  # one at a time: seeding is global

    def run(spec: str) -> None:
        good[spec] = count_exact(url, "local-3", spec, n, built[spec])

    threads = [threading.Thread(target=run, args=(spec,)) for spec in MODELS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return good


def _retained_blobs(broker: BrokerSettings, cluster: str) -> set[str]:
    """The hashes of the weight blobs the broker holds for ``cluster``."""
    conn, messages = listen(broker, "blob-check", [f"{Topics(cluster).root}/blob/#"])
    try:
        return {topic.split("/")[-2] for topic, payload in received(messages, 1.5) if payload}
    finally:
        conn.stop()


def _works(watcher: Watcher) -> Iterator[tuple[str, NodeWork]]:
    for node in NODES:
        payload = watcher.payload(node, "assignment")
        if payload:
            yield node, NodeWork.from_bytes(payload, node)


@pytest.mark.integration
def test_two_models_on_three_daemons_each_exact_and_each_replanned_when_a_node_leaves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = [arg for spec in MODELS[1:] for arg in ("--model", spec)]
    with mosquitto_broker(tmp_path) as broker, ExitStack() as stack:
        daemons = {n: DaemonProcess(n, broker.url, "local-3", tmp_path, "--profile", "local-core") for n in NODES}
        for daemon in daemons.values():
            stack.callback(daemon.terminate)
        # A model deployed by hand before the controller, which does not serve it: taken off the nodes.
        deploy = ["deploy", "--model", "tiny_chain", "--cluster", "local-3", "--broker", broker.url, "--timeout", "120"]
        code, out = run_cli(capsys, *deploy, "--method", "equal")
        assert code == 0, out
        with (
            controller_process(broker, tmp_path, "local-3", MODELS[0], *models, "--method", "equal"),
            closing(Watcher(broker.settings, "local-3")) as watcher,
        ):
            first = _plans_on(watcher, set(NODES), {"tiny_chain": 1}, 180)
            assert not watcher.last.get(f"{watcher.root}/controller/plan/tiny_chain")  # cleared: not served
            # ... and so are its weights, but for those a served model uses too.
            served_blobs = {sha for p in first.values() for sha in p.blobs}
            retained = _retained_blobs(broker.settings, "local-3")
            assert served_blobs <= retained
            assert not (set(_deployment("tiny_chain", 1).blobs) - served_blobs) & retained
            assert len({p.generation for p in first.values()}) == len(MODELS)  # each its own generation
            assert len({p.plan for p in first.values()}) == len(MODELS)  # and its own data topics
            watcher.wait_for(
                "every node serving both plans",
                lambda last: (
                    all(
                        {m: a.generation for m, a in work.plans.items()} == {m: p.generation for m, p in first.items()}
                        for _, work in _works(watcher)
                    )
                    and len(list(_works(watcher))) == len(NODES)
                ),
                timeout_s=60,
            )
            report = decode_control(watcher.payload("node-a", "assignment/reported"), "report", AssignmentReport)
            assert set(report.models) == set(MODELS), report
            assert _exact_at_once(broker.url, 3) == dict.fromkeys(MODELS, 3)

            assert main(["status", "--broker", broker.url, "--cluster", "local-3"]) == 0
            table = capsys.readouterr().out
            for model, plan in first.items():
                assert re.search(rf"^plan {plan.plan}: {model} with equal on node-a, node-b, node-c", table, re.M)

            killed = time.monotonic()
            daemons["node-b"].kill()
            generations = {m: p.generation for m, p in first.items()}
            second = _plans_on(watcher, {"node-a", "node-c"}, generations, 90)
            took = time.monotonic() - killed
            plans = {m: f"{first[m].plan} -> {p.plan}" for m, p in second.items()}
            print(f"both models re-planned around node-b {took:.1f} s after its kill: {plans}")  # pytest -s
            assert _exact_at_once(broker.url, 3) == dict.fromkeys(MODELS, 3)


def _deployment(spec: str, generation: int) -> Deployment:
    cluster = load_cluster("local-3")
    model, shape = build_model(spec, None, 0)
    graph = trace_model(model, torch.zeros(shape), spec)
    planned = plan_model(graph, cluster, "equal", deployable=True)
    return make_deployment(planned.plan, graph, [d.id for d in cluster.devices], generation, "equal", 1 << 20)


def test_a_node_work_holds_one_plan_per_model_and_refuses_clashes() -> None:
    dag, chain = _deployment("small_dag", 4), _deployment("tiny_chain", 5)
    work = dag.assignments["node-a"].work().replace(chain.assignments["node-a"], "tiny_chain")
    assert work.generation == 5 and set(work.plans) == {"small_dag", "tiny_chain"}
    topic = "edgeflow/v2/local-3/node/node-a/assignment"
    assert NodeWork.from_bytes(work.to_bytes(), topic) == work
    assert work.replace(None, "small_dag").replace(None, "tiny_chain").to_bytes() == b""  # nothing: cleared
    data = json.loads(work.to_bytes())
    data["plans"][1]["generation"] = 4  # two plans of one generation: their data topics would meet
    with pytest.raises(ProtocolError, match=r"\$.plans\[1\].generation: 4 is also that of the plan of 'small_dag'"):
        NodeWork.from_bytes(json.dumps(data).encode(), topic)
    data["plans"][1] = data["plans"][0]
    with pytest.raises(
        ProtocolError, match=r"\$.plans\[1\].model: 'small_dag' is also that of the plan of 'small_dag'"
    ):
        NodeWork.from_bytes(json.dumps(data).encode(), topic)
    data = json.loads(work.to_bytes())
    data["plans"][0]["node"] = "node-b"
    with pytest.raises(ProtocolError, match=r"\$.plans\[0\]: assignment is for node 'node-b', not 'node-a'"):
        NodeWork.from_bytes(json.dumps(data).encode(), topic)


def test_a_node_fetches_the_weights_of_every_model_and_replaces_one_plan_alone() -> None:
    """Both models' weights are fetched before the work is activated; a re-plan of one model
    hands the other's assignment on unchanged, and only the new model's weights are fetched."""
    dag, chain = _deployment("small_dag", 4), _deployment("tiny_chain", 5)
    topics = Topics("local-3")
    topic = topics.node("node-a", "assignment")
    machine = Assignments("node-a", topics, WeightStore(), timeout_s=30.0)
    work = dag.assignments["node-a"].work().replace(chain.assignments["node-a"], "tiny_chain")

    def fetched(actions: list[AssignmentAction], *deployments: Deployment) -> list[AssignmentAction]:
        for deployment in deployments:
            for ref, raw in deployment.blobs.values():
                for part, chunk in enumerate(split_blob(raw, ref)):
                    actions += machine.on_blob(ref.sha256, part, chunk, topics.blob(ref.sha256, part))
        return actions

    actions = fetched(machine.on_assignment(work.to_bytes(), topic, 0.0), dag)
    assert not any(isinstance(a, Activate) for a in actions)  # the second model's weights are missing
    (activate,) = [a for a in fetched(actions, chain) if isinstance(a, Activate)]
    assert activate.work == work and set(activate.tensors) == {"small_dag", "tiny_chain"}
    assert set(activate.tensors["small_dag"]) == set(dag.assignments["node-a"].weights)
    assert [(r.generation, r.state) for r in machine.activated(work) if isinstance(r, Report)] == [(5, "ready")]
    again = _deployment("tiny_chain", 6)  # a re-plan of one model: the same weights, nothing to fetch
    replanned = work.replace(again.assignments["node-a"], "tiny_chain")
    (activate,) = [a for a in machine.on_assignment(replanned.to_bytes(), topic, 1.0) if isinstance(a, Activate)]
    assert activate.work is not None and activate.work.plans["small_dag"] == work.plans["small_dag"]
    assert activate.work.generation == 6


def _pair(tmp_path: Path, url: str, stack: ExitStack) -> Path:
    """Two daemons, p1 and p2, of the cluster ``pair`` (stopped with ``stack``); its cluster file."""
    cluster_file = tmp_path / "pair.yaml"
    cluster_file.write_text(
        "schema: edgeflow.cluster/1\nname: pair\ndevices:\n"
        "  - {id: p1, profile: local-core}\n  - {id: p2, profile: local-core}\n"
    )
    for node in ("p1", "p2"):
        stack.callback(DaemonProcess(node, url, "pair", tmp_path).terminate)
    return cluster_file


@pytest.mark.integration
def test_a_deploy_names_the_models_the_cluster_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``edgeflow deploy --model A --model B``: both served, each exact; a later deploy of B alone
    takes A off the nodes and clears its plan summary, so that its requesters are told at once."""
    both = ("small_dag", "tiny_chain")
    with mosquitto_broker(tmp_path) as broker, ExitStack() as stack:
        cluster_file = _pair(tmp_path, broker.url, stack)
        deploy = [
            "deploy",
            "--cluster",
            str(cluster_file),
            "--broker",
            broker.url,
            "--method",
            "equal",
            "--timeout",
            "120",
        ]
        infer = ["infer", "--cluster", "pair", "--broker", broker.url, "--check", "--plan-wait", "2"]
        code, out = run_cli(capsys, *deploy, "--model", both[0], "--model", both[1])
        assert code == 0 and "generation 1 (plan g1) ready" in out and "generation 2 (plan g2) ready" in out, out
        for spec in both:
            code, out = run_cli(capsys, *infer, "--model", spec)
            assert code == 0 and "(tolerance 0.0001): ok" in out, out
        code, out = run_cli(capsys, "status", "--cluster", str(cluster_file), "--broker", broker.url)
        assert (
            code == 0 and re.search(r"^plan g1: small_dag", out, re.M) and re.search(r"^plan g2: tiny_chain", out, re.M)
        )
        code, out = run_cli(capsys, *deploy, "--model", both[1])
        assert code == 0, out
        code, out = run_cli(capsys, *infer, "--model", both[1])
        assert code == 0 and "(tolerance 0.0001): ok" in out, out
        code, out = run_cli(capsys, *infer, "--model", both[0])
        assert code == 2 and "no plan of small_dag is deployed" in out, out


def test_work_that_takes_a_model_off_the_node_is_not_older() -> None:
    """A re-plan of the model with the newest generation may leave a node out: its new work holds
    the other model only, whose generation is lower. That is a removal, not a stale deploy; a plan
    older than the one served for the same model still is refused."""
    dag, chain = _deployment("small_dag", 4), _deployment("tiny_chain", 5)
    topics = Topics("local-3")
    topic = topics.node("node-a", "assignment")
    machine = Assignments("node-a", topics, WeightStore(), timeout_s=30.0)
    both = dag.assignments["node-a"].work().replace(chain.assignments["node-a"], "tiny_chain")
    actions = machine.on_assignment(both.to_bytes(), topic, 0.0)
    for deployment in (dag, chain):
        for ref, raw in deployment.blobs.values():
            for part, chunk in enumerate(split_blob(raw, ref)):
                actions += machine.on_blob(ref.sha256, part, chunk, topics.blob(ref.sha256, part))
    machine.activated(both)
    removed = both.replace(None, "tiny_chain")
    (activate,) = [a for a in machine.on_assignment(removed.to_bytes(), topic, 1.0) if isinstance(a, Activate)]
    assert activate.work == removed and removed.generation == 4
    machine.activated(removed)
    stale = _deployment("small_dag", 3).assignments["node-a"].work()
    (report,) = [a for a in machine.on_assignment(stale.to_bytes(), topic, 2.0) if isinstance(a, Report)]
    assert report.state == "error" and "older than generation 4, which this node serves for small_dag" in report.error


def test_a_live_generation_is_kept_while_another_model_is_replanned_many_times() -> None:
    dag, chain = _deployment("small_dag", 1), _deployment("tiny_chain", 2)
    learner, book = CostLearner(), LatencyBook()
    learner.add_plan(1, dag_plan := _plan_of(dag), _graph("small_dag"), ["node-a", "node-b", "node-c"])
    for generation in range(2, 2 + 3 * PLANS_KEPT):  # the other model, re-planned again and again
        learner.add_plan(generation, _plan_of(chain), _graph("tiny_chain"), ["node-a"], live={1, generation})
        book.add(1, 10.0)  # the stable model keeps serving
        book.add(generation, 20.0)
    assert learner.plans[1][0] is dag_plan and book.median(1) == (10.0, 3 * PLANS_KEPT)
    assert len(learner.plans) == PLANS_KEPT + 2  # the live one, the newest, and the others kept


def test_blobs_another_model_uses_are_not_cleared_with_the_plan_that_used_them() -> None:
    """Weights are content-addressed: two models may hold an identical tensor. A model's new plan
    clears what only its previous plan used, never a blob the other model's plan still needs."""
    old, new, other = _deployment("small_dag", 1), _deployment("small_dag", 3), _deployment("tiny_chain", 2)
    shared_sha = next(iter(other.blobs))
    previous = msgspec.structs.replace(old.info, blobs={**old.info.blobs, shared_sha: other.blobs[shared_sha][0].parts})
    topics = Topics("local-3")
    works = {n: a.work() for n, a in other.assignments.items()}
    cleared = {p.topic for p in completion_messages(topics, new, previous, works=works) if not p.payload}
    assert topics.blob(shared_sha, 0) not in cleared  # the other model's plan uses it
    alone = {p.topic for p in completion_messages(topics, new, previous) if not p.payload}
    assert topics.blob(shared_sha, 0) in alone  # the same message without the other model: cleared
    kept = {p.topic for p in completion_messages(topics, new, previous, keep={shared_sha}) if not p.payload}
    assert topics.blob(shared_sha, 0) not in kept  # named by another model's summary: kept


def _graph(spec: str) -> LayerGraph:
    model, shape = build_model(spec, None, 0)
    return trace_model(model, torch.zeros(shape), spec)


def _plan_of(deployment: Deployment) -> Plan:
    return plan_model(_graph(deployment.info.model), load_cluster("local-3"), "equal", deployable=True).plan


def test_identical_bytes_under_another_shape_are_handed_out_as_each_reference_says() -> None:
    """Blobs are stored by their bytes: two models may hold the same bytes as differently shaped
    (or typed) weights, and each must get its own."""
    store = WeightStore()
    ref, _ = blob_of(torch.zeros(4, 4), 1 << 20)
    store.put(ref, torch.zeros(4, 4))
    flat, _ = blob_of(torch.zeros(16), 1 << 20)
    ints, _ = blob_of(torch.zeros(16, dtype=torch.int32), 1 << 20)
    assert flat.sha256 == ints.sha256 == ref.sha256
    for other in (flat, ints):
        tensor = store.get(other)
        assert tensor is not None and list(tensor.shape) == list(other.shape)
        assert str(tensor.dtype) == f"torch.{other.dtype}" and not tensor.any()


class _Subscriptions:
    """What a daemon's connection was asked to subscribe to and drop (nothing is sent anywhere)."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.dropped: list[str] = []

    def subscribe_wait(self, topics: list[str], qos: int = 0) -> bool:
        self.added += topics
        return True

    def unsubscribe(self, topic: str) -> None:
        self.dropped.append(topic)


def test_a_daemon_keeps_the_runtime_of_the_model_whose_plan_did_not_change() -> None:
    """A re-plan of one model: the other's runtime (with the requests in it) is the same object,
    and only the new plan's input topics are subscribed, the old plan's dropped."""
    dag, chain = _deployment("small_dag", 4), _deployment("tiny_chain", 5)
    daemon = Daemon(DaemonConfig(node_id="node-a", cluster="local-3"))  # built, never connected
    wire = _Subscriptions()
    daemon.conn = cast(Connection, wire)

    def tensors(*deployments: Deployment) -> dict[str, dict[str, torch.Tensor]]:
        return {
            d.info.model: {
                name: tensor_of_blob(ref, dict(enumerate(split_blob(d.blobs[ref.sha256][1], ref))), name)
                for name, ref in d.assignments["node-a"].weights.items()
            }
            for d in deployments
        }

    work = dag.assignments["node-a"].work().replace(chain.assignments["node-a"], "tiny_chain")
    daemon._switch(work, tensors(dag, chain))
    daemon.assignments.current = work
    kept = daemon.runtimes[dag.info.plan]
    assert set(daemon.runtimes) == {dag.info.plan, chain.info.plan}
    again = _deployment("tiny_chain", 6)
    wire.added.clear()
    daemon._switch(work.replace(again.assignments["node-a"], "tiny_chain"), tensors(dag, again))
    assert daemon.runtimes[dag.info.plan] is kept and set(daemon.runtimes) == {dag.info.plan, again.info.plan}
    assert wire.added and all(f"/data/{again.info.plan}/" in t for t in wire.added)
    assert wire.dropped and all(f"/data/{chain.info.plan}/" in t for t in wire.dropped)


@pytest.mark.integration
def test_a_controller_started_over_deployed_models_never_takes_one_off_the_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two models deployed, then a controller started for both (as after a restart): its first
    rollout, of one model, carries the other's plan on as the nodes run it, so that no node is
    ever told to drop a model it serves (its requests would fail until that model's own rollout)."""
    both = ("small_dag", "tiny_chain")
    with mosquitto_broker(tmp_path) as broker, ExitStack() as stack:
        cluster_file = _pair(tmp_path, broker.url, stack)
        deploy = ["deploy", "--cluster", str(cluster_file), "--broker", broker.url, "--timeout", "120"]
        code, out = run_cli(capsys, *deploy, "--method", "equal", "--model", both[0], "--model", both[1])
        assert code == 0, out
        with closing(Watcher(broker.settings, "pair", keep=True)) as watcher:
            watcher.wait_for("both nodes' retained work", lambda last: bool(watcher.payload("p2", "assignment")))
            started = time.monotonic()
            with controller_process(
                broker, tmp_path, str(cluster_file), both[0], "--model", both[1], "--method", "equal"
            ):
                watcher.wait_for(
                    "a plan of each model by the controller (generations above the deploy's 1 and 2)",
                    lambda last: all(
                        (p := last.get(f"{watcher.root}/controller/plan/{m}"))
                        and decode_control(p, "plan", PlanInfo).generation > 2
                        for m in both
                    ),
                    timeout_s=120,
                )
            told = [
                (topic, sorted(NodeWork.from_bytes(payload, topic).plans))
                for topic, payload, at in watcher.seen
                if at > started and topic.endswith("/assignment") and payload
            ]
        assert told, "the controller published no assignment"
        assert all(plans == sorted(both) for _, plans in told), told
        infer = ["infer", "--cluster", "pair", "--broker", broker.url, "--check", "--plan-wait", "2"]
        for spec in both:
            code, out = run_cli(capsys, *infer, "--model", spec)
            assert code == 0 and "(tolerance 0.0001): ok" in out, out


def test_a_rollout_carries_on_only_the_plans_the_nodes_run_of_models_not_rolled_out_here() -> None:
    """A model this controller has not rolled out keeps the plan each node's report confirms; a
    plan a node refused (its report names another generation) is not carried on, nor is one of a
    model whose rollout here failed."""
    dag, chain = _deployment("small_dag", 4), _deployment("tiny_chain", 5)
    assigned = {n: dag.assignments[n].work().replace(chain.assignments[n], "tiny_chain") for n in NODES}
    serves = {"node-a": {"small_dag": 4, "tiny_chain": 5}, "node-b": {"small_dag": 3, "tiny_chain": 5}}
    running = running_works(assigned, serves)
    assert {n: sorted(w.plans) for n, w in running.items()} == {
        "node-a": ["small_dag", "tiny_chain"],
        "node-b": ["tiny_chain"],  # it refused generation 4 of small_dag: still on 3
        "node-c": [],  # no report yet
    }
    served = {spec: Served(spec, _graph(spec)) for spec in ("small_dag", "tiny_chain")}
    carried = live_works(served.values(), running)
    assert {n: sorted(w.plans) for n, w in carried.items()} == {
        "node-a": ["small_dag", "tiny_chain"],
        "node-b": ["tiny_chain"],
    }
    served["small_dag"].published = 6  # a rollout of it here failed: its plan is not carried on
    assert {n: sorted(w.plans) for n, w in live_works(served.values(), running).items()} == {
        "node-a": ["tiny_chain"],
        "node-b": ["tiny_chain"],
    }
