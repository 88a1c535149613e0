"""A deployment as the messages that roll it out, and the bookkeeping of its nodes' reports.

Pure: :func:`rollout_messages` lists what to publish to hand a new generation to its nodes (each weight
blob once, then each node's assignment), :func:`completion_messages` what to publish once every node
reports it ready (the plan summary requesters read, then the clearing of what the new plan no
longer uses). :class:`Rollout` says when a generation is ready, or why it failed. ``edgeflow
deploy`` and the controller service apply the same lists, each on its own connection: the CLI
waits for the reports, the service takes them as events in its loop.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from controller.control.deployment import Deployment
from controller.control.learning import row_shares
from controller.planner.methods import Planned
from edgeflowd.profiles.devices import Cluster
from edgeflowd.wire.assignment import NodeWork, split_blob
from edgeflowd.wire.messages import AssignmentReport, PlanInfo, encode_control
from edgeflowd.wire.topics import Topics

__all__ = [
    "Publication",
    "Rolling",
    "Rollout",
    "cleared_blobs",
    "completion_messages",
    "rollout_messages",
    "works_with",
]


@dataclass(frozen=True)
class Publication:
    """One retained QoS 1 message; an empty payload clears the topic."""

    topic: str
    payload: bytes


def works_with(deployment: Deployment, works: Mapping[str, NodeWork] | None = None) -> dict[str, NodeWork]:
    """What each node of ``deployment`` runs once it is out: its work in ``works`` (what its
    retained assignment holds now: the other models' plans) with this model's plan replaced."""
    works, model = works or {}, deployment.info.model
    return {n: works.get(n, NodeWork(n, {})).replace(a, model) for n, a in deployment.assignments.items()}


def rollout_messages(
    topics: Topics,
    deployment: Deployment,
    held: Mapping[str, int] | None = None,
    works: Mapping[str, NodeWork] | None = None,
) -> list[Publication]:
    """Blobs first, then assignments: a node that reads its assignment finds every blob retained.
    ``held``: the blobs (sha256 -> parts) of the plan summary the broker holds, read from it on
    this connection; blobs are content-addressed, so those of them the new plan uses (all of
    them, when a re-plan only moves rows) are not published again. ``works``: each node's current
    work, whose other models' plans each node's new assignment carries on (:func:`works_with`)."""
    held = held or {}
    out = [
        Publication(topics.blob(sha, part), payload)
        for sha, (ref, raw) in sorted(deployment.blobs.items())
        if held.get(sha) != ref.parts
        for part, payload in enumerate(split_blob(raw, ref))
    ]
    out += [Publication(topics.node(n, "assignment"), w.to_bytes()) for n, w in works_with(deployment, works).items()]
    return out


def completion_messages(
    topics: Topics,
    deployment: Deployment,
    previous: PlanInfo | None,
    others: Sequence[str] = (),
    admits: int = 0,
    works: Mapping[str, NodeWork] | None = None,
    keep: Collection[str] = (),
) -> list[Publication]:
    """The plan summary (with ``admits``: :attr:`Rollout.admits`), then the retained assignments of
    ``others`` (nodes of the cluster that the new plan leaves out: one coming back must run nothing
    stale of this model; ``works``: what each runs now, the other models' plans of which it keeps)
    and the blobs only ``previous`` used (they would otherwise stay retained forever), unless
    another model's plan in ``works`` uses them or they are in ``keep``."""
    info = msgspec.structs.replace(deployment.info, admits=admits)
    works, model = works or {}, deployment.info.model
    out = []
    if deployment.timeline is not None:  # first: a requester that reads the plan finds its prediction
        out.append(Publication(topics.controller("timeline", model), encode_control(deployment.timeline)))
    out.append(Publication(topics.controller("plan", model), encode_control(info)))
    out += [
        Publication(topics.node(n, "assignment"), works.get(n, NodeWork(n, {})).replace(None, model).to_bytes())
        for n in others
        if n not in deployment.assignments
    ]
    shared = {r.sha256 for w in works.values() for m, a in w.plans.items() if m != model for r in a.weights.values()}
    if previous is not None:
        out += cleared_blobs(topics, previous.blobs, {*deployment.blobs, *shared, *keep})
    return out


def cleared_blobs(topics: Topics, blobs: Mapping[str, int], used: Collection[str]) -> list[Publication]:
    """Empty retained messages for every part of ``blobs`` (sha256 -> parts) that no plan still
    uses (``used``): weights nobody reads would otherwise stay on the broker for good."""
    return [
        Publication(topics.blob(sha, part), b"")
        for sha, parts in sorted(blobs.items())
        if sha not in used
        for part in range(parts)
    ]


@dataclass
class Rollout:
    """The reports of one generation's nodes, as they come; ``started`` and ``timeout_s`` bound
    the wait (``now`` is passed in)."""

    deployment: Deployment
    started: float
    timeout_s: float
    reports: dict[str, AssignmentReport] = field(default_factory=dict)

    @property
    def generation(self) -> int:
        return self.deployment.info.generation

    @property
    def model(self) -> str:
        return self.deployment.info.model

    @property
    def nodes(self) -> list[str]:
        return list(self.deployment.assignments)

    def on_report(self, node: str, report: AssignmentReport) -> None:
        if node in self.deployment.assignments and report.generation == self.generation:
            self.reports[node] = report

    @property
    def admits(self) -> int:
        """The fewest requests any node said it holds at once (0: some node did not say: an older
        daemon; a requester then sends without a limit, and the nodes alone refuse)."""
        said = [self.reports[n].admits if n in self.reports else 0 for n in self.nodes]
        return min(said) if said and min(said) > 0 else 0

    @property
    def ready(self) -> bool:
        return all(n in self.reports and self.reports[n].state == "ready" for n in self.nodes)

    def failure(self, now: float, offline: Sequence[str] = ()) -> str:
        """Why the generation cannot become ready (empty while it still may): a node reported an
        error, went ``offline``, or did not report within the timeout."""
        lines = [f"{n}: {r.error}" for n, r in sorted(self.reports.items()) if r.state != "ready"]
        lines += [f"{n}: went offline" for n in self.nodes if n in offline]
        if not lines and now - self.started > self.timeout_s:
            missing = [n for n in self.nodes if n not in self.reports]
            lines = [f"{n}: no report within {self.timeout_s:g} s (is its edgeflowd running?)" for n in missing]
        if not lines:
            return ""
        return f"generation {self.generation} is not ready on every node:\n  " + "\n  ".join(lines)


@dataclass(frozen=True)
class Rolling:
    """A generation being rolled out (or live), with what it was planned on and why."""

    rollout: Rollout
    reason: str
    cluster: Cluster
    planned: Planned
    started: float  # when the re-plan began: its event reports planning and rollout together
    base: Cluster  # ``cluster`` without the fitted message work

    def summary(self, now: float) -> str:
        """What its ``replanned`` event says once it is live at ``now``."""
        nodes = self.rollout.nodes
        shares = ", ".join(f"{n} {share:.0%}" for n, share in row_shares(self.planned.plan, nodes).items())
        generation, took = self.rollout.deployment.info.generation, now - self.started
        return f"{self.reason}: generation {generation} on {len(nodes)} nodes in {took:.2f} s; row shares {shares}"
