"""Per-request slice buffers: a unit fires once every row it needs of every producer has arrived.

Pure bookkeeping behind :class:`~edgeflowd.node.runtime.NodeRuntime` (a requester's "unit" is the
output sink). The buffer is bounded in bytes and entries expire; ``now`` is always passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from edgeflowd.core.rows import RowRange
from edgeflowd.core.slicing import height_of, rows_shape
from edgeflowd.core.units import ExecutionUnit
from edgeflowd.errors import EdgeFlowError, PlanError, ProtocolError

__all__ = ["BufferFullError", "Need", "SliceBuffer", "assemble", "needs_of", "output_needs"]


class BufferFullError(EdgeFlowError):
    """A new request's data would exceed the buffer budget; data already held is kept."""


def assemble(pieces: list[tuple[RowRange, torch.Tensor]], rows: RowRange, what: str) -> torch.Tensor:
    """Concatenate received slices into rows ``rows``; raise if any row is missing or doubled."""
    pieces = sorted(pieces, key=lambda p: p[0].start)
    cursor = rows.start
    for r, _ in pieces:
        if r.start != cursor:
            raise PlanError(f"{what}: rows {rows} arrive with a gap or overlap at row {cursor}")
        cursor = r.stop
    if cursor != rows.stop:
        raise PlanError(f"{what}: rows {rows} arrive only up to row {cursor}")
    if len(pieces) == 1:
        return pieces[0][1]
    return torch.cat([t for _, t in pieces], dim=2)


@dataclass(frozen=True)
class Need:
    """Rows ``rows`` of ``producer``'s output (full shape ``shape``) that one consumer reads."""

    producer: str
    rows: RowRange
    shape: tuple[int, ...]


def needs_of(unit: ExecutionUnit) -> list[Need]:
    return [Need(i.producer, i.rows, i.shape) for i in unit.inputs]


def output_needs(outputs: Sequence[tuple[str, Sequence[int]]]) -> list[Need]:
    """What a requester's sink reads: every row of each (output layer, full shape)."""
    return [Need(layer, RowRange(0, height_of(shape)), tuple(shape)) for layer, shape in outputs]


@dataclass
class _Pending:
    started: float
    pieces: dict[str, list[tuple[RowRange, torch.Tensor]]] = field(default_factory=dict)
    nbytes: int = 0


class SliceBuffer:
    """Collects row slices per (request, consumer) until the consumer's needs are complete.

    ``needs[consumer]`` lists, in the consumer's input order, what it reads. At most ``max_bytes``
    are held; a slice that starts a new entry beyond that raises :class:`BufferFullError`; entries older
    than ``ttl_s`` are dropped by :meth:`expire`."""

    def __init__(self, needs: Mapping[str, Sequence[Need]], max_bytes: int, ttl_s: float) -> None:
        self.needs = {consumer: list(n) for consumer, n in needs.items()}
        self._by_producer = {consumer: {n.producer: n for n in ns} for consumer, ns in self.needs.items()}
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.held_bytes = 0
        self._pending: dict[tuple[str, str], _Pending] = {}

    def add(
        self, request: str, consumer: str, producer: str, rows: RowRange, tensor: torch.Tensor, now: float, where: str
    ) -> list[torch.Tensor] | None:
        """The consumer's complete inputs once this slice finishes them, else None. A slice that
        nobody here reads, that has the wrong shape or repeats rows raises ProtocolError."""
        needs = self.needs.get(consumer)
        if needs is None:
            raise ProtocolError(f"{where}: no unit {consumer!r} here")
        need = self._by_producer[consumer].get(producer)
        if need is None:
            raise ProtocolError(f"{where}: unit {consumer} reads no rows of layer {producer!r}")
        if (rows.empty and not need.rows.empty) or not need.rows.contains(rows):  # empty: a trigger
            raise ProtocolError(f"{where}: rows {rows} of {producer} are not among the rows {need.rows} it reads")
        if len(need.shape) < 4 and rows != need.rows:
            raise ProtocolError(f"{where}: {producer} is read whole (rows {need.rows}), got rows {rows}")
        expected = rows_shape(need.shape, rows)
        if tuple(tensor.shape) != expected:
            raise ProtocolError(
                f"{where}: rows {rows} of {producer} have shape {tuple(tensor.shape)}, expected {expected}"
            )
        key = (request, consumer)
        entry = self._pending.get(key)
        nbytes = tensor.numel() * tensor.element_size()
        if entry is None:
            if self.held_bytes + nbytes > self.max_bytes:
                raise BufferFullError(
                    f"{where}: request {request}: {nbytes} more bytes would exceed the {self.max_bytes}-byte buffer"
                )
            if len(needs) == 1 and rows == need.rows and not rows.empty:
                return [tensor]  # the one slice of the one input (a chain's next unit): nothing to hold
            entry = self._pending[key] = _Pending(now)
        got = entry.pieces.setdefault(producer, [])
        if any(not r.intersect(rows).empty for r, _ in got):
            raise ProtocolError(f"{where}: rows {rows} of {producer} for request {request} arrived twice")
        got.append((rows, tensor))
        entry.nbytes += nbytes
        self.held_bytes += nbytes
        if not self._complete(needs, entry):
            return None
        self._drop(key)
        return [
            assemble(entry.pieces[n.producer], n.rows, f"{consumer} input {n.producer}")
            if not n.rows.empty
            else torch.zeros(rows_shape(n.shape, n.rows))  # the op's window lies wholly in padding
            for n in needs
        ]

    @staticmethod
    def _complete(needs: list[Need], entry: _Pending) -> bool:
        return all(sum(len(r) for r, _ in entry.pieces.get(n.producer, ())) == len(n.rows) for n in needs)

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop entries older than ``ttl_s``; returns their (request, consumer) keys."""
        old = [key for key, entry in self._pending.items() if now - entry.started > self.ttl_s]
        for key in old:
            self._drop(key)
        return old

    def forget(self, request: str) -> None:
        """Drop every buffer of ``request`` (given up on, or done)."""
        for key in [key for key in self._pending if key[0] == request]:
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            self.held_bytes -= entry.nbytes

    def missing(self, request: str, consumer: str) -> list[str]:
        """What ``consumer`` still lacks for ``request``, for timeout messages."""
        entry = self._pending.get((request, consumer))
        out = []
        for n in self.needs.get(consumer, []):
            have = sum(len(r) for r, _ in (entry.pieces.get(n.producer, ()) if entry else ()))
            if have < len(n.rows):
                out.append(f"{n.producer} rows {n.rows} ({have} of {len(n.rows)} arrived)")
        return out

    def arrived(self, request: str, consumer: str) -> dict[str, list[RowRange]]:
        """The rows of each producer ``consumer`` holds for ``request``."""
        entry = self._pending.get((request, consumer))
        return {p: [r for r, _ in pieces] for p, pieces in entry.pieces.items()} if entry else {}

    @property
    def pending(self) -> int:
        return len(self._pending)
