"""Never slower than one device, measured: the controller tries the best single device alone when a
split has not shown that it beats it, and keeps whichever of the two was measured faster. Pure state
of one served model; the service feeds it the medians it judges and plans what it says.

Why a trial and not a prediction: the cost model is fitted to the units of the plan that runs. A
split's units are pieces of layers, and what a piece costs beyond its share of the arithmetic (a
call's fixed work, the halo rows, assembling slices) is fitted as a slower rate; the whole layers of
a single-device plan are then predicted slower than they run. On this project's 2-core test machine
MobileNet-V2 split over two pinned daemons measured 31 ms, the fit put one daemon alone at 31 ms,
and one daemon alone measured 24 ms: the safeguard that compares a split with the single device's
*prediction* passed a split 30% slower than one device. Only measuring the device alone settles it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from controller.planner.plan import Plan

__all__ = ["ALONE_MARGIN", "RECHECK_S", "TRIAL_GAIN", "TRIED_FOR", "Alone", "Step"]

TRIED_FOR = ("edgeflow", "progressive")
"""The methods whose plans are EdgeFlow's own: a baseline asked for by name runs as asked."""

TRIAL_GAIN = 0.4
"""A split measured less than this much faster than the best single device's prediction has that
device tried alone. Wide: the prediction of one device alone is what the fit gets wrong (24 ms
measured, 31 predicted above; a run of the live test saw an 85/15 split measured at 21 ms, below
a 10% margin under one node's prediction, where that node alone ran in 19-24 ms)."""
ALONE_MARGIN = 0.05
"""The device alone must be measured this much faster than the split to stay: within the noise,
the split (the plan asked for) is kept."""
RECHECK_S = 600.0
"""How long after a trial on the same nodes a split that did not win clearly is not tried against
one device again (a verdict ``alone`` holds until the nodes or their conditions change)."""


@dataclass(frozen=True)
class Step:
    """What a judgement of the trial says (an event of ``node``) and the re-plan it asks for ("": none)."""

    event: str
    node: str
    detail: str
    replan: str = ""


@dataclass
class Alone:
    """``state``: "" (plan with the method asked for), ``trying`` (the trial runs ``node`` alone)
    or ``alone`` (``node`` alone was measured faster than the split: it is what is planned)."""

    state: str = ""
    node: str = ""
    split_ms: float = 0.0  # the split's measured median the trial is compared with
    tried_on: frozenset[str] = frozenset()  # the live nodes of the last trial
    decided_at: float = float("-inf")

    def judge(
        self, plan: Plan, nodes: Sequence[str], single: tuple[str, float], measured_ms: float, now: float
    ) -> Step | None:
        """The live ``plan`` on ``nodes`` was measured at a median of ``measured_ms``; ``single``: the
        best single device and its predicted latency. None: the trial has nothing to say."""
        used = [n for i, n in enumerate(nodes) if plan.on_device(i)]
        node, single_ms = single
        if len(used) > 1:
            if not self.after_split(measured_ms, node, single_ms, nodes, now):
                return None
            said = f"the split measured {measured_ms:.0f} ms and {node} alone is predicted {single_ms:.0f} ms"
            return Step("trying-alone", node, f"{said}: measuring {node} alone", f"trying {node} alone")
        decided = self.after_single(measured_ms, nodes, now)
        said = f"{self.node} alone measured {measured_ms:.0f} ms, the split {self.split_ms:.0f} ms"
        if decided == "alone":
            return Step("alone-faster", self.node, f"{said}: it stays alone")
        if decided == "split":
            return Step("split-faster", self.node, f"{said}: the split is planned again", "the split measured faster")
        return None

    def after_split(
        self, measured_ms: float, single_node: str, single_ms: float, nodes: Collection[str], now: float
    ) -> bool:
        """A split was measured at a median of ``measured_ms`` on ``nodes``; ``single_node`` is
        the best single device, predicted at ``single_ms``. Whether to try it alone now: not when
        the split won clearly, nor when a trial on the same nodes decided within ``RECHECK_S``."""
        if self.state or not single_node or single_ms <= 0 or single_node not in nodes:
            return False
        if frozenset(nodes) == self.tried_on and now - self.decided_at < RECHECK_S:
            return False
        if measured_ms <= single_ms * (1 - TRIAL_GAIN):
            return False
        self.state, self.node, self.split_ms = "trying", single_node, measured_ms
        return True

    def after_single(self, measured_ms: float, nodes: Collection[str], now: float) -> str:
        """The trial was measured at ``measured_ms``: ``alone`` (it stays), ``split`` (the split is
        planned again), or "" (no trial ran)."""
        if self.state != "trying":
            return ""
        self.tried_on, self.decided_at = frozenset(nodes), now
        if measured_ms < self.split_ms * (1 - ALONE_MARGIN):
            self.state = "alone"
            return "alone"
        self.state = ""
        return "split"

    def planned_on(self, live: Collection[str]) -> str:
        """The node to plan the model on alone ("": plan with the method asked for): the trial's or
        the verdict's while it holds on these ``live`` nodes."""
        if self.state == "trying" and self.node in live:
            return self.node
        if self.state == "alone" and frozenset(live) == self.tried_on:
            return self.node
        if self.state:
            self.reset()
        return ""

    def outdated_by(self, ratio: float) -> bool:
        """A node of the live plan runs its units ``ratio`` times the planned time: whether that
        outdates the trial or its verdict. Faster does not: a device alone runs its whole layers
        faster than the fit to the split's pieces planned them, and the verdict stands. Slower
        does: the device alone was measured faster than it now runs (a CPU quota cut to a quarter
        mid-stream), and a verdict kept would plan it alone again at that speed."""
        return bool(self.state) and ratio > 1

    def reset(self) -> None:
        """The conditions the verdict was measured under changed (a node came or went, measured
        itself again, its load moved): plan with the method asked for. The next trial on the same
        nodes waits ``RECHECK_S`` from the last: conditions that keep changing must not cost two
        rollouts each time."""
        self.state, self.node, self.split_ms = "", "", 0.0
