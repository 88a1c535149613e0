"""A broker in one thread's memory, with MQTT's topic-filter semantics: ``publish`` queues a
message, :meth:`MemoryBus.run` hands each one, in order, to every subscription whose filter
matches. ``edgeflow verify`` and the tests run whole plans over it, through the same node runtime
the daemon uses; it counts what a broker would carry."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from edgeflowd.errors import EdgeFlowError

__all__ = ["MemoryBus", "topic_matches"]

Handler = Callable[[str, bytes], None]


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether MQTT filter ``pattern`` (``+`` one level, a final ``#`` any rest) matches ``topic``."""
    want, got = pattern.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(got) or (level != "+" and level != got[i]):
            return False
    return len(want) == len(got)


class MemoryBus:
    """Subscriptions and a FIFO of messages; ``messages`` and ``bytes`` count every publish."""

    def __init__(self) -> None:
        self._exact: dict[str, list[Handler]] = {}  # filters without wildcards: one lookup each
        self._wild: list[tuple[str, Handler]] = []
        self._queue: deque[tuple[str, bytes]] = deque()
        self.messages = 0
        self.bytes = 0

    def subscribe(self, pattern: str, handler: Handler) -> None:
        if "+" in pattern.split("/") or pattern.endswith("#"):
            self._wild.append((pattern, handler))
        else:
            self._exact.setdefault(pattern, []).append(handler)

    def publish(self, topic: str, payload: bytes) -> None:
        self._queue.append((topic, payload))
        self.messages += 1
        self.bytes += len(payload)

    def run(self, max_messages: int) -> int:
        """Deliver until the queue is empty; returns how many were delivered. More than
        ``max_messages`` means a loop somewhere and raises rather than spinning."""
        delivered = 0
        while self._queue:
            if delivered >= max_messages:
                raise EdgeFlowError(f"the in-memory bus passed {max_messages} messages and is still busy")
            topic, payload = self._queue.popleft()
            for handler in self._exact.get(topic, ()):
                handler(topic, payload)
            for pattern, handler in self._wild:
                if topic_matches(pattern, topic):
                    handler(topic, payload)
            delivered += 1
        return delivered
