"""The daemon's pure parts: input buffers, assignments and weight blobs, and whole plans run by
per-node runtimes that exchange only encoded frames (in-memory channels, no broker)."""

from __future__ import annotations

import json
import random
from collections import deque
from pathlib import Path

import pytest
import torch
from torch import nn

from controller.deploy import Deployment, make_deployment
from controller.graph.trace import trace_model
from controller.partitions import random_partition
from controller.plan import build_plan
from controller.verify import TOLERANCE, reference_outputs, relative_error
from controller.zoo import build_model
from edgeflowd.assignment import Assignment, BlobRef, blob_of, split_blob
from edgeflowd.errors import ProtocolError
from edgeflowd.inbox import Inbox, InboxFullError, Need
from edgeflowd.protocol import FrameAssembler, Topics, decode_frame
from edgeflowd.rows import RowRange
from edgeflowd.runtime import NodeRuntime, frames_for
from edgeflowd.slicing import take_rows
from edgeflowd.units import SINK, ExecutionUnit
from edgeflowd.weights import WeightFetch, WeightStore

SHAPE = (1, 2, 6, 3)


def _inbox(max_bytes: int = 1 << 20) -> Inbox:
    needs = {"u@d0": [Need("a", RowRange(0, 6), SHAPE), Need("b", RowRange(2, 4), SHAPE)]}
    return Inbox(needs, max_bytes=max_bytes, ttl_s=10.0)


def _rows(t: torch.Tensor, rows: RowRange) -> torch.Tensor:
    return t[:, :, rows.start : rows.stop]


def test_inbox_fires_once_every_row_has_arrived_in_any_order() -> None:
    a, b = torch.randn(SHAPE), torch.randn(SHAPE)
    box = _inbox()
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
def test_inbox_refuses_slices_nobody_here_reads(
    consumer: str, producer: str, rows: RowRange, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        _inbox().add("r1", consumer, producer, rows, torch.zeros(shape), 0.0, "t")


def test_inbox_refuses_repeated_rows_and_keeps_what_it_holds() -> None:
    box = _inbox()
    box.add("r1", "u@d0", "a", RowRange(0, 3), torch.zeros(1, 2, 3, 3), 0.0, "t")
    with pytest.raises(ProtocolError, match="arrived twice"):
        box.add("r1", "u@d0", "a", RowRange(2, 4), torch.zeros(1, 2, 2, 3), 0.0, "t")
    assert box.missing("r1", "u@d0")[0] == "a rows [0,6) (3 of 6 arrived)"


def test_inbox_budget_refuses_new_requests_not_old_ones_and_entries_expire() -> None:
    piece = torch.zeros(1, 2, 3, 3)  # 72 bytes
    box = _inbox(max_bytes=100)
    box.add("r1", "u@d0", "a", RowRange(0, 3), piece, 0.0, "t")
    with pytest.raises(InboxFullError, match="request r2"):
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
        (lambda d: d.update(schema="edgeflow.assignment/2"), "'schema' must be"),
        (lambda d: d.update(generation="7"), "'generation' must be int"),
        (lambda d: d["weights"].clear(), "names weights"),
        (lambda d: d.update(device=5), "belongs to device"),
        (lambda d: next(iter(d["weights"].values())).update(sha256="xyz"), "64 lower-case hex"),
        (lambda d: next(iter(d["weights"].values())).update(parts=0), "parts for"),
    ],
)
def test_assignments_round_trip_and_name_the_bad_field(change: object, message: str) -> None:
    deployment, _, _ = _small_deployment(devices=2)
    assignment = deployment.assignments["n0"]
    assert Assignment.from_bytes(assignment.to_bytes(), "t") == assignment
    data = json.loads(assignment.to_bytes())
    change(data)  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=message):
        Assignment.from_bytes(json.dumps(data).encode(), "edgeflow/v1/x/node/n0/assignment")


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
    """The daemon's data path without the broker: every slice is encoded into frames under a small
    packet limit, decoded, reassembled, buffered, and fires its unit; outputs must match."""
    deployment, model, x = _small_deployment(devices=3, seed=seed)
    blobs = deployment.blobs
    runtimes = {}
    for node, assignment in deployment.assignments.items():
        decoded = Assignment.from_bytes(assignment.to_bytes(), node)
        store = WeightStore()
        fetch = WeightFetch(decoded.weights, store, 0.0)
        for sha, ref in list(fetch.missing.items()):
            for i, part in enumerate(split_blob(blobs[sha][1], ref)):
                got = fetch.add(sha, i, part, node)
            assert got is not None
            store.put(*got)
        tensors = {name: store.get(ref) for name, ref in decoded.weights.items()}
        runtimes[decoded.device] = NodeRuntime(decoded, tensors, 1 << 24, 30.0)  # type: ignore[arg-type]
    topics = Topics("mem")
    info = deployment.info
    wire: deque[tuple[str, bytes]] = deque()
    source = ExecutionUnit.from_json(info.sources[0])
    for fwd in source.forwards:
        wire.extend(frames_for(topics, info.plan, "r1", source, fwd, take_rows(x, fwd.rows, source.rows), 700))
    assemblers = {d: FrameAssembler() for d in [*runtimes, -1]}
    results = Inbox({SINK: [Need(o["layer"], RowRange(0, o["shape"][2]), tuple(o["shape"])) for o in info.outputs]},
                    1 << 24, 30.0)  # fmt: skip
    outputs = None
    for _ in range(10_000):
        if not wire:
            break
        topic, payload = wire.popleft()
        kind, fields = topics.parse(topic)
        frame = decode_frame(payload, topic)
        if kind == "result":
            whole = FrameAssembler().add(frame, 0.0) if frame.chunks == 1 else assemblers[-1].add(frame, 0.0)
            if whole is not None:
                outputs = results.add("r1", SINK, frame.layer, frame.rows, whole, 0.0, topic) or outputs
            continue
        device = int(fields["unit"].rsplit("@d", 1)[1])
        runtime = runtimes[device]
        tensor = assemblers[device].add(frame, 0.0, topic)
        if tensor is None:
            continue
        ready = runtime.accept("r1", fields["unit"], frame.layer, frame.rows, tensor, 0.0, topic)
        work = deque([ready] if ready else [])
        while work:  # units this slice completes, and those their local outputs complete
            done = work.popleft()
            for fwd, piece in runtime.compute(done):
                if runtime.is_local(fwd.consumer):  # the daemon hands these over in-process
                    nxt = runtime.accept("r1", fwd.consumer, done.unit.layer, fwd.rows, piece, 0.0, "local")
                    work.extend([nxt] if nxt else [])
                else:
                    wire.extend(frames_for(topics, info.plan, "r1", done.unit, fwd, piece, 700))
    assert outputs is not None, "the model's outputs never completed"
    _, rel = relative_error(outputs, reference_outputs(model, x))
    assert rel <= TOLERANCE
    assert all(r.inbox.pending == 0 for r in runtimes.values())


def test_blob_refs_validate_their_fields() -> None:
    with pytest.raises(ProtocolError, match="needs sha256"):
        BlobRef.from_json({"sha256": "ab" * 32}, "w")
