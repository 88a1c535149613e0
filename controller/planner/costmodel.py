"""Cost model: how long a unit computes and how long a forwarded slice travels (pure).

- compute: ``op_overhead + weight bytes / weights rate + FLOPs(rows) / rate(device, op kind,
  load)``; a layer's FLOPs are spread evenly over its rows. The weights term is what a unit
  costs whatever its rows: every unit of a layer reads all its weights (on one core of this
  project's test machine, a 3x3 convolution of 512 channels on a 7x7 map took 1.5 ms for one
  row and 6.4 ms for seven: 0.7 ms per pass over its 9.4 MB of weights, ~13 GB/s).
- transfer: every slice goes device → broker → device, so it pays the sender's uplink and the
  receiver's downlink (chunked frames pipeline through the broker), plus both per-message
  latencies. Forwards between units on the same device cost nothing (they never leave the process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.graph.layers import Layer
from edgeflowd.core.sizes import FRAME_HEADER_BYTES, FRAME_ROOM_BYTES
from edgeflowd.profiles.devices import Device, Link

__all__ = [
    "Hop",
    "comm_s_per_byte",
    "compute_s",
    "compute_terms",
    "memory_bytes",
    "per_row_s",
    "row_bytes",
    "send",
    "transfer_s",
    "unit_fixed_s",
]


def row_bytes(layer: Layer) -> float:
    """Bytes of one output row of ``layer`` (float32)."""
    return layer.out_bytes / layer.height


def memory_bytes(layer: Layer, rows: int) -> float:
    """What a unit of ``rows`` rows of ``layer`` keeps in memory: the weights and its output."""
    return layer.param_bytes + rows * row_bytes(layer)


def per_row_s(layer: Layer, device: Device) -> float:
    return layer.flops / layer.height / device.rate(layer.kind)


def unit_fixed_s(layer: Layer, device: Device) -> float:
    """Seconds one unit (or one halo-first piece) of ``layer`` costs on ``device`` whatever its
    rows: the per-unit overhead and a pass over the layer's weights."""
    overhead, weights, _ = compute_terms(layer, 1, device)
    return overhead + weights


def compute_terms(layer: Layer, rows: int, device: Device) -> tuple[float, float, float]:
    """The three terms of :func:`compute_s`: per-unit overhead, the weight pass, and the rows'
    arithmetic (what :mod:`controller.planner.fit` fits each of from measured unit times)."""
    if rows <= 0:
        return 0.0, 0.0, 0.0
    rate = device.weights_rate()
    weights = layer.param_bytes / rate if rate > 0 else 0.0
    return device.profile.op_overhead_ms / 1e3, weights, rows * per_row_s(layer, device)


def compute_s(layer: Layer, rows: int, device: Device) -> float:
    """Seconds for ``device`` to compute ``rows`` rows of ``layer`` (0 for no rows)."""
    return sum(compute_terms(layer, rows, device))


@dataclass(frozen=True)
class Hop:
    up_end: float  # when the sender's uplink is free again
    down_end: float  # when the receiver's downlink is free again
    arrival: float  # when the receiver has the whole message


def send(nbytes: float, src: Link, dst: Link, ready: float = 0.0, up_free: float = 0.0, down_free: float = 0.0) -> Hop:
    """One message of ``nbytes`` payload, sent when ``ready``, queued behind the links' earlier
    traffic. Latency is per message and per side; it delays but does not occupy a link."""
    # Slices larger than a frame's room travel as several messages; the broker forwards each chunk
    # as soon as it has it, so the sender's uplink and the receiver's downlink work in a pipeline.
    chunks = max(1, math.ceil(nbytes / FRAME_ROOM_BYTES))
    per_chunk = 8.0 * (nbytes / chunks + FRAME_HEADER_BYTES)
    up_s, down_s = per_chunk / (src.up_mbps * 1e6), per_chunk / (dst.down_mbps * 1e6)
    up_end, down_end = max(ready, up_free), down_free
    for _ in range(chunks):
        up_end += up_s
        down_end = max(up_end + src.latency_ms / 1e3, down_end) + down_s
    return Hop(up_end, down_end, down_end + dst.latency_ms / 1e3)


def transfer_s(nbytes: float, src: Link, dst: Link) -> float:
    """Seconds for one message of ``nbytes`` payload from ``src`` through the broker to ``dst``
    on idle links."""
    return send(nbytes, src, dst).arrival


def comm_s_per_byte(src: Link, dst: Link) -> float:
    """Marginal seconds per payload byte through both links (the LP's linear transfer cost)."""
    return 8.0 / (src.up_mbps * 1e6) + 8.0 / (dst.down_mbps * 1e6)
