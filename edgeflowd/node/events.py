"""What the daemon's threads hand each other: typed events on the engine's queue, and counters
that every thread bumps."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

__all__ = ["Connected", "Counts", "Event", "Message", "UnitTimes"]


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


class UnitTimes:
    """How long each unit of each plan took (runs, seconds) since the last :meth:`take`, from the
    workers: the controller fits the node's cost model to these (controller/planner/fit.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, list[float]]] = {}

    def add(self, plan: str, uid: str, seconds: float) -> None:
        with self._lock:
            entry = self._values.setdefault(plan, {}).setdefault(uid, [0.0, 0.0])
            entry[0] += 1
            entry[1] += seconds

    def take(self) -> dict[str, dict[str, list[float]]]:
        """What was gathered, rounded for the wire (runs, seconds to the microsecond); starts over."""
        with self._lock:
            values, self._values = self._values, {}
        return {
            plan: {uid: [runs, round(seconds, 6)] for uid, (runs, seconds) in units.items()}
            for plan, units in values.items()
        }
