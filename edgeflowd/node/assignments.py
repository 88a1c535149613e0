"""What a node runs, and the weights it still waits for, as a state machine: the retained
assignment (the node's :class:`~edgeflowd.wire.assignment.NodeWork`: a plan per model), blob
parts and ``now`` in, actions out (subscribe to a blob, report, activate).

New work starts a fetch of the blobs the weight store lacks; once every blob is held and
hash-checked, :class:`Activate` hands the work and its tensors to the daemon, which switches
its runtimes and says whether it could (:meth:`Assignments.activated`,
:meth:`Assignments.not_activated`): only runtimes that were built make work the one
served and reported ready. The current work again (a reconnect replays the retained copy)
is answered with its report; an older generation is ignored; a fetch that stalls is abandoned with an error
report. Sockets and threads stay in the daemon; the weight store is the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from edgeflowd.errors import EdgeFlowError, ProtocolError
from edgeflowd.node.weights import WeightFetch, WeightStore
from edgeflowd.wire.assignment import BlobRef, NodeWork, NodeWorkDoc
from edgeflowd.wire.schema import decode
from edgeflowd.wire.topics import Topics

__all__ = ["Activate", "AssignmentAction", "Assignments", "Refuse", "Report", "Say", "Subscribe", "Unsubscribe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subscribe:
    topic: str


@dataclass(frozen=True)
class Unsubscribe:
    topic: str


@dataclass(frozen=True)
class Report:
    """Publish ``assignment/reported``: ``generation`` is ready, or failed with ``error``.
    ``retain``: whether it becomes the retained report, which always says what the node serves;
    a refusal that leaves the node serving goes to the report's current readers only."""

    generation: int
    state: str  # ready | error
    error: str = ""
    retain: bool = True


@dataclass(frozen=True)
class Say:
    """A line for the service manager's STATUS."""

    text: str


@dataclass(frozen=True)
class Activate:
    """Run ``work`` from now on, each model's plan with its ``tensors[model]``; ``None``: the
    assignment was cleared."""

    work: NodeWork | None
    tensors: Mapping[str, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Refuse:
    """A malformed message, refused: the daemon logs and counts it."""

    message: str


AssignmentAction = Subscribe | Unsubscribe | Report | Say | Activate | Refuse


class Assignments:
    """The current work and the fetch of the next, for node ``node``."""

    def __init__(
        self,
        node: str,
        topics: Topics,
        store: WeightStore,
        timeout_s: float,
        plugins: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.node = node
        self.plugins = plugins or {}  # the ops this node's plugins define, besides the allow-list
        self.topics = topics
        self.store = store
        self.timeout_s = timeout_s
        self.current: NodeWork | None = None
        self.fetch: tuple[NodeWork, WeightFetch] | None = None

    def on_assignment(self, payload: bytes, topic: str, now: float) -> list[AssignmentAction]:
        """The retained assignment changed; a malformed one is reported and refused."""
        if not payload:  # the retained assignment was cleared
            self.current = None
            return [*self._cancel(), Activate(None, {}), Say("assignment cleared; idle")]
        try:
            work = NodeWork.from_bytes(payload, topic, self.plugins)
            if work.node != self.node:
                raise ProtocolError(f"{topic}: assignment is for node {work.node!r}, not {self.node!r}")
        except ProtocolError as exc:
            return [*self._refused(payload, topic, str(exc)), Refuse(str(exc))]
        current = self.current
        if current is not None and work == current:
            return [Report(current.generation, "ready")]  # the retained copy again, after a reconnect
        # Compared whole, never by generation alone: a deploy that reused a generation (a broker
        # that lost its state) with other weights or units is another assignment, and taken as one.
        # Model by model: work that only takes a model off the node (its newest plan) is not older.
        served = current.plans if current else {}
        older = [m for m, a in work.plans.items() if m in served and a.generation < served[m].generation]
        if current is not None and (older or not work.plans):
            was = current.plans[older[0]].generation if older else current.generation
            reason = (
                f"generation {work.generation} is older than generation {was}, which this node serves"
                f"{' for ' + older[0] if older else ''} (a broker that lost its retained state hands out old "
                "generations): deploy again"
            )
            log.warning("node=%s ignores %s", self.node, reason)
            return [Report(work.generation, "error", reason, retain=False)]
        actions: list[AssignmentAction] = list(self._cancel())
        weights = {f"{m}/{name}": ref for m, a in work.plans.items() for name, ref in a.weights.items()}
        fetch = WeightFetch(weights, self.store, now)
        self.fetch = (work, fetch)
        log.info(
            "node=%s generation %d: %s; %d of %d weights to fetch",
            self.node,
            work.generation,
            ", ".join(f"{m} {len(a.units)} units" for m, a in work.plans.items()) or "nothing",
            len(fetch.missing),
            len(weights),
        )
        actions.append(Say(f"fetching weights for generation {work.generation}"))
        actions += [Subscribe(topic) for sha in sorted(fetch.missing) for topic in self._parts(fetch.missing[sha])]
        return actions + self._activate_if_fetched()

    def _parts(self, ref: BlobRef) -> list[str]:
        """Each part's own topic, never a ``blob/<sha>/+`` filter: some brokers (RabbitMQ's MQTT
        plugin) hand retained messages only to subscriptions of their exact topic."""
        return [self.topics.blob(ref.sha256, part) for part in range(ref.parts)]

    def _refused(self, payload: bytes, topic: str, reason: str) -> list[AssignmentAction]:
        """The report for an assignment refused at load. The node serves on what it served: when
        the refused one names its generation (its envelope decodes), that generation failed, for
        ``deploy`` to hear at once (not retained while the node serves: the retained report keeps
        saying what is served); otherwise nothing changes, so that a stray message cannot make a
        serving node look broken."""
        current = self.current
        serving = self._still_serving()
        try:
            generation = max((p.generation for p in decode(payload, NodeWorkDoc, topic).plans), default=-1)
        except ProtocolError:
            generation = -1
        if current is not None and generation == -1:
            return [Report(current.generation, "ready")]
        return [Report(generation, "error", reason + serving, retain=current is None)]

    def on_blob(self, sha256: str, part: int, payload: bytes, topic: str) -> list[AssignmentAction]:
        """One part of a weight blob; bytes that do not hash to the name abandon the fetch."""
        if self.fetch is None:
            return []  # a retained copy arriving after the fetch finished
        try:
            got = self.fetch[1].add(sha256, part, payload, topic)
        except ProtocolError as exc:
            return [*self._abandon(str(exc)), Refuse(str(exc))]
        if got is None:
            return []
        self.store.put(*got)
        return [*(Unsubscribe(topic) for topic in self._parts(got[0])), *self._activate_if_fetched()]

    def tick(self, now: float) -> list[AssignmentAction]:
        """Abandon a fetch that has waited longer than ``timeout_s``."""
        if self.fetch is None or now - self.fetch[1].started <= self.timeout_s:
            return []
        missing = sorted(self.fetch[1].missing)[:3]
        return self._abandon(f"weights {missing} did not arrive within {self.timeout_s:g} s")

    def _activate_if_fetched(self) -> list[AssignmentAction]:
        if self.fetch is None or not self.fetch[1].done:
            return []
        work, _ = self.fetch
        self.fetch = None
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for model, assignment in work.plans.items():
            for name, ref in assignment.weights.items():
                tensor = self.store.get(ref)
                if tensor is None:  # pragma: no cover - the fetch is done only when every blob is held
                    raise EdgeFlowError(f"weight {name} of {model} vanished from the store")
                tensors.setdefault(model, {})[name] = tensor
        return [Activate(work, tensors)]

    def activated(self, work: NodeWork) -> list[AssignmentAction]:
        """The daemon runs ``work`` now: it is what this node serves, and is reported so."""
        self.current = work
        self.store.keep_only(ref.sha256 for a in work.plans.values() for ref in a.weights.values())
        return [Report(work.generation, "ready")]

    def not_activated(self, work: NodeWork, reason: str) -> list[AssignmentAction]:
        """The daemon could not build the runtimes of ``work``: the node serves what it served
        (its weights stay in the store) and the generation is reported failed, retained only when
        nothing is served."""
        error = f"generation {work.generation} could not start: {reason}{self._still_serving()}"
        return [Report(work.generation, "error", error, retain=self.current is None), Say(error)]

    def _still_serving(self) -> str:
        """What a failure's report adds while an earlier generation keeps being served."""
        return f"; still serving generation {self.current.generation}" if self.current else ""

    def _abandon(self, reason: str) -> list[AssignmentAction]:
        if self.fetch is None:
            return []
        generation = self.fetch[0].generation
        return [
            *self._cancel(),
            Report(generation, "error", reason),
            Say(f"generation {generation} failed: {reason}"),
        ]

    def _cancel(self) -> list[AssignmentAction]:
        """Stop fetching (a newer assignment, a clear, a failure): unsubscribe its blobs."""
        if self.fetch is None:
            return []
        fetch = self.fetch[1]
        self.fetch = None
        return [Unsubscribe(topic) for sha in sorted(fetch.missing) for topic in self._parts(fetch.missing[sha])]
