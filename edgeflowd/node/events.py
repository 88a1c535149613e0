"""What the daemon's threads hand each other: typed events on the engine's queue, and counters
that every thread bumps."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

__all__ = ["Connected", "Counts", "Event", "Message"]


@dataclass(frozen=True)
class Message:
    """What paho's network thread received."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class Connected:
    pass


Event = Message | Connected


class Counts:
    """Counters that the engine and the workers both bump (one lock guards the Counter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
