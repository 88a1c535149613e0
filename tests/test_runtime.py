"""The daemon's pure parts: input buffers, assignments and weight blobs, and whole plans run by
per-node runtimes that exchange only encoded frames (in-memory channels, no broker)."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from controller.control.deployment import Deployment, make_deployment
from controller.control.verify import TOLERANCE, reference_outputs, relative_error
from controller.graph.trace import trace_model
from controller.planner.partitions import random_partition
from controller.planner.plan import build_plan
from controller.zoo import build_model
from edgeflowd.core.ops import Const, OpCall, Prev
from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import height_of, run_layer_rows
from edgeflowd.errors import ProtocolError
from edgeflowd.node.assignments import Activate, Assignments, Report
from edgeflowd.node.in_memory import run_request
from edgeflowd.node.runtime import Dropped, NodeRuntime
from edgeflowd.node.slices import BufferFullError, Need, SliceBuffer, output_needs
from edgeflowd.node.weights import WeightFetch, WeightStore
from edgeflowd.wire.assignment import Assignment, blob_of, split_blob
from edgeflowd.wire.frames import FrameKeys, encode_frames
from edgeflowd.wire.messages import PlanInfo
from edgeflowd.wire.topics import ResultTopic, Topics, UnitInputTopic
from edgeflowd.wire.units import unit_of

SHAPE = (1, 2, 6, 3)


def _buffer(max_bytes: int = 1 << 20) -> SliceBuffer:
    needs = {"u@d0": [Need("a", RowRange(0, 6), SHAPE), Need("b", RowRange(2, 4), SHAPE)]}
    return SliceBuffer(needs, max_bytes=max_bytes, ttl_s=10.0)


def _rows(t: torch.Tensor, rows: RowRange) -> torch.Tensor:
    return t[:, :, rows.start : rows.stop]


def test_slice_buffer_fires_once_every_row_has_arrived_in_any_order() -> None:
    a, b = torch.randn(SHAPE), torch.randn(SHAPE)
    box = _buffer()
    assert box.add("r1", "u@d0", "a", RowRange(3, 6), _rows(a, RowRange(3, 6)), 0.0, "t") is None
    assert box.add("r1", "u@d0", "b", RowRange(2, 4), _rows(b, RowRange(2, 4)), 0.0, "t") is None
    assert box.missing("r1", "u@d0") == ["a rows [0,6) (3 of 6 arrived)"]
    got = box.add("r1", "u@d0", "a", RowRange(0, 3), _rows(a, RowRange(0, 3)), 0.0, "t")
    assert got is not None
    assert torch.equal(got[0], a) and torch.equal(got[1], _rows(b, RowRange(2, 4)))
    assert box.pending == 0 and box.held_bytes == 0


@pytest.mark.parametrize(
    ("consumer", "producer", "rows", "shape", "message"),
    [
        ("v@d0", "a", RowRange(0, 6), SHAPE, "no unit 'v@d0' here"),
        ("u@d0", "c", RowRange(0, 6), SHAPE, "reads no rows of layer 'c'"),
        ("u@d0", "b", RowRange(0, 4), (1, 2, 4, 3), "not among the rows"),
        ("u@d0", "a", RowRange(0, 2), (1, 2, 2, 4), "expected \\(1, 2, 2, 3\\)"),
    ],
)
def test_slice_buffer_refuses_slices_nobody_here_reads(
    consumer: str, producer: str, rows: RowRange, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        _buffer().add("r1", consumer, producer, rows, torch.zeros(shape), 0.0, "t")


def test_slice_buffer_refuses_repeated_rows_and_keeps_what_it_holds() -> None:
    box = _buffer()
    box.add("r1", "u@d0", "a", RowRange(0, 3), torch.zeros(1, 2, 3, 3), 0.0, "t")
    with pytest.raises(ProtocolError, match="arrived twice"):
        box.add("r1", "u@d0", "a", RowRange(2, 4), torch.zeros(1, 2, 2, 3), 0.0, "t")
    assert box.missing("r1", "u@d0")[0] == "a rows [0,6) (3 of 6 arrived)"


def test_slice_buffer_budget_refuses_new_requests_not_old_ones_and_entries_expire() -> None:
    piece = torch.zeros(1, 2, 3, 3)  # 72 bytes
    box = _buffer(max_bytes=100)
    box.add("r1", "u@d0", "a", RowRange(0, 3), piece, 0.0, "t")
    with pytest.raises(BufferFullError, match="request r2"):
        box.add("r2", "u@d0", "a", RowRange(0, 3), piece, 0.0, "t")
    box.add("r1", "u@d0", "a", RowRange(3, 6), piece, 1.0, "t")  # r1 may finish its entry
    assert box.expire(5.0) == []
    assert box.expire(10.5) == [("r1", "u@d0")]
    assert box.held_bytes == 0


def test_blobs_round_trip_and_refuse_bytes_that_do_not_match_their_hash() -> None:
    weight = torch.randn(40, 7)
    ref, raw = blob_of(weight, part_bytes=300)
    parts = split_blob(raw, ref)
    assert ref.parts == len(parts) == 4 and all(len(p) <= 300 for p in parts)
    store = WeightStore()
    fetch = WeightFetch({"w": ref}, store, started=0.0)
    for i in (3, 1, 0):
        assert fetch.add(ref.sha256, i, parts[i], "t") is None
    assert fetch.add("cd" * 32, 0, b"unrelated", "t") is None  # not a blob this fetch wants
    got = fetch.add(ref.sha256, 2, parts[2], "t")
    assert got is not None and torch.equal(got[1], weight) and fetch.done
    bad = WeightFetch({"w": ref}, store=WeightStore(), started=0.0)
    for i, part in enumerate(parts[:-1]):
        bad.add(ref.sha256, i, part, "t")
    with pytest.raises(ProtocolError, match="do not hash"):
        bad.add(ref.sha256, 3, b"\x00" * len(parts[3]), "t")
    with pytest.raises(ProtocolError, match="part 9 of a 4-part blob"):
        bad.add(ref.sha256, 9, b"", "t")


def test_weight_cache_is_used_only_while_it_matches_its_hash(tmp_path: Path) -> None:
    weight = torch.arange(12.0)
    ref, _ = blob_of(weight, 1 << 20)
    WeightStore(tmp_path).put(ref, weight)
    assert torch.equal(WeightStore(tmp_path).get(ref), weight)  # type: ignore[arg-type]
    (tmp_path / ref.sha256).write_bytes(b"\x00" * ref.nbytes)
    assert WeightStore(tmp_path).get(ref) is None
    assert WeightFetch({"w": ref}, WeightStore(tmp_path), 0.0).missing == {ref.sha256: ref}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema="edgeflow.assignment/2"), "Invalid value 'edgeflow.assignment/2'"),
        (lambda d: d.update(generation="7"), "Expected `int`, got `str` - at `\\$.generation`"),
        (lambda d: d["weights"].clear(), "names weights"),
        (lambda d: d.update(device=5), "belongs to device"),
        (lambda d: next(iter(d["weights"].values())).update(sha256="xyz"), "64 lower-case hex"),
        (lambda d: next(iter(d["weights"].values())).update(parts=0), "parts for"),
        (
            lambda d: d["units"][0]["ops"][0].update(target="local.module.evil"),
            "'local.module.evil' is not allow-listed",
        ),
        (lambda d: d["units"][0]["ops"][-1]["kwargs"].update(inplace=True), r"writes in place \(inplace=True\)"),
        (lambda d: d["units"][0]["ops"][-1]["kwargs"].update(out={"$t": next(iter(d["weights"]))}), "writes in place"),
        (lambda d: d["units"][0].update(ops=[]), "has no ops"),
        (
            lambda d: d["units"][0]["ops"].append(
                {"target": "F.relu", "args": {"$tuple": [{"$prev": 0}, True]}, "kwargs": {}, "node": "x"}
            ),
            r"writes in place \(inplace=True\)",
        ),
    ],
)
def test_assignments_round_trip_and_name_the_bad_field(change: object, message: str) -> None:
    deployment, _, _ = _small_deployment(devices=2)
    assignment = deployment.assignments["n0"]
    assert Assignment.from_bytes(assignment.to_bytes(), "t") == assignment
    data = json.loads(assignment.to_bytes())
    change(data)  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=message):
        Assignment.from_bytes(json.dumps(data).encode(), "edgeflow/v2/x/node/n0/assignment")


def _requester_keys(info: PlanInfo) -> FrameKeys:
    """What a requester holds: the request key of the plan summary, no plan key."""
    return FrameKeys(None, bytes.fromhex(info.request_key), unit_of(info.sources[0], "plan").uid)


def _small_deployment(
    devices: int, seed: int = 3, part_bytes: int = 4096
) -> tuple[Deployment, nn.Module, torch.Tensor]:
    model, shape = build_model("small_dag", (1, 3, 40, 40), seed)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    graph = trace_model(model, x, "small_dag")
    plan = build_plan(graph, random_partition(graph, devices, random.Random(seed)))
    nodes = [f"n{d}" for d in range(devices)]
    return make_deployment(plan, graph, nodes, generation=5, method="random", part_bytes=4096), model, x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_node_runtimes_exchanging_only_frames_reproduce_the_model(seed: int) -> None:
    """The daemon's data path without the broker: assignments and weight blobs decoded from their
    bytes, every slice encoded into frames under a small packet limit (so slices travel in
    chunks), carried by the in-memory bus, reassembled, buffered, and firing its unit."""
    deployment, model, x = _small_deployment(devices=3, seed=seed)
    topics = Topics("mem")
    nodes = []
    for node, assignment in deployment.assignments.items():
        decoded = Assignment.from_bytes(assignment.to_bytes(), node)
        store = WeightStore()
        fetch = WeightFetch(decoded.weights, store, 0.0)
        for sha, ref in list(fetch.missing.items()):
            for i, part in enumerate(split_blob(deployment.blobs[sha][1], ref)):
                got = fetch.add(sha, i, part, node)
            assert got is not None
            store.put(*got)
        tensors = {name: store.get(ref) for name, ref in decoded.weights.items()}
        nodes.append(NodeRuntime(decoded.plan, topics, decoded.units, tensors, 1 << 24, 30.0, decoded.keys))  # type: ignore[arg-type]
    info = deployment.info
    sources = [unit_of(u, "plan") for u in info.sources]
    outputs = output_needs([(o.layer, o.shape) for o in info.outputs])
    requester = NodeRuntime(info.plan, topics, sources, {}, 1 << 24, 30.0, _requester_keys(info), outputs=outputs)
    outputs_got, bus = run_request(nodes, requester, x, max_packet=700)
    _, rel = relative_error(outputs_got, reference_outputs(model, x))
    assert rel <= TOLERANCE
    assert bus.messages > sum(len(u.forwards) for n in nodes for u in n.units.values()) / 3  # chunked
    assert all(n.slices.pending == 0 and n.frames.pending == 0 for n in nodes)


def test_the_plan_summary_names_who_sends_each_output_row() -> None:
    """What a requester whose request timed out names: each output's rows, by node and unit."""
    deployment, _, _ = _small_deployment(devices=3)
    for output in deployment.info.outputs:
        rows = sorted((RowRange(*s.rows) for s in output.senders), key=lambda r: r.start)
        assert rows and rows[0].start == 0 and rows[-1].stop == height_of(output.shape)
        assert all(a.stop == b.start for a, b in itertools.pairwise(rows))  # every row once
        for sender in output.senders:
            assert sender.unit in {u.uid for u in deployment.assignments[sender.node].units}


def test_a_requester_buffers_only_the_requests_it_opened() -> None:
    deployment, _, _ = _small_deployment(devices=2)
    info = deployment.info
    topics = Topics("mem")
    sources = [unit_of(u, "plan") for u in info.sources]
    outputs = output_needs([(o.layer, o.shape) for o in info.outputs])
    mine = NodeRuntime(info.plan, topics, sources, {}, 1 << 24, 30.0, _requester_keys(info), outputs=outputs)
    layer, shape = info.outputs[0].layer, info.outputs[0].shape
    rows = RowRange(0, shape[2])
    key = bytes.fromhex(info.request_key)
    frame = encode_frames("other-1", info.plan, "x@d0", layer, rows, torch.zeros(shape), 1 << 20, key)[0]
    result = ResultTopic(info.plan, "other-1")
    assert mine.receive(result, frame, 0.0, "t") == [Dropped("foreign", "t")]
    assert mine.slices.pending == 0
    stale = ResultTopic("g0", "other-1")
    assert mine.receive(stale, frame, 0.0, "t") == [Dropped("stale", "t")]
    with pytest.raises(ProtocolError, match="the topic says 'someone-else'"):
        mine.receive(ResultTopic(info.plan, "someone-else"), frame, 0.0, "t")
    mine.open("other-1")
    taken = mine.receive(result, frame, 0.0, "t")
    assert not any(isinstance(action, Dropped) for action in taken)
    assert taken or mine.slices.pending == 1


def test_a_node_refuses_frames_for_units_it_does_not_run() -> None:
    deployment, _, _ = _small_deployment(devices=2)
    assignment = deployment.assignments["n0"]
    runtime = NodeRuntime(assignment.plan, Topics("mem"), assignment.units, {}, 1 << 20, 30.0, assignment.keys)
    with pytest.raises(ProtocolError, match="no unit 'nobody@d7' here"):
        runtime.receive(UnitInputTopic(assignment.plan, "nobody@d7"), b"", 0.0, "t")


def test_blob_refs_validate_their_fields() -> None:
    ref, _ = blob_of(torch.zeros(3), 1 << 20)
    doc = Assignment(1, "g1", "m", "n0", 0, (), {"w": ref}, FrameKeys.fresh("x@client")).to_bytes()
    with pytest.raises(ProtocolError, match=r"Object missing required field `dtype` - at `\$.weights\[...\]`"):
        Assignment.from_bytes(doc.replace(b'"dtype":"float32",', b""), "t")
    with pytest.raises(ProtocolError, match=r"sha256 must be 64 lower-case hex digits, got 'xyz' - at `\$.weights"):
        Assignment.from_bytes(doc.replace(ref.sha256.encode(), b"xyz"), "t")


def _forged(assignment: Assignment, generation: int, change: object) -> bytes:
    """The node's work of ``assignment`` alone, under ``generation``, its plan changed by ``change``."""
    data = json.loads(assignment.work().to_bytes())
    data["plans"][0]["generation"] = generation
    change(data["plans"][0])  # type: ignore[operator]
    return json.dumps(data).encode()


@pytest.mark.reliability
def test_a_refused_assignment_leaves_the_node_serving_and_its_weights_as_they_were() -> None:
    """The attack of an op that writes into a weight (``F.relu(<weight>, inplace=True)``), then
    the original assignment again: refused at load, it never runs, the weights the node serves
    with stay as they were, and the report says what happened without claiming the refused plan."""
    deployment, _, _ = _small_deployment(devices=2)
    good = deployment.assignments["n0"]
    topics, topic = Topics("x"), "edgeflow/v2/x/node/n0/assignment"
    machine = Assignments("n0", topics, WeightStore(), timeout_s=30.0)
    actions = machine.on_assignment(good.work().to_bytes(), topic, 0.0)
    for sha in good.weights.values():
        ref, raw = deployment.blobs[sha.sha256]
        for part, chunk in enumerate(split_blob(raw, ref)):
            actions += machine.on_blob(ref.sha256, part, chunk, topics.blob(ref.sha256, part))
    activated = [a for a in actions if isinstance(a, Activate)]
    assert activated and machine.current is None  # served only once the daemon's runtime is built
    assert [(r.generation, r.state) for r in machine.activated(good.work()) if isinstance(r, Report)] == [
        (good.generation, "ready")
    ]
    assert machine.current == good.work()
    weights = {name: t.clone() for name, t in activated[0].tensors[good.model].items()}
    weight = next(iter(good.weights))

    def writes_a_weight(d: dict[str, Any]) -> None:
        op = {"target": "F.relu", "args": {"$tuple": [{"$t": weight}]}, "kwargs": {"inplace": True}, "node": "evil"}
        d["units"][0]["ops"].append(op)

    refused = machine.on_assignment(_forged(good, good.generation + 1, writes_a_weight), topic, 1.0)
    assert not any(isinstance(a, Activate) for a in refused)
    (report,) = [a for a in refused if isinstance(a, Report)]
    assert (report.generation, report.state) == (good.generation + 1, "error")
    assert "writes in place" in report.error and f"still serving generation {good.generation}" in report.error
    assert not report.retain  # heard by deploy; the retained report keeps saying what is served
    assert machine.current == good.work()
    again = machine.on_assignment(good.work().to_bytes(), topic, 2.0)  # the original, retained again
    assert [(a.generation, a.state) for a in again if isinstance(a, Report)] == [(good.generation, "ready")]
    assert all(torch.equal(activated[0].tensors[good.model][n], weights[n]) for n in weights)  # nothing wrote to them
    # Bytes that are no assignment at all (nor name a generation) change nothing in the report.
    noise = machine.on_assignment(b"{]", topic, 3.0)
    assert [(a.generation, a.state) for a in noise if isinstance(a, Report)] == [(good.generation, "ready")]
    # An older generation (a broker that lost its state numbers from 1 again) is refused out loud.
    older = machine.on_assignment(_forged(good, good.generation - 1, lambda d: None), topic, 4.0)
    (stale,) = [a for a in older if isinstance(a, Report)]
    assert (stale.generation, stale.state, stale.retain) == (good.generation - 1, "error", False)
    assert f"older than generation {good.generation}" in stale.error and machine.current == good.work()
    # The same generation with a refused content (a broker that lost its state) is not "ready".
    same = machine.on_assignment(_forged(good, good.generation, writes_a_weight), topic, 5.0)
    assert [(a.generation, a.state, a.retain) for a in same if isinstance(a, Report)] == [
        (good.generation, "error", False)
    ]


def test_an_activation_never_overwrites_a_weight_an_op_returned_as_it_is() -> None:
    """The runtime applies activations in place to results it made; an op may hand back one of
    the unit's weights itself (``contiguous`` of a contiguous tensor), which it must not touch."""
    w = torch.randn(1, 2, 3, 3)
    before = w.clone()
    ops = [OpCall("method.contiguous", (Const("w"),)), OpCall("F.relu", (Prev(),))]
    out = run_layer_rows(ops, [], [], [], [], RowRange(0, 3), (1, 2, 3, 3), {"w": w})
    assert torch.equal(out, torch.relu(before)) and torch.equal(w, before)


def test_an_assignment_under_a_generation_already_served_but_other_content_is_taken_not_claimed() -> None:
    """A broker that lost its state, and a deploy of other weights under the same generation: the
    node must not answer "ready" for what it does not run (it did, comparing generations)."""
    deployment, _, _ = _small_deployment(devices=2)
    other, _, _ = _small_deployment(devices=2, seed=4)  # other weights, same generation (5)
    good, changed = deployment.assignments["n0"], other.assignments["n0"]
    assert good.generation == changed.generation and good.weights != changed.weights
    topics, topic = Topics("x"), "edgeflow/v2/x/node/n0/assignment"
    machine = Assignments("n0", topics, WeightStore(), timeout_s=30.0)
    machine.on_assignment(good.work().to_bytes(), topic, 0.0)
    for ref, raw in deployment.blobs.values():
        for part, chunk in enumerate(split_blob(raw, ref)):
            machine.on_blob(ref.sha256, part, chunk, topics.blob(ref.sha256, part))
    machine.activated(good.work())
    assert machine.current == good.work()
    actions = machine.on_assignment(changed.work().to_bytes(), topic, 1.0)
    assert not any(isinstance(a, Report) and a.state == "ready" for a in actions)  # nothing claimed
    assert machine.fetch is not None and machine.fetch[0] == changed.work()  # the new weights are fetched


def test_an_assignment_whose_runtime_cannot_be_built_is_reported_failed_and_the_old_one_served() -> None:
    """The daemon builds the runtime after the weights arrive; when that fails, the node must not
    claim the new generation (it did: the state was committed before the build)."""
    deployment, _, _ = _small_deployment(devices=2)
    other, _, _ = _small_deployment(devices=2, seed=4)
    good, new = deployment.assignments["n0"], replace(other.assignments["n0"], generation=6)
    topics, topic = Topics("x"), "edgeflow/v2/x/node/n0/assignment"
    machine = Assignments("n0", topics, WeightStore(), timeout_s=30.0)
    for assignment, blobs in ((good, deployment.blobs), (new, other.blobs)):
        actions = machine.on_assignment(assignment.work().to_bytes(), topic, 0.0)
        for ref, raw in blobs.values():
            for part, chunk in enumerate(split_blob(raw, ref)):
                actions += machine.on_blob(ref.sha256, part, chunk, topics.blob(ref.sha256, part))
        assert [a.work for a in actions if isinstance(a, Activate)] == [assignment.work()]
        if assignment is good:
            machine.activated(good.work())
    (report,) = [
        a for a in machine.not_activated(new.work(), "no room for the packed weights") if isinstance(a, Report)
    ]
    assert (report.generation, report.state, report.retain) == (6, "error", False)
    assert "no room for the packed weights" in report.error and "still serving generation 5" in report.error
    assert machine.current == good.work()
    assert all(machine.store.get(ref) is not None for ref in good.weights.values())  # the old weights stay
    again = machine.on_assignment(good.work().to_bytes(), topic, 1.0)  # a reconnect replays what is served
    assert [(a.generation, a.state) for a in again if isinstance(a, Report)] == [(5, "ready")]
