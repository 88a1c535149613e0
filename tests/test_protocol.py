"""Topics and tensor frames: round trips, chunking under a packet limit, bounded reassembly, and
malformed input rejected with the topic and field named."""

from __future__ import annotations

import contextlib
import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflowd.core.rows import RowRange
from edgeflowd.errors import ProtocolError
from edgeflowd.wire.frames import Frame, FrameAssembler, FrameKeys, decode_frame, encode_frames, pack_frame
from edgeflowd.wire.topics import BlobTopic, ControllerTopic, NodeTopic, ResultTopic, Topics, UnitInputTopic

T = Topics("lab")
KEYS = FrameKeys.fresh("x@client")
KEY = KEYS.plan or b""


def _decode(payload: bytes, topic: str = "frame") -> Frame:
    return decode_frame(payload, topic, KEYS.to_node)


def test_topics_build_and_parse() -> None:
    cases = {
        T.node("pi4-a", "status"): NodeTopic("pi4-a", "status"),
        T.node("pi4-a", "assignment/reported"): NodeTopic("pi4-a", "assignment/reported"),
        T.controller("plan", "yolov5s"): ControllerTopic("plan", "yolov5s"),
        T.controller("event"): ControllerTopic("event"),
        T.unit_input("g7", "conv1@d2"): UnitInputTopic("g7", "conv1@d2"),
        T.result("g7", "req-9"): ResultTopic("g7", "req-9"),
        T.blob("ab" * 32, 3): BlobTopic("ab" * 32, 3),
    }
    for topic, parsed in cases.items():
        assert topic.startswith("edgeflow/v2/lab/") and T.parse(topic) == parsed


def test_subscription_filters() -> None:
    assert T.blob("ab" * 32, 2) == f"edgeflow/v2/lab/blob/{'ab' * 32}/2"
    assert T.results("g7") == "edgeflow/v2/lab/data/g7/result/+"
    assert T.reports == "edgeflow/v2/lab/node/+/assignment/reported"
    assert T.data_filter("g7") == "edgeflow/v2/lab/data/g7/#"
    with pytest.raises(ProtocolError, match="plan id"):
        T.results("g/7")
    with pytest.raises(ProtocolError, match="one model's: name the model"):
        T.controller("plan")
    with pytest.raises(ProtocolError, match="model name 'a/b' cannot be an MQTT topic level"):
        T.controller("costs", "a/b")


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("edgeflow/v2/other/controller/plan/m", "is not under"),
        ("edgeflow/v2/lab/controller/plan", "unknown topic"),
        ("edgeflow/v2/lab/node/a/secrets", "unknown topic"),
        ("edgeflow/v2/lab/infer/request", "unknown topic"),
    ],
)
def test_unknown_topics_are_refused(topic: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        T.parse(topic)


def test_ids_that_would_break_topics_are_refused() -> None:
    with pytest.raises(ProtocolError, match="cannot be an MQTT topic level"):
        T.node("a/b", "status")
    with pytest.raises(ProtocolError, match="cannot be an MQTT topic level"):
        T.unit_input("g1", "conv+1")


def test_a_slice_round_trips_in_chunks_below_the_packet_limit() -> None:
    x = torch.randn(1, 16, 9, 40)
    frames = encode_frames("r1", "g1", "conv1@d0", "conv1", RowRange(3, 12), x, max_packet=4096, key=KEY)
    assert len(frames) > 1 and all(len(f) <= 4096 for f in frames)
    assembler = FrameAssembler()
    order = list(range(len(frames)))
    random.Random(0).shuffle(order)
    results = [assembler.add(_decode(frames[i]), now=0.0) for i in order]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None and torch.equal(results[-1], x)
    assert assembler.pending == 0 and assembler.held_bytes == 0


def test_duplicate_chunks_are_harmless() -> None:
    x = torch.arange(600.0).view(1, 1, 6, 100)
    frames = encode_frames("r", "g", "u@d0", "u", RowRange(0, 6), x, max_packet=1024, key=KEY)
    assembler = FrameAssembler()
    assert assembler.add(_decode(frames[0]), 0.0) is None
    assert assembler.add(_decode(frames[0]), 0.0) is None
    got = [assembler.add(_decode(f), 0.0) for f in frames[1:]]
    assert got[-1] is not None and torch.equal(got[-1], x)


def test_partial_slices_expire_and_memory_is_bounded_by_what_arrived() -> None:
    x = torch.zeros(1, 4, 8, 64)
    frames = encode_frames("r", "g", "u@d0", "u", RowRange(0, 8), x, max_packet=2048, key=KEY)
    assembler = FrameAssembler(max_bytes=x.numel() * 4, ttl_s=5.0)
    for frame in frames[:-1]:  # all but the last chunk: nearly the whole budget held
        assert assembler.add(_decode(frame), now=0.0) is None
    other = encode_frames("r2", "g", "u@d0", "u", RowRange(0, 8), x, max_packet=2048, key=KEY)
    with pytest.raises(ProtocolError, match="reassembly budget"):
        assembler.add(_decode(other[0]), now=1.0)  # refused: only this slice
    got = assembler.add(_decode(frames[-1]), now=1.0)
    assert got is not None and torch.equal(got, x) and assembler.held_bytes == 0  # the first completes
    assert assembler.add(_decode(other[0]), now=2.0) is None  # room again
    assert assembler.expire(now=10.0) == 1 and assembler.held_bytes == 0


@pytest.mark.reliability
def test_a_slice_that_announces_more_than_it_sends_holds_only_what_arrived() -> None:
    """Three small frames announcing a large slice each used to reserve the whole budget, and
    every real chunked slice was refused until they expired."""
    big = torch.zeros(1, 4, 8, 64)
    budget = 4 * big.numel() * 4
    assembler = FrameAssembler(max_bytes=budget, ttl_s=30.0)
    for request in ("lie-1", "lie-2", "lie-3"):
        first = encode_frames(request, "g", "u@d0", "u", RowRange(0, 8), big, max_packet=1024, key=KEY)[0]
        assert assembler.add(_decode(first), now=0.0) is None
    assert assembler.held_bytes < budget / 10
    real = encode_frames("ok", "g", "u@d0", "u", RowRange(0, 8), big, max_packet=2048, key=KEY)
    results = [assembler.add(_decode(f), now=1.0) for f in real]
    assert results[-1] is not None and torch.equal(results[-1], big)
    huge = torch.zeros(1, 1, 1, 2)
    lying = encode_frames("lie-4", "g", "u@d0", "u", RowRange(0, 1), huge, max_packet=1024, key=KEY)[0]
    header = json.loads(lying[40 : 40 + int.from_bytes(lying[36:40], "big")])
    # Frames a key holder (a node with a bug, or taken over) could sign: the budgets hold all the same.
    header.update(shape=[1, 4096, 4096, 64], nbytes=4 * 4096 * 4096 * 64, chunk=[0, 5000])  # 4 GiB announced
    with pytest.raises(ProtocolError, match=r"exceeds the \d+-byte reassembly budget"):
        assembler.add(_decode(pack_frame(json.dumps(header).encode(), b"\0" * 8, KEY)), now=2.0)
    header.update(shape=[1, 1, 1, 2], nbytes=0)  # 5000 empty chunks: memory held, none counted
    with pytest.raises(ProtocolError, match="announces 5000 chunks of 0 bytes"):
        _decode(pack_frame(json.dumps(header).encode(), b"\0" * 8, KEY))
    header.update(chunk=[0, 1])  # a total that its own shape contradicts
    with pytest.raises(ProtocolError, match=r"field 'nbytes' is 0; shape \[1, 1, 1, 2\] float32 is not that"):
        _decode(pack_frame(json.dumps(header).encode(), b"\0" * 8, KEY))


def test_inconsistent_chunks_are_refused() -> None:
    a = encode_frames("r", "g", "u@d0", "u", RowRange(0, 8), torch.zeros(1, 4, 8, 64), max_packet=2048, key=KEY)
    b = encode_frames("r", "g", "u@d0", "u", RowRange(0, 8), torch.zeros(1, 4, 8, 32), max_packet=2048, key=KEY)
    assembler = FrameAssembler()
    assembler.add(_decode(a[0]), 0.0)
    with pytest.raises(ProtocolError, match="disagrees"):
        assembler.add(_decode(b[1]), 0.0)
    assert assembler.held_bytes == 0


SCHEMA_9 = "Invalid value 'edgeflow.frame/9' - at `\\$.schema`"
REQUEST_INT = "Expected `str`, got `int` - at `\\$.request`"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: b"XXXX" + f[4:], "bad magic"),
        (lambda f: f[:6], "bad magic|exceeds"),
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "frame from unit 'u@d0' refused: its tag does not match"),
        (lambda f: f[:4] + bytes(32) + f[36:], "its tag does not match the plan's key"),
        (
            lambda f: f.replace(b'"schema":"edgeflow.frame/1"', b'"schema":"edgeflow.frame/9"'),
            "Invalid value 'edgeflow.frame/9' - at `\\$.schema`",
        ),
        (lambda f: f.replace(b'"request":"r"', b'"request":7  '), REQUEST_INT),
        (lambda f: f.replace(b'"chunk":[0,1]', b'"chunk":[3,1]'), "chunk 3 of 1"),
        (lambda f: f.replace(b'"dtype":"float32"', b'"dtype":"object" '), "dtype must be one of"),
    ],
)
def test_malformed_frames_name_topic_and_field(mutate: object, message: str) -> None:
    (frame,) = encode_frames("r", "g", "u@d0", "u", RowRange(0, 2), torch.zeros(1, 1, 2, 2), max_packet=4096, key=KEY)
    topic = T.unit_input("g", "v@d1")
    with pytest.raises(ProtocolError, match=message):
        FrameAssembler().add(_decode(mutate(frame), topic), 0.0, topic)  # type: ignore[operator]


def test_truncated_data_is_refused() -> None:
    (frame,) = encode_frames("r", "g", "u@d0", "u", RowRange(0, 2), torch.zeros(1, 1, 2, 2), max_packet=4096, key=KEY)
    with pytest.raises(ProtocolError, match="its tag does not match"):
        _decode(frame[:-4])  # cut on the way
    header = frame[40 : 40 + int.from_bytes(frame[36:40], "big")]
    with pytest.raises(ProtocolError, match="needs 16 bytes, got 12"):  # sent short by a key holder
        FrameAssembler().add(_decode(pack_frame(header, frame[40 + len(header) : -4], KEY)), 0.0)


@pytest.mark.reliability
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        FrameAssembler().add(_decode(data), 0.0)


@pytest.mark.reliability
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=100))
def test_signed_random_headers_and_bodies_only_ever_raise_protocol_errors(header: bytes, body: bytes) -> None:
    """Past the tag, as a key holder could send them: the layout checks and the assembler."""
    with contextlib.suppress(ProtocolError):
        FrameAssembler().add(_decode(pack_frame(header, body, KEY)), 0.0)


@pytest.mark.reliability
def test_frames_are_signed_with_the_key_their_path_needs() -> None:
    """Between nodes the plan key (only nodes hold it); from the requester's source unit and to
    the requester the request key. A requester, holding only the request key, can send inputs and
    check results, but whatever it signs as another unit is refused: it cannot forge a frame
    between nodes."""
    x = torch.zeros(1, 1, 2, 2)
    requester = FrameKeys(None, KEYS.request, KEYS.client)
    (node_frame,) = encode_frames("r", "g", "u@d0", "u", RowRange(0, 2), x, 4096, key=KEY)
    (client_frame,) = encode_frames("r", "g", "x@client", "x", RowRange(0, 2), x, 4096, key=KEYS.request)
    assert _decode(node_frame).source == "u@d0" and _decode(client_frame).source == "x@client"
    (forged,) = encode_frames("r", "g", "u@d0", "u", RowRange(0, 2), x, 4096, key=KEYS.request)
    with pytest.raises(ProtocolError, match="frame from unit 'u@d0' refused: its tag does not match"):
        _decode(forged)  # a requester posing as a node
    with pytest.raises(ProtocolError, match="no key here may sign it"):
        decode_frame(node_frame, "t", requester.to_node)  # a requester cannot even check node frames
    other = FrameKeys.fresh("x@client")  # another plan's keys: a replay from an old generation
    with pytest.raises(ProtocolError, match="its tag does not match"):
        decode_frame(node_frame, "t", other.to_node)
    (relabelled,) = encode_frames("r", "g", "x@client", "conv1", RowRange(0, 2), x, 4096, key=KEYS.request)
    with pytest.raises(ProtocolError, match="frame from unit 'x@client' refused: no key here may sign it"):
        _decode(relabelled)  # a requester passing off a slice of another layer as the model input
    (result,) = encode_frames("r", "g", "fc@d1", "fc", RowRange(0, 2), x, 4096, key=KEYS.request)
    assert decode_frame(result, "t", lambda source: requester.request).source == "fc@d1"
