"""Which units of a plan compute their halo rows first (pure).

A unit marked ``halo_first`` computes the rows other devices read, publishes them, and computes
its interior while they travel (:func:`edgeflowd.core.units.halo_first`). That costs one more
pass per extra piece: its op overhead in the cost model, and on a real CPU another read of the
layer's weights, which the cost model does not yet charge (a 3x3 convolution of 512 channels on
a 7x7 map: 1.5 ms for one row, 6.4 ms for seven, on one core of this project's test machine).
So only units with a large interior are candidates, and the simulator decides, per plan, whether
the schedule pays.
"""

from __future__ import annotations

import dataclasses

from controller.graph.layers import LayerGraph
from controller.planner.plan import Plan
from controller.planner.simulate import Timeline, simulate
from edgeflowd.core.units import CLIENT, ExecutionUnit
from edgeflowd.profiles.devices import Cluster

__all__ = ["HALO_FIRST_MIN_ROWS", "HALO_FIRST_SHARE", "best_schedule", "with_halo_first"]

HALO_FIRST_MIN_ROWS = 5
"""Units with fewer rows are computed whole: their interior is too small to hide a message."""
HALO_FIRST_SHARE = 4
"""A unit goes halo first only when other devices read at most one in this many of its rows."""


def _candidate(unit: ExecutionUnit, device_of: dict[str, int]) -> bool:
    if unit.device == CLIENT or len(unit.rows) < HALO_FIRST_MIN_ROWS:
        return False
    remote = sum(
        len(f.rows.intersect(unit.rows)) for f in unit.forwards if device_of.get(f.consumer, CLIENT) != unit.device
    )
    return remote > 0 and HALO_FIRST_SHARE * remote <= len(unit.rows)


def with_halo_first(plan: Plan) -> Plan:
    """``plan`` with every candidate unit marked halo first."""
    device_of = {u.uid: u.device for u in plan.units}
    units = tuple(dataclasses.replace(u, halo_first=True) if _candidate(u, device_of) else u for u in plan.units)
    return dataclasses.replace(plan, units=units)


def best_schedule(plan: Plan, graph: LayerGraph, cluster: Cluster) -> tuple[Plan, Timeline]:
    """``plan`` as it is or halo first, whichever the simulator predicts faster (as it is on a tie)."""
    plain = simulate(plan, graph, cluster)
    marked = with_halo_first(plan)
    if marked == plan:
        return plan, plain
    early = simulate(marked, graph, cluster)
    return (marked, early) if early.latency_s < plain.latency_s else (plan, plain)
