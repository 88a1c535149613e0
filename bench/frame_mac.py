"""What signing and checking every frame (keyed BLAKE3, docs/protocol.md "Trust") costs a request.

    .venv/bin/python bench/frame_mac.py [--models resnet50 yolov5s] [--devices 3] [--rounds 7] [--out bench/results]

One request of each model, split evenly over ``--devices`` node runtimes and a requester's, run on
this thread over the in-memory bus: every frame is encoded, signed, checked and decoded exactly as
between daemons, and every unit computed, so the request's time is all the CPU a cluster spends on
it apart from the broker. The time spent computing MACs (signing and checking) is timed inside the
request; its share of the request is the median over rounds, beside the data the frames carry.
Each round runs the request with the shipped MAC (keyed BLAKE3) and with the previous format's
HMAC-SHA256, alternating. Writes ``frame_mac.json`` and ``frame_mac.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from save import save_report  # bench/save.py, beside this script

from controller.control.verify import run_plan
from controller.graph.trace import trace_model
from controller.planner.partitions import even_partition
from controller.planner.plan import build_plan
from controller.zoo import build_model
from edgeflowd.core.ops import allowed_resolver
from edgeflowd.node.allocator import keep_freed_memory
from edgeflowd.wire import frames


def _hmac_sha256(key: bytes, *parts: bytes | memoryview) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


TAGS: dict[str, Callable[..., bytes]] = {
    "keyed-blake3": frames.frame_tag,  # shipped (frames EFF3)
    "hmac-sha256": _hmac_sha256,  # the previous format's (EFF2), for comparison
}


@contextmanager
def timed_tags(name: str, spent: list[float]) -> Iterator[None]:
    """Every frame's MAC computed by ``TAGS[name]``, in this process only, its time added to
    ``spent[0]``."""
    real: Callable[..., bytes] = frames.frame_tag
    tag = TAGS[name]

    def timed(key: bytes, *parts: bytes | memoryview) -> bytes:
        t0 = time.perf_counter()
        out = tag(key, *parts)
        spent[0] += time.perf_counter() - t0
        return out

    frames.frame_tag = timed
    try:
        yield
    finally:
        frames.frame_tag = real


def measure(model_spec: str, devices: int, rounds: int) -> dict[str, Any]:
    model, shape = build_model(model_spec, None, 0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    graph = trace_model(model, x, model_spec)
    plan = build_plan(graph, even_partition(graph, devices))

    def once(name: str) -> tuple[float, float, int]:
        spent = [0.0]
        with timed_tags(name, spent):
            t0 = time.perf_counter()
            _, _, nbytes = run_plan(plan, x, graph.tensors, allowed_resolver)
            return time.perf_counter() - t0, spent[0], nbytes

    once("keyed-blake3")  # first-touch allocations
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in TAGS}
    nbytes = 0
    for _ in range(rounds):
        for name in TAGS:  # alternating, so that the machine's drift falls on both alike
            total, mac, nbytes = once(name)
            runs[name].append((total, mac))
    report: dict[str, Any] = {"devices": devices, "mib_per_request": round(nbytes / 2**20, 2)}
    for name, timings in runs.items():
        key = name.replace("-", "_")
        report[f"{key}_request_ms"] = round(statistics.median(t for t, _ in timings) * 1e3, 1)
        report[f"{key}_mac_ms"] = round(statistics.median(m for _, m in timings) * 1e3, 2)
        report[f"{key}_share"] = round(statistics.median(m / t for t, m in timings), 4)
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = list(report["models"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    shares = [report["models"][m]["keyed_blake3_share"] * 100 for m in models]
    before = [report["models"][m]["hmac_sha256_share"] * 100 for m in models]
    at = range(len(models))
    ax.bar([i - 0.2 for i in at], before, 0.4, color="#c44e52", label="HMAC-SHA256 (frames EFF2)")
    ax.bar([i + 0.2 for i in at], shares, 0.4, color="#4c72b0", label="keyed BLAKE3 (frames EFF3, shipped)")
    ax.set_xticks(list(at), models)
    ax.axhline(3.0, color="k", linestyle="--", label="goal: 3% of a request's time")
    for i, m in enumerate(models):
        top = max(shares[i], before[i])
        ax.text(i, top, f"{report['models'][m]['mib_per_request']} MiB", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("the MAC's share of the request, %")
    ax.set_title("signing and checking every frame (one thread, in-memory bus)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "yolov5s"])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    report: dict[str, Any] = {"shipped": "keyed-blake3", "models": {}}
    for model in args.models:
        report["models"][model] = measure(model, args.devices, args.rounds)
        print(model, report["models"][model])
    save_report(report, args.out, "frame_mac", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
