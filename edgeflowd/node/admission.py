"""Admission control: a node holds at most ``limit`` requests at once, and a request is admitted
whole or refused at once (pure bookkeeping behind :class:`~edgeflowd.node.runtime.NodeRuntime`;
``now`` is always passed in).

Under overload a node that took every request's first rows and then ran out of room for their later
ones completed nothing: every request expired half-done. Here a request is admitted when its first
frame reaches the node, and stays admitted until every unit of the node has been handed its inputs
for it (or it is given up on). A new request beyond the limit is refused; the refusal is published
(``data/<plan>/busy``), so every other node drops what it holds of that request and its requester
fails it at once. Frames of a refused or finished request that arrive later are dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum

__all__ = ["Admission", "Verdict"]


class Verdict(Enum):
    ADMITTED = "admitted"  # held here: its frames are buffered
    NEW = "new"  # admitted by this frame
    REFUSED = "refused"  # refused by this frame: publish the refusal
    GONE = "gone"  # refused, given up on or finished before: drop the frame


class Admission:
    """``units``: how many units of this node run once per request."""

    def __init__(self, limit: int, units: int, ttl_s: float, remember: int = 4096) -> None:
        if limit < 1:
            raise ValueError(f"a node admits at least one request at once, not {limit}")
        self.limit = limit
        self.units = units
        self.ttl_s = ttl_s
        self.remember = remember  # requests gone, at most: a flood of new ids costs bounded memory
        self._left: dict[str, tuple[int, float]] = {}  # admitted request -> (units still to run, admitted at)
        self._gone: OrderedDict[str, float] = OrderedDict()  # request -> when it went

    def admit(self, request: str, now: float) -> Verdict:
        if request in self._left:
            return Verdict.ADMITTED
        if request in self._gone:
            return Verdict.GONE
        if len(self._left) >= self.limit:
            self._went(request, now)
            return Verdict.REFUSED
        self._left[request] = (self.units, now)
        return Verdict.NEW

    def ran(self, request: str, now: float) -> None:
        """One of the node's units was handed its inputs for ``request``; the last one frees its
        place (its computing may still be under way: the worker pool bounds that)."""
        held = self._left.get(request)
        if held is None:
            return
        if held[0] <= 1:
            del self._left[request]
            self._went(request, now)
        else:
            self._left[request] = (held[0] - 1, held[1])

    def holds(self, request: str) -> bool:
        return request in self._left

    def release(self, request: str) -> None:
        """Free ``request``'s place without marking it gone: its first frame was malformed, and a
        well-formed one may still come."""
        self._left.pop(request, None)

    def drop(self, request: str, now: float) -> bool:
        """``request`` is given up on here (refused elsewhere, no room, expired): its place is
        freed and its later frames are dropped. Whether it was admitted."""
        held = self._left.pop(request, None) is not None
        self._went(request, now)
        return held

    def _went(self, request: str, now: float) -> None:
        self._gone[request] = now
        self._gone.move_to_end(request)
        while len(self._gone) > self.remember:
            self._gone.popitem(last=False)

    def expire(self, now: float) -> list[str]:
        """Drop the requests admitted longer than ``ttl_s`` ago (returned: a request is held for
        at most that long), and forget those gone that long: no frame of theirs is still on the way."""
        old = [request for request, (_, since) in self._left.items() if now - since > self.ttl_s]
        for request in old:
            self.drop(request, now)
        while self._gone:
            request, when = next(iter(self._gone.items()))
            if now - when <= self.ttl_s:
                break
            del self._gone[request]
        return old

    @property
    def held(self) -> int:
        return len(self._left)
