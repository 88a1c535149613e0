"""Tensor frames (pure: no sockets, no clocks).

A tensor frame is ``b"EFF1"`` | header length (uint32, big-endian) | JSON header | raw bytes of
one chunk of a row slice. Slices larger than the broker's packet limit travel as several frames
(``chunk`` i of n) and are put back together by :class:`FrameAssembler`, which bounds the bytes it
holds and drops partial slices that expire. Nothing executable crosses the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from edgeflowd.core.rows import RowRange
from edgeflowd.core.sizes import FRAME_HEADER_BYTES
from edgeflowd.errors import ProtocolError
from edgeflowd.wire.codec import pack_envelope, tensor_bytes, tensor_from_bytes, unpack_envelope

__all__ = ["FRAME_SCHEMA", "Frame", "FrameAssembler", "decode_frame", "encode_frames"]

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
        header = {
            "schema": FRAME_SCHEMA,
            "request": request,
            "plan": plan,
            "source": source,
            "layer": layer,
            "rows": rows.to_json(),
            "dtype": dtype,
            "shape": shape,
            "chunk": [i, chunks],
            "nbytes": len(raw),
        }
        frames.append(pack_envelope(_MAGIC, header, view[i * room : (i + 1) * room]))
    return frames


def _field(header: dict[str, Any], name: str, kind: type, topic: str) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"{topic}: frame field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def decode_frame(payload: bytes, topic: str = "frame") -> Frame:
    """Parse one frame; anything malformed raises :class:`ProtocolError` naming topic and field."""
    header, body = unpack_envelope(payload, _MAGIC, "frame", topic)
    if not isinstance(header, dict) or header.get("schema") != FRAME_SCHEMA:
        raise ProtocolError(f"{topic}: frame field 'schema' must be {FRAME_SCHEMA!r}")
    chunk = _field(header, "chunk", list, topic)
    shape = _field(header, "shape", list, topic)
    try:
        rows = RowRange.from_json(header.get("rows"))
        index, count = (int(v) for v in chunk)
        dims = tuple(int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{topic}: frame fields 'rows', 'chunk', 'shape' must be integer lists: {exc}") from exc
    nbytes = _field(header, "nbytes", int, topic)
    if not 0 <= index < count or nbytes < 0 or min(dims, default=0) < 0:
        raise ProtocolError(f"{topic}: frame chunk {index} of {count}, nbytes {nbytes}, shape {dims} are inconsistent")
    return Frame(
        request=_field(header, "request", str, topic),
        plan=_field(header, "plan", str, topic),
        source=_field(header, "source", str, topic),
        layer=_field(header, "layer", str, topic),
        rows=rows,
        dtype=_field(header, "dtype", str, topic),
        shape=dims,
        chunk=index,
        chunks=count,
        nbytes=nbytes,
        data=body,
    )


@dataclass
class _Partial:
    first: Frame
    parts: dict[int, bytes | memoryview]
    started: float
    size: int = 0


@dataclass
class FrameAssembler:
    """Puts chunked slices back together. Holds at most ``max_bytes`` of partial data (a new
    slice that would exceed it is refused) and forgets partial slices older than ``ttl_s``.
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
            if self.held_bytes + frame.nbytes > self.max_bytes:
                raise ProtocolError(
                    f"{topic}: {frame.nbytes} more bytes would exceed the {self.max_bytes}-byte reassembly budget"
                )
            entry = self._partial[frame.key] = _Partial(frame, {}, now)
            self.held_bytes += frame.nbytes
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
            entry.parts[frame.chunk] = frame.data
            entry.size += len(frame.data)
        if entry.size > first.nbytes:
            self._drop(frame.key)
            raise ProtocolError(f"{topic}: chunks carry more than the announced {first.nbytes} bytes")
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

    def _drop(self, key: tuple[str, str, str, str]) -> None:
        entry = self._partial.pop(key, None)
        if entry is not None:
            self.held_bytes -= entry.first.nbytes

    @property
    def pending(self) -> int:
        return len(self._partial)
