"""What the daemon's threads hand each other: typed events on the engine's queue, counters that
every thread bumps, and the heartbeat that speaks for a busy engine."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Connected", "Counts", "Event", "Inbox", "Message", "UnitTimes", "heartbeat"]


@dataclass(frozen=True)
class Message:
    """What paho's network thread received."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class Connected:
    pass


Event = Message | Connected


class Inbox:
    """The engine's queue: bounded in events, and in the payload bytes of data-plane messages
    (topics under ``data_prefix``), so that a flood of large payloads cannot take the node's
    memory before the engine has judged any of them. Putting never blocks (paho's thread and the
    workers put); what does not fit is counted as ``dropped`` and its request times out."""

    def __init__(self, events: int, budget_bytes: int, data_prefix: str, counts: Counts) -> None:
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=events)
        self._budget = budget_bytes
        self._prefix = data_prefix
        self._counts = counts
        self._bytes = 0  # data-plane payload bytes waiting; with _lock
        self._lock = threading.Lock()

    def _size(self, event: Event) -> int:
        # Data-plane payloads only: the weights of a new assignment arrive in one burst of retained
        # parts, on topics only the controller may write, and are bounded by the fetch itself.
        return len(event.payload) if isinstance(event, Message) and event.topic.startswith(self._prefix) else 0

    def put(self, event: Event) -> None:
        size = self._size(event)
        with self._lock:
            if size and self._bytes + size > self._budget:
                self._counts.add("dropped")
                return
            self._bytes += size
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self._bytes -= size
            self._counts.add("dropped")

    def waiting(self) -> int:
        """Events waiting for the engine."""
        return self._queue.qsize()

    def get(self, timeout_s: float) -> Event | None:
        """The next event, or None after ``timeout_s``."""
        try:
            event = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        size = self._size(event)
        if size:
            with self._lock:
                self._bytes -= size
        return event


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


@contextmanager
def heartbeat(interval_s: float, beat: Callable[[], None], name: str) -> Iterator[None]:
    """Call ``beat`` every ``interval_s`` from a thread of its own while the body runs: the engine
    publishes telemetry with it while it is busy (building a plan's runtimes packs and times its
    convolutions, seconds of work that a board at a tenth of a core stretches past the
    controller's patience of three telemetry intervals, which then took every node of a slowed
    testbed for gone, one after another, and re-planned without end)."""
    done = threading.Event()

    def run() -> None:
        while not done.wait(interval_s):
            beat()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
