"""Admission control (edgeflowd/node/admission.py and the node runtime): a node holds at most as
many requests as it admits, a request is admitted whole or refused at once, and a refusal frees
the request on every node and reaches its requester. Pure: node runtimes over the in-memory bus."""

from __future__ import annotations

import random

import pytest
import torch

from controller.control.deployment import Deployment, make_deployment
from controller.control.rollout import Rollout, completion_messages
from controller.control.verify import TOLERANCE, reference_outputs, relative_error
from controller.graph.trace import trace_model
from controller.planner.partitions import random_partition
from controller.planner.plan import build_plan
from controller.zoo import build_model
from edgeflowd.errors import ProtocolError
from edgeflowd.net.memory import MemoryBus
from edgeflowd.node.admission import Admission, Verdict
from edgeflowd.node.in_memory import subscribe
from edgeflowd.node.runtime import Complete, Deliver, Dropped, NodeRuntime, Publish, carry_out
from edgeflowd.node.slices import output_needs
from edgeflowd.wire.frames import FrameKeys, pack_frame
from edgeflowd.wire.messages import AssignmentReport, Busy, PlanInfo, decode_control, encode_control
from edgeflowd.wire.topics import BusyTopic, Topics, UnitInputTopic
from edgeflowd.wire.units import unit_of


def test_admission_holds_at_most_its_limit_and_remembers_what_it_refused() -> None:
    book = Admission(limit=2, units=3, ttl_s=10.0)
    assert book.admit("r1", 0.0) is Verdict.NEW
    assert book.admit("r1", 0.1) is Verdict.ADMITTED
    assert book.admit("r2", 0.2) is Verdict.NEW
    assert book.admit("r3", 0.3) is Verdict.REFUSED
    assert book.admit("r3", 0.4) is Verdict.GONE  # its later frames are dropped, not admitted
    for _ in range(3):
        book.ran("r1", 1.0)
    assert book.held == 1
    assert book.admit("r1", 1.1) is Verdict.GONE  # finished: a late or repeated frame is not a new request
    assert book.admit("r4", 1.2) is Verdict.NEW
    assert book.drop("r2", 1.3) and not book.drop("r9", 1.3)
    assert book.admit("r5", 1.4) is Verdict.NEW
    assert book.expire(11.5) == ["r4", "r5"]  # held longer than the TTL: given up on
    assert book.held == 0
    book.expire(30.0)
    assert book.admit("r3", 30.0) is Verdict.NEW  # forgotten once no frame of it can be on the way


def test_admission_remembers_a_bounded_number_of_requests() -> None:
    book = Admission(limit=1, units=1, ttl_s=1e9, remember=100)
    book.admit("held", 0.0)
    for i in range(10_000):
        assert book.admit(f"flood-{i}", 0.0) is Verdict.REFUSED
    assert len(book._gone) == 100
    with pytest.raises(ValueError, match="at least one request"):
        Admission(limit=0, units=1, ttl_s=1.0)


def _deployment() -> tuple[Deployment, torch.nn.Module, tuple[int, ...]]:
    model, shape = build_model("small_dag", (1, 3, 40, 40), 3)
    graph = trace_model(model, torch.zeros(shape), "small_dag")
    plan = build_plan(graph, random_partition(graph, 2, random.Random(3)))
    return make_deployment(plan, graph, ["n0", "n1"], generation=5, method="random", part_bytes=4096), model, shape


def _two_nodes(
    admit: int, max_bytes: int = 1 << 24
) -> tuple[list[NodeRuntime], NodeRuntime, torch.nn.Module, tuple[int, ...]]:
    deployment, model, shape = _deployment()
    topics, tensors = Topics("mem"), dict(model.state_dict())
    nodes = [
        NodeRuntime(
            a.plan, topics, a.units, {k: tensors[k] for k in a.weights}, max_bytes, 30.0, a.keys, admit=admit, node=n
        )
        for n, a in deployment.assignments.items()
    ]
    info = deployment.info
    sources = [unit_of(u, "plan") for u in info.sources]
    outputs = output_needs([(o.layer, o.shape) for o in info.outputs])
    keys = FrameKeys(None, bytes.fromhex(info.request_key), sources[0].uid)
    requester = NodeRuntime(info.plan, topics, sources, {}, 1 << 24, 30.0, keys, outputs=outputs)
    return nodes, requester, model, shape


def _serve(nodes: list[NodeRuntime], requester: NodeRuntime) -> tuple[MemoryBus, list[Complete], list[Busy]]:
    bus, done, refusals = MemoryBus(), list[Complete](), list[Busy]()
    for runtime in [*nodes, requester]:
        subscribe(bus, runtime, 1 << 20, done)
    busy = requester.topics.busy(requester.plan)
    bus.subscribe(busy, lambda topic, payload: refusals.append(decode_control(payload, topic, Busy)))
    return bus, done, refusals


def test_a_node_at_its_limit_refuses_a_new_request_whole_and_every_node_drops_it() -> None:
    """Three requests at once to nodes that admit one each: the first completes exactly; the
    others are refused as soon as their first rows reach a node that holds the first; every
    node drops them (nothing is held once the bus is quiet); the next request is admitted."""
    nodes, requester, model, shape = _two_nodes(admit=1)
    bus, done, refusals = _serve(nodes, requester)
    inputs = {f"r{i}": torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in (1, 2, 3)}
    for request, x in inputs.items():
        done += carry_out(requester, requester.send(request, x, 1 << 20), bus.publish, 0.0, 1 << 20)
    bus.run(100_000)
    completed = {c.request: c.outputs for c in done}
    refused = {b.request for b in refusals}
    assert set(completed) == {"r1"} and refused == {"r2", "r3"}, (set(completed), refusals)
    assert relative_error(completed["r1"], reference_outputs(model, inputs["r1"]))[1] <= TOLERANCE
    assert all("holds 1 requests, as many as it admits" in b.reason and b.node in ("n0", "n1") for b in refusals)
    for node in nodes:
        assert node.slices.pending == 0 and node.frames.pending == 0 and node.slices.held_bytes == 0
        assert node.admission is not None and node.admission.held == 0
    for request in ("r2", "r3"):
        requester.close(request)
    x = torch.randn(shape)
    done += carry_out(requester, requester.send("r4", x, 1 << 20), bus.publish, 0.0, 1 << 20)
    bus.run(100_000)
    assert (
        relative_error(next(c.outputs for c in done if c.request == "r4"), reference_outputs(model, x))[1] <= TOLERANCE
    )


def test_a_request_with_no_room_for_its_rows_is_refused_and_its_later_frames_dropped() -> None:
    nodes, requester, _, shape = _two_nodes(admit=4, max_bytes=64)  # no input slice fits
    node = nodes[0]
    frames = [a for a in requester.send("r1", torch.randn(shape), 1 << 20) if isinstance(a, Publish)]
    inputs = {node.topics.unit_input(node.plan, uid) for uid in node.units}
    mine = [f for f in frames if f.topic in inputs]
    assert mine, "fixture: n0 must read the model input"
    about = node.topics.parse(mine[0].topic)
    assert isinstance(about, UnitInputTopic)
    actions = node.receive(about, mine[0].payload, 0.0, mine[0].topic)
    busy = [a for a in actions if isinstance(a, Publish)]
    assert len(busy) == 1 and busy[0].topic == node.topics.busy(node.plan)
    refusal = decode_control(busy[0].payload, busy[0].topic, Busy)
    assert refusal.request == "r1" and "had no room for its rows" in refusal.reason
    assert Dropped("refused", node.topics.busy(node.plan)) in actions
    assert node.receive(about, mine[0].payload, 0.1, mine[0].topic) == [Dropped("dropped", mine[0].topic)]
    assert node.slices.held_bytes == 0 and node.admission is not None and node.admission.held == 0


def test_a_first_frame_refused_as_malformed_holds_no_place_and_a_dropped_request_is_not_buffered_again() -> None:
    nodes, requester, _, shape = _two_nodes(admit=1)
    node = nodes[0]
    frames = [a for a in requester.send("r1", torch.randn(shape), 1 << 20) if isinstance(a, Publish)]
    inputs = {node.topics.unit_input(node.plan, uid) for uid in node.units}
    first = next(f for f in frames if f.topic in inputs)
    about = node.topics.parse(first.topic)
    assert isinstance(about, UnitInputTopic)
    header = first.payload[40 : 40 + int.from_bytes(first.payload[36:40], "big")]
    short = pack_frame(header, first.payload[40 + len(header) : -4], node.keys.request)  # a key holder's, cut short
    with pytest.raises(ProtocolError, match="needs"):
        node.receive(about, short, 0.0, first.topic)
    assert node.admission is not None and node.admission.held == 0  # the next request is admitted
    assert not any(isinstance(a, Publish) for a in node.receive(about, first.payload, 0.1, first.topic))
    assert node.admission.held == 1
    node.refused(BusyTopic(node.plan), encode_control(Busy("r1", "n1", "test")), 0.2, "t")  # dropped meanwhile
    unit = node.units[about.unit]
    late = Deliver("r1", unit.uid, unit.inputs[0].producer, unit.inputs[0].rows, torch.zeros(1))
    assert node.deliver(late, 0.3) == [Dropped("dropped", "local")]  # a worker's slice: not buffered again
    assert node.slices.pending == 0


def test_the_plan_admits_the_fewest_requests_any_of_its_nodes_holds() -> None:
    deployment, _, _ = _deployment()
    rollout = Rollout(deployment, 0.0, 60.0)
    rollout.on_report("n0", AssignmentReport(5, "ready", admits=8))
    assert rollout.admits == 0  # n1 has not said
    rollout.on_report("n1", AssignmentReport(5, "ready", admits=3))
    assert rollout.admits == 3
    summary = completion_messages(Topics("mem"), deployment, None, admits=rollout.admits)[0]
    info = decode_control(summary.payload, summary.topic, PlanInfo)
    assert info.admits == 3 and info.request_key == deployment.info.request_key
