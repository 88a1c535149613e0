"""``edgeflowd --measure-profile``: a device profile YAML from what this board measures, to save
under ``profiles/devices/`` instead of estimating figures by hand.

The compute figures come from the start-up benchmark (edgeflowd/node/benchmark.py) with the
torch threads the daemon would use; the link from echoes through the broker when one answers
(each direction timed on its own). Every figure is commented with what it is and when it was
measured.
"""

from __future__ import annotations

import datetime
import platform
from collections.abc import Mapping

import psutil
import yaml

from edgeflowd.profiles.devices import MEASURED_KINDS, DeviceProfile

__all__ = ["profile_yaml"]


def profile_yaml(
    name: str, bench: Mapping[str, float], threads: int, declared: DeviceProfile | None, broker: str
) -> str:
    """The profile document, with comments saying what was measured, how, and when."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    conv = bench["conv_gflops"]
    per_kind = {k: round(bench[f"{k}_gflops"] / conv, 3) for k in MEASURED_KINDS if bench.get(f"{k}_gflops")}
    up, down = bench.get("link_up_mbps"), bench.get("link_down_mbps")
    latency = bench.get("link_latency_ms")
    fallback = declared.link if declared else None
    doc = {
        "schema": "edgeflow.device/1",
        "name": name,
        "description": f"measured by edgeflowd on {platform.node()} ({platform.machine()}), {when}",
        "compute": {
            "gflops": round(conv, 2),
            "per_kind": per_kind,
            "op_overhead_ms": round(bench.get("unit_overhead_ms", 0.2), 4),
            "weights_gbps": round(bench.get("weights_gbps", 0.0), 2),
        },
        "memory_mb": int(psutil.virtual_memory().total / 2**20 * 0.5),
        "threads": threads,
        "link": {
            "up_mbps": round(up or (fallback.up_mbps if fallback else 100.0), 1),
            "down_mbps": round(down or (fallback.down_mbps if fallback else 100.0), 1),
            "latency_ms": round(latency or (fallback.latency_ms if fallback else 1.0), 3),
        },
    }
    if up and down:
        link_note = (
            f"# link: through the broker at {broker}: echoed pings for the per-message latency; the uplink\n"
            "# from acknowledged publishes, the downlink from retained messages, 256 KiB against 1 MiB.\n"
        )
    else:
        why = "its rates could not be fitted" if latency else "no broker answered"
        link_note = f"# link: NOT measured ({why} at {broker}); {'declared' if fallback else 'a guess'}.\n"
    header = (
        "# yaml-language-server: $schema=../schema/device.schema.json\n"  # saved under profiles/devices/
        f"# Measured by `edgeflowd --measure-profile` on {when}, {threads} torch thread(s) (measure an idle board).\n"
        "# gflops: a 3x3 convolution of 64 channels on 56x56 (weights packed where oneDNN can, as units\n"
        "# run it); per_kind: the rates of the other kinds over it (depthwise convolution, matrix product,\n"
        "# an add and its ReLU, a 3x3 max pool, a concatenation, a nearest 2x upsampling);\n"
        "# op_overhead_ms: dispatching a tiny op and framing its output;\n"
        "# weights_gbps: one pass over a layer's weights (a 1x1 convolution with 8 MiB of them, rotating).\n"
        "# memory_mb: half of this board's RAM; lower it if other work needs more.\n"
        + link_note
        + "# The controller measures again as the board runs (its benchmark at start, the times of its units):\n"
        "# these figures only seed its plans until then.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)
