"""Telemetry sampling: the node's load as psutil sees it, plus its counters."""

from __future__ import annotations

import os
from collections.abc import Mapping

import psutil

from edgeflowd.messages import Telemetry

__all__ = ["sample_telemetry"]


def _temperature_c() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    try:
        sensors = reader() if reader else {}
    except OSError:
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current]
    return max(readings) if readings else None


def sample_telemetry(counts: Mapping[str, int], generation: int, pending: int) -> Telemetry:
    """``cpu_percent`` is the whole machine's since the previous call (psutil keeps the baseline)."""
    known = {"malformed", "dropped", "stale", "errors", "units_run", "frames_in", "frames_out", "bytes_out"}
    return Telemetry(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_percent=psutil.virtual_memory().percent,
        load_avg=[round(v, 2) for v in os.getloadavg()],
        temperature_c=_temperature_c(),
        generation=generation,
        pending=pending,
        **{k: int(v) for k, v in counts.items() if k in known},
    )
