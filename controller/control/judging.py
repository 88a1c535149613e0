"""What the controller learns from the models as they run, and how it judges a live plan: each
node's cost model fitted to its units' times (of every model's plan: a node runs at one speed,
whatever the model), the work of a message fitted to the requesters' latencies, and the verdicts
that ask for a re-plan (the rules: docs/partitioning.md). No I/O: the service feeds it telemetry
and latency reports and publishes what it returns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.control.deployment import generation_of
from controller.control.learning import CostLearner, LatencyBook, best_single, costs_report, row_shares, verdict
from controller.control.rollout import Rolling
from controller.control.served import Served
from controller.planner.fit import Case, Fit, fit_message_work, with_message_work
from edgeflowd.profiles.devices import Cluster, Device
from edgeflowd.wire.messages import Costs, Telemetry

__all__ = ["Judge"]


class Judge:
    def __init__(self) -> None:
        self.learner = CostLearner()
        self.latencies = LatencyBook()
        self.message_flop = 0.0  # what handling a message costs (controller/planner/fit.py)
        self._cases: dict[int, Case] = {}  # measured generations (of any model), for that fit

    def observe(self, node: str, telemetry: Telemetry, reference: Device, now: float) -> Fit | None:
        """Take one telemetry report's unit times (one entry per plan the node ran); the node's fit."""
        fit = self.learner.observe(node, telemetry.generation, {}, reference, now)
        for plan, unit_s in telemetry.unit_s.items():
            fit = self.learner.observe(node, generation_of(plan), unit_s, reference, now)
        return fit

    def fitted(self, nodes: Iterable[str], now: float) -> dict[str, Device]:
        """Each of ``nodes`` with a fresh fit, as it was measured."""
        return {n: d for n in nodes if (d := self.learner.device(n, now)) is not None}

    def all_fitted(self, live: Rolling, fitted: Mapping[str, Device]) -> bool:
        """Every node with work in ``live`` has a fit: only then is the rest put down to messages."""
        return all(n in fitted for i, n in enumerate(live.rollout.nodes) if live.planned.plan.on_device(i))

    def judge(self, served: Served, now: Cluster, measured_s: float, count: int) -> tuple[str, str]:
        """(verdict, what it says) of ``served``'s live plan, measured at a median of
        ``measured_s`` over ``count`` requests, against its prediction and against the best single
        device; ``now``: the live nodes as their units are measured to run now. Fits the message
        work to the plans measured so far first: what the nodes' units do not explain is messages."""
        live = served.live
        assert live is not None, "only a live plan is judged"
        generation = live.rollout.generation
        devices = {d.id: d for d in now.devices}
        base = live.base.with_devices(tuple(devices.get(d.id, d) for d in live.base.devices))
        split = sum(1 for i in range(len(live.rollout.nodes)) if live.planned.plan.on_device(i)) > 1
        if split:  # a single device's plan sends nothing between devices: it says nothing of messages
            self._cases[generation] = Case(live.planned.plan, served.graph, base, measured_s)
        self._cases = {g: c for g, c in self._cases.items() if g in self.learner.plans}
        self.message_flop = fit_message_work(list(self._cases.values()))
        predicted = live.planned.latency_s
        served.single = best_single(served.graph, with_message_work(base, self.message_flop))
        node, single_ms = served.single
        said = (
            f"generation {generation} measured {measured_s * 1e3:.0f} ms over {count} requests, predicted "
            f"{predicted * 1e3:.0f} ms; handling a message costs {self.message_flop / 1e6:.2f} MFLOP"
        )
        judged = verdict(measured_s, predicted, single_ms / 1e3, split)
        if judged == "slower-than-single":
            said += f"; the best single device ({node}) {single_ms:.0f} ms"
        return judged, said

    def costs(
        self, served: Served, cluster: Cluster, measured_rates: bool, now: float, rolling: bool = False
    ) -> Costs | None:
        """``served``'s live plan as :class:`~edgeflowd.wire.messages.Costs` (None: no live plan);
        ``rolling``: a new plan of it is rolling out."""
        live = served.live
        if live is None:
            return None
        generation = live.rollout.generation
        fits = {d.id: self.learner.fitted(d.id, now) if measured_rates else None for d in cluster.devices}
        return costs_report(
            generation,
            live.planned,
            with_message_work(cluster, self.message_flop),
            fits,
            "benchmark" if measured_rates else "declared",
            row_shares(live.planned.plan, live.rollout.nodes),
            self.latencies.median(generation),
            served.single,
            self.message_flop,
            served.alone.node if served.alone.state == "alone" else "",
            judged=served.judged == generation,
            replanning=rolling or served.dirty_since is not None,
        )
