"""Tensor frames (pure: no sockets, no clocks).

A tensor frame is ``b"EFF1"`` | header length (uint32, big-endian) | JSON header
(:class:`FrameHeader`) | raw bytes of one chunk of a row slice. Slices larger than the broker's
packet limit travel as several frames (``chunk`` i of n) and are put back together by
:class:`FrameAssembler`, which bounds the bytes it holds and drops partial slices that expire.
Nothing executable crosses the wire.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import torch

from edgeflowd.core.rows import RowRange
from edgeflowd.core.sizes import FRAME_HEADER_BYTES
from edgeflowd.errors import ProtocolError
from edgeflowd.wire.codec import expected_bytes, tensor_bytes, tensor_from_bytes
from edgeflowd.wire.schema import Document, decode, encode

__all__ = ["FRAME_SCHEMA", "Frame", "FrameAssembler", "FrameHeader", "decode_frame", "encode_frames"]

FRAME_SCHEMA = "edgeflow.frame/1"
_MAGIC = b"EFF1"


@dataclass(frozen=True)
class Frame:
    """One chunk of the rows ``rows`` of ``layer``'s output, sent by unit ``source`` for
    ``request`` under plan ``plan``; the whole slice has ``dtype``/``shape`` and ``nbytes``."""

    request: str
    plan: str
    source: str
    layer: str
    rows: RowRange
    dtype: str
    shape: tuple[int, ...]
    chunk: int
    chunks: int
    nbytes: int
    data: bytes | memoryview  # a view into the received payload: slices are not copied twice

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.plan, self.request, self.source, self.layer)


class FrameHeader(Document, frozen=True, tag=FRAME_SCHEMA):
    """What a frame says about the bytes it carries: chunk ``chunk[0]`` of ``chunk[1]`` of rows
    ``rows`` of ``layer`` (``dtype``, whole slice ``shape`` and ``nbytes``), from unit ``source``."""

    request: str
    plan: str
    source: str
    layer: str
    rows: tuple[int, int]
    dtype: str
    shape: tuple[int, ...]
    chunk: tuple[int, int]
    nbytes: int


def encode_frames(
    request: str, plan: str, source: str, layer: str, rows: RowRange, tensor: torch.Tensor, max_packet: int
) -> list[bytes]:
    """Frames carrying ``tensor`` (rows ``rows`` of ``layer``), none larger than ``max_packet``."""
    room = max_packet - FRAME_HEADER_BYTES
    if room <= 0:
        raise ProtocolError(f"packet limit {max_packet} leaves no room for a frame header")
    dtype, shape, raw = tensor_bytes(tensor, f"frame {source}")
    chunks = max(1, math.ceil(len(raw) / room))
    view = memoryview(raw)
    frames = []
    for i in range(chunks):
        header = FrameHeader(
            request, plan, source, layer, (rows.start, rows.stop), dtype, tuple(shape), (i, chunks), len(raw)
        )
        frames.append(_pack(encode(header), view[i * room : (i + 1) * room]))
    return frames


def _pack(header: bytes, body: bytes | memoryview) -> bytes:
    return b"".join([_MAGIC, struct.pack(">I", len(header)), header, body])


def decode_frame(payload: bytes, topic: str = "frame") -> Frame:
    """Parse one frame; anything malformed raises :class:`ProtocolError` naming topic and field."""
    if len(payload) < 8 or payload[:4] != _MAGIC:
        raise ProtocolError(f"{topic}: not an EdgeFlow frame (bad magic)")
    (size,) = struct.unpack(">I", payload[4:8])
    if 8 + size > len(payload):
        raise ProtocolError(f"{topic}: header length {size} exceeds the {len(payload)}-byte payload")
    view = memoryview(payload)
    h = decode(view[8 : 8 + size], FrameHeader, f"{topic}: frame")
    (start, stop), (index, count) = h.rows, h.chunk
    if not 0 <= index < count or h.nbytes < 0 or min(h.shape, default=0) < 0 or stop < start:
        fields = f"chunk {index} of {count}, nbytes {h.nbytes}, shape {h.shape}, rows {h.rows}"
        raise ProtocolError(f"{topic}: frame {fields} are inconsistent")
    if count > max(1, h.nbytes) or (count > 1 and len(payload) == 8 + size):  # empty chunks hold memory uncounted
        raise ProtocolError(f"{topic}: frame announces {count} chunks of {h.nbytes} bytes, or carries none")
    if h.nbytes != expected_bytes(h.dtype, h.shape, f"{topic}: frame"):  # a total that lies is refused here
        raise ProtocolError(f"{topic}: frame field 'nbytes' is {h.nbytes}; shape {list(h.shape)} {h.dtype} is not that")
    return Frame(
        h.request,
        h.plan,
        h.source,
        h.layer,
        RowRange(start, stop),
        h.dtype,
        h.shape,
        index,
        count,
        h.nbytes,
        view[8 + size :],
    )


@dataclass
class _Partial:
    first: Frame
    parts: dict[int, bytes | memoryview]
    started: float
    size: int = 0


@dataclass
class FrameAssembler:
    """Puts chunked slices back together. Holds at most ``max_bytes`` of partial data, counted as
    the chunks that arrived (a chunk that would exceed it is refused with its slice) and forgets
    partial slices older than ``ttl_s``.
    ``now`` is always passed in: the assembler has no clock of its own."""

    max_bytes: int = 256 << 20
    ttl_s: float = 30.0
    held_bytes: int = 0
    _partial: dict[tuple[str, str, str, str], _Partial] = field(default_factory=dict)

    def add(self, frame: Frame, now: float, topic: str = "frame") -> torch.Tensor | None:
        """The whole slice once its last chunk arrives, else None."""
        self.expire(now)
        if frame.chunks == 1:
            return tensor_from_bytes(frame.dtype, list(frame.shape), frame.data, f"{topic}: frame data")
        entry = self._partial.get(frame.key)
        if entry is None:
            if frame.nbytes > self.max_bytes:
                raise ProtocolError(
                    f"{topic}: a {frame.nbytes}-byte slice exceeds the {self.max_bytes}-byte reassembly budget"
                )
            entry = self._partial[frame.key] = _Partial(frame, {}, now)
        first = entry.first
        if (frame.chunks, frame.nbytes, frame.shape, frame.dtype, frame.rows) != (
            first.chunks,
            first.nbytes,
            first.shape,
            first.dtype,
            first.rows,
        ):
            self._drop(frame.key)
            raise ProtocolError(f"{topic}: chunk {frame.chunk} disagrees with chunk {first.chunk} of the same slice")
        if frame.chunk not in entry.parts:
            if entry.size + len(frame.data) > first.nbytes:
                self._drop(frame.key)
                raise ProtocolError(f"{topic}: chunks carry more than the announced {first.nbytes} bytes")
            if self.held_bytes + len(frame.data) > self.max_bytes:
                # What is held is what arrived (a total announced but never sent holds nothing),
                # so the slice that finds the budget full is the one refused, and only it.
                self._drop(frame.key)
                raise ProtocolError(
                    f"{topic}: {len(frame.data)} more bytes would exceed the {self.max_bytes}-byte reassembly budget"
                )
            entry.parts[frame.chunk] = frame.data
            entry.size += len(frame.data)
            self.held_bytes += len(frame.data)
        if len(entry.parts) < first.chunks:
            return None
        self._drop(frame.key)
        data = b"".join(entry.parts[i] for i in range(first.chunks))
        return tensor_from_bytes(first.dtype, list(first.shape), data, f"{topic}: frame data")

    def expire(self, now: float) -> int:
        """Forget partial slices older than ``ttl_s``; returns how many were dropped."""
        old = [key for key, entry in self._partial.items() if now - entry.started > self.ttl_s]
        for key in old:
            self._drop(key)
        return len(old)

    def forget(self, request: str) -> None:
        """Drop every partial slice of ``request`` (given up on)."""
        for key in [key for key in self._partial if key[1] == request]:
            self._drop(key)

    def _drop(self, key: tuple[str, str, str, str]) -> None:
        entry = self._partial.pop(key, None)
        if entry is not None:
            self.held_bytes -= entry.size

    @property
    def pending(self) -> int:
        return len(self._partial)
