"""How the last requests went on this node, for ``edgeflow infer --timeline``: when each unit's
inputs were complete, when it ran, and when it sent frames to other nodes, in seconds of the wall
clock (the requester corrects it onto its own). Kept for the last :data:`KEEP` requests only, and
cheap enough to keep always (a few clock reads per unit): a slow request can be looked at after
the fact, without a tracing mode that would change what it measures."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from edgeflowd.wire.messages import SendSpan, Spans, UnitSpan

__all__ = ["KEEP", "SpanLog"]

KEEP = 64


@dataclass
class _Request:
    ready: dict[str, float] = field(default_factory=dict)
    runs: list[tuple[str, float, float]] = field(default_factory=list)
    sends: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (unit, topic) -> first, last, bytes


class SpanLog:
    """Written by the engine (inputs complete) and the workers (runs, sends): one lock."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        self._lock = threading.Lock()

    def _entry(self, request: str) -> _Request:
        entry = self._requests.get(request)
        if entry is None:
            entry = self._requests[request] = _Request()
            while len(self._requests) > self.keep:
                self._requests.popitem(last=False)
        return entry

    def ready(self, request: str, unit: str) -> None:
        now = time.time()
        with self._lock:
            self._entry(request).ready.setdefault(unit, now)

    def ran(self, request: str, unit: str, start: float, end: float) -> None:
        with self._lock:
            self._entry(request).runs.append((unit, start, end))

    def sent(self, request: str, unit: str, topic: str, nbytes: int) -> None:
        now = time.time()
        with self._lock:
            span = self._entry(request).sends.setdefault((unit, topic), [now, now, 0])
            span[1], span[2] = now, span[2] + nbytes

    def spans(self, node: str, request: str) -> Spans:
        """What this node knows of ``request`` (nothing, if it ran none of it or forgot it)."""
        with self._lock:
            entry = self._requests.get(request) or _Request()
            units = [UnitSpan(u, entry.ready.get(u, 0.0), start, end) for u, start, end in entry.runs]
            sends = [SendSpan(u, t, first, last, int(n)) for (u, t), (first, last, n) in entry.sends.items()]
        return Spans(node, request, time.time(), units, sends)
