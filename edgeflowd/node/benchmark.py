"""The micro-benchmark a daemon runs at start, and again when its conditions change: achieved
GFLOP/s per op kind (dense convolution, depthwise convolution, matrix multiply), the rate of a
pass over a layer's weights and the floor of a unit's cost, with the torch threads it will compute
with; plus the fit of its link's echo times (the echoes themselves go through the broker: the
daemon sends them). The controller combines these with the declared profile and live load, then
refines them from the node's real unit times (controller/control/registry.py,
controller/planner/fit.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeflowd.core.ops import Const, In, OpCall
from edgeflowd.core.packed import conv2d_packed, pack_convolutions, packed_name
from edgeflowd.core.pooling import max_pool2d

__all__ = [
    "LINK_CHUNK",
    "LINK_PING_BYTES",
    "LINK_SIZES",
    "SHARE_WINDOW_S",
    "RateDrift",
    "conv_gflops",
    "cpu_quota",
    "cpu_seconds",
    "cpu_share",
    "fit_link",
    "run_benchmark",
    "unit_overhead_ms",
]


SHARE_WINDOW_S = 0.2
"""Wall time the CPU share is measured over: many CFS periods of a cgroup quota (a board's, the
testbed's 1-10 ms ones) and enough that a burst past a period's quota, which the kernel lets a
task run before it throttles it, weighs little (the 0.1-core testbed device read 0.097-0.102
over 0.1-0.2 s on 2026-12-04)."""


def cpu_seconds() -> float:
    """CPU seconds of one torch thread's work: the process's, over its torch threads. CPU time, not
    wall time: a short op under a CPU quota runs at full speed or waits a whole period, whichever
    the kernel's accounting gives it, so timing it on the wall clock read 12-155 GFLOP/s on the
    same 0.1-core device (and a runtime choosing between two ways to run a convolution by wall
    time chose by chance there). What the quota takes is measured apart, over a window
    (:func:`cpu_share`)."""
    return time.process_time() / max(1, torch.get_num_threads())


def _gflops(op: Callable[[], torch.Tensor], flops: float, repeats: int) -> float:
    """GFLOP/s of ``op`` at full speed (median of its CPU times): :func:`run_benchmark` scales
    it by the share of the CPU the node gets."""
    op()  # warm-up: first-call allocation and kernel selection
    times = []
    for _ in range(repeats):
        start = cpu_seconds()
        op()
        times.append(cpu_seconds() - start)
    return flops / max(statistics.median(times), 1e-9) / 1e9


def _per_call_s(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, weights: list[torch.Tensor], repeats: int
) -> float:
    for w in weights:  # warm-up
        op(x, w)
    times = []
    for _ in range(repeats):
        start = cpu_seconds()
        for w in weights:
            op(x, w)
        times.append((cpu_seconds() - start) / len(weights))
    return statistics.median(times)


def _probe_conv() -> tuple[Callable[[], torch.Tensor], float]:
    """A 3x3 convolution of 64 channels on 56x56 (ResNet's first stage) and its FLOPs, its weights
    packed as the node's units pack them where this torch can (edgeflowd.core.packed; always,
    not by timing, so that the figure does not flip between the two with noise)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 56, 56, generator=gen)
    w = torch.randn(64, 64, 3, 3, generator=gen)
    one = (1, 1)
    kwargs = {"input": In(0), "weight": Const("w"), "bias": None, "stride": one, "padding": one, "dilation": one}
    call = OpCall("F.conv2d", (), {**kwargs, "groups": 1})
    packed = pack_convolutions([(call, tuple(x.shape))], {"w": w}).get(packed_name("w"))
    flops = 2.0 * 64 * 64 * 9 * 56 * 56
    if packed is not None:
        return lambda: conv2d_packed(x, packed, None, one, one, one, 1), flops
    return lambda: F.conv2d(x, w, padding=1), flops


def cpu_share(window_s: float = SHARE_WINDOW_S, op: Callable[[], torch.Tensor] | None = None) -> float:
    """The share of its torch threads' cores this process gets while it computes: CPU time over
    wall time through ``window_s`` of back-to-back convolutions (``op``, else the probe's), at most
    1. Below 1 under a CPU quota (a cgroup's), or where other work shares the cores."""
    op = op or _probe_conv()[0]
    with torch.no_grad():
        op()
        cpu, wall = cpu_seconds(), time.perf_counter()
        while time.perf_counter() - wall < window_s:
            op()
        used, elapsed = cpu_seconds() - cpu, time.perf_counter() - wall
    return min(1.0, used / elapsed) if elapsed > 0 else 1.0


def weights_gbps(repeats: int = 3) -> float:
    """GB/s of one pass over a layer's weights at full speed: a 1x1 convolution with 8 MiB of
    weights on one row and on eight, the fixed part of its time being the pass. The weights rotate
    over 48 MiB, more than a board's cache holds, as a model's layers do (0 when the fit is not
    positive)."""
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(2048, 1024, 1, 1, generator=gen) for _ in range(6)]
    one, eight = torch.randn(1, 1024, 1, 7, generator=gen), torch.randn(1, 1024, 8, 7, generator=gen)
    t1 = _per_call_s(F.conv2d, one, weights, repeats)
    t8 = _per_call_s(F.conv2d, eight, weights, repeats)
    fixed = t1 - (t8 - t1) / 7
    return weights[0].numel() * 4 / fixed / 1e9 if fixed > 0 else 0.0


def conv_gflops(repeats: int = 5, share: float | None = None) -> float:
    """GFLOP/s of the probe convolution (:func:`_probe_conv`) as this node runs it now: its rate at
    full speed times the CPU share it gets (``share``, else measured: :func:`cpu_share`). The whole
    benchmark's dense-convolution rate, and on its own (~0.2 s) the probe an idle daemon runs to
    notice that its speed has changed."""
    op, flops = _probe_conv()
    with torch.no_grad():
        rate = _gflops(op, flops, repeats)
    return round(rate * (cpu_share(op=op) if share is None else share), 2)


def cpu_quota() -> float | None:
    """The CPU share this process's cgroup allows, in cores (cgroup v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``, or v2 ``cpu.max``); None when unlimited or unknown. A board's new
    quota is a new speed at once: the node measures itself again without waiting for its probes
    to agree (``RateDrift``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        try:
            if "cpu" in controllers.split(","):
                base = Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
                quota = int((base / "cpu.cfs_quota_us").read_text())
                period = int((base / "cpu.cfs_period_us").read_text())
                return quota / period if quota > 0 and period > 0 else None
            if controllers == "":
                limit, length = (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.max").read_text().split()
                return int(limit) / int(length) if limit != "max" else None
        except (OSError, ValueError):
            continue
    return None


class RateDrift:
    """Whether an idle node's probes say its conv rate has moved from the one it published: by
    more than ``threshold`` (relative), on ``probes`` probes in a row. One probe is not enough: the
    node's own idleness says nothing of its core's, and a probe that met a burst of other work (a
    controller tracing a model beside it) would publish a rate the node does not have, which the
    planner, discounting other work by the load telemetry reports, would then count twice."""

    def __init__(self, threshold: float = 0.3, probes: int = 2) -> None:
        self.threshold, self.probes = threshold, probes
        self._in_a_row = 0

    def moved(self, published: float, probe: float) -> bool:
        """Record ``probe`` (GFLOP/s); True when the node should benchmark again (always when it
        has published no rate)."""
        if published <= 0:
            self._in_a_row = 0
            return True
        self._in_a_row = self._in_a_row + 1 if abs(probe / published - 1) > self.threshold else 0
        if self._in_a_row < self.probes:
            return False
        self._in_a_row = 0
        return True


def unit_overhead_ms(repeats: int = 200) -> float:
    """The floor of one unit's cost beyond its arithmetic at full speed, in CPU ms: dispatching an
    op on a tiny tensor and framing its output for the wire, as the runtime does for every unit
    (the controller fits the real figure from the node's unit times)."""
    from edgeflowd.core.rows import RowRange  # noqa: PLC0415 - keeps the module's import light
    from edgeflowd.wire.frames import KEY_BYTES, encode_frames  # noqa: PLC0415

    x, w = torch.randn(1, 8, 2, 8), torch.randn(8, 8, 1, 1)
    rows, key = RowRange(0, 2), bytes(KEY_BYTES)  # signing is part of every unit's cost

    def one() -> None:
        with torch.no_grad():
            out = F.conv2d(x, w)
        encode_frames("r-1", "p", "layer:0", "layer", rows, out, 1 << 20, key)

    one()
    start = cpu_seconds()
    for _ in range(repeats):
        one()
    return (cpu_seconds() - start) / repeats * 1e3


LINK_PING_BYTES = 64
LINK_CHUNK = 256 * 1024
LINK_SIZES = (1, 8)
"""The link probe, in three phases so that no direction's traffic starves the other's TCP
acknowledgements (a full uplink queue delays the ACKs of the downlink, and the other way round):
pings of 64 bytes echoed for the per-message latency; then, not subscribed, 1 and 8 messages of
256 KiB published at QoS 1, timed to the broker's last acknowledgement, for the uplink; then one
retained message of 256 KiB and of 1 MiB, timed from subscribing to its arrival, for the downlink.
Each rate is the *difference* of two sizes over their time difference: the fixed costs, and the
bucket a token-bucket shaper (a Wi-Fi driver's, tc's) lets through at line rate, cancel out."""


def fit_link(
    pings_s: Sequence[float], up: tuple[float, float, float, float], down: tuple[float, float, float, float]
) -> dict[str, float]:
    """Link figures from echo times through the broker: ``link_latency_ms`` per side is half the
    fastest ping (a slower one waited behind other work on this node: the load's share, which
    the controller plans from telemetry, not the link's); ``link_up_mbps`` and
    ``link_down_mbps`` from ``(bytes, seconds)`` pairs of a small and a large transfer each
    (``(b1, t1, b2, t2)``). Where the larger one was not slower (a link so fast that noise hides
    the difference, as on loopback), the larger one's own rate stands in: it counts the latency
    too, so it errs low. A figure whose transfers failed is left out."""
    out: dict[str, float] = {}
    if pings_s:
        out["link_latency_ms"] = round(min(pings_s) / 2 * 1e3, 3)
    for key, (b1, t1, b2, t2) in (("link_up_mbps", up), ("link_down_mbps", down)):
        if b2 > b1 and t1 > 0 and t2 > t1:
            out[key] = round(8 * (b2 - b1) / (t2 - t1) / 1e6, 2)
        elif b2 > b1 and t1 > 0 and t2 > 0:
            out[key] = round(8 * b2 / t2 / 1e6, 2)
    return out


def run_benchmark(repeats: int = 5, stamped: bool = False) -> dict[str, float]:
    """Median rates of representative ops of every kind the cost model knows (each counted in
    FLOPs as controller/graph/flops.py counts it: one per element and op for element-wise work,
    one per window element for pooling, one per output element for a concatenation or an
    upsampling), the weight-pass rate and a unit's floor (about 1 s on one core of a 2020s x86).
    Each is timed in CPU time and scaled by the share of the CPU the node gets (``cpu_share``,
    measured once over :data:`SHARE_WINDOW_S`), so that a quota slows every figure alike however
    short its op. The cheap ops run four times as often, so that their medians are as steady.
    ``stamped``: with the wall-clock time it was measured at (``measured_at``), as a node
    publishes it."""
    gen = torch.Generator().manual_seed(0)
    many = 4 * repeats
    probe, probe_flops = _probe_conv()  # packed once, for the share and the conv rate
    share = cpu_share(op=probe)
    with torch.no_grad():
        xd = torch.randn(1, 256, 56, 56, generator=gen)
        wd = torch.randn(256, 1, 3, 3, generator=gen)
        a = torch.randn(512, 512, generator=gen)
        skip = torch.randn(1, 256, 56, 56, generator=gen)
        stem = torch.randn(1, 64, 112, 112, generator=gen)
        half = torch.randn(1, 128, 40, 40, generator=gen)
        rates = {
            "dwconv_gflops": _gflops(lambda: F.conv2d(xd, wd, padding=1, groups=256), 2.0 * 256 * 9 * 56 * 56, repeats),
            "matmul_gflops": _gflops(lambda: a @ a, 2.0 * 512**3, repeats),
            # A residual add and its ReLU (ResNet's), the 3x3 stride-2 stem pool, YOLO's neck.
            "eltwise_gflops": _gflops(lambda: torch.relu_(xd + skip), 2.0 * xd.numel(), many),
            "pool_gflops": _gflops(lambda: max_pool2d(stem, 3, 2, 1), 9.0 * 64 * 56 * 56, many),
            "concat_gflops": _gflops(lambda: torch.cat([half, half], 1), 2.0 * half.numel(), many),
            "upsample_gflops": _gflops(
                lambda: F.interpolate(half, scale_factor=2.0, mode="nearest"), 4.0 * half.numel(), many
            ),
            "weights_gbps": weights_gbps(),
        }
        figures = {
            "conv_gflops": round(_gflops(probe, probe_flops, repeats) * share, 2),
            **{key: round(rate * share, 2) for key, rate in rates.items()},
            "unit_overhead_ms": round(unit_overhead_ms() / max(share, 1e-3), 4),
            "cpu_share": round(share, 3),
            "threads": float(torch.get_num_threads()),
        }
    return {**figures, "measured_at": round(time.time(), 3)} if stamped else figures
