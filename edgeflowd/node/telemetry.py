"""Telemetry sampling: the node's load as psutil sees it, plus its counters."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec
import psutil

from edgeflowd.wire.messages import Telemetry

__all__ = ["sample_telemetry"]


def _temperature_c() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    try:
        sensors = reader() if reader else {}
    except OSError:
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current]
    return max(readings) if readings else None


_SELF = psutil.Process()


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return list(range(psutil.cpu_count() or 1))


def sample_telemetry(
    counts: Mapping[str, int],
    generation: int,
    pending: int,
    unit_s: dict[str, dict[str, list[float]]] | None = None,
    interval_s: float = 0.0,
    quiet_s: float = 0.0,
    conv_gflops: float = 0.0,
) -> Telemetry:
    """CPU figures are since the previous call (psutil keeps the baseline), over this process's
    allowed CPUs; ``unit_s``: the units' times since then, by plan; ``conv_gflops``: the node's
    measured speed, of which others' load leaves it a share."""
    cpus = _cpus()
    per_cpu = psutil.cpu_percent(interval=None, percpu=True)
    mine = [per_cpu[c] for c in cpus if c < len(per_cpu)] or per_cpu
    known = set(Telemetry.__struct_fields__)
    unit_s = unit_s or {}
    request_s = 0.0  # the node's work per request of each plan it ran, together
    for units in unit_s.values():
        requests = max((runs for runs, _ in units.values()), default=0)  # each unit runs once per request
        request_s += sum(seconds for _, seconds in units.values()) / requests if requests else 0.0
    telemetry = Telemetry(
        cpu_percent=round(sum(mine) / len(mine), 1),
        process_cpu_percent=round(_SELF.cpu_percent(interval=None) / len(cpus), 1),
        memory_percent=psutil.virtual_memory().percent,
        load_avg=[round(v, 2) for v in os.getloadavg()],
        temperature_c=_temperature_c(),
        generation=generation,
        pending=pending,
        unit_s=unit_s,
        interval_s=interval_s,
        quiet_s=round(quiet_s, 3),
        request_ms=round(1000 * request_s, 3),
        **{k: int(v) for k, v in counts.items() if k in known},
    )
    return msgspec.structs.replace(telemetry, gflops=round(conv_gflops * (1 - telemetry.others_load), 2))
