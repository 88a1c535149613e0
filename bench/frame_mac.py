"""What signing and checking every frame (HMAC-SHA256, docs/protocol.md "Trust") costs a request.

    .venv/bin/python bench/frame_mac.py [--models resnet50 yolov5s] [--devices 3] [--rounds 7] [--out bench/results]

One request of each model, split evenly over ``--devices`` node runtimes and a requester's, run on
this thread over the in-memory bus: every frame is encoded, signed, checked and decoded exactly as
between daemons, and every unit computed, so the request's time is all the CPU a cluster spends on
it apart from the broker. Each round runs it once as shipped and once with the MAC replaced by a
constant (this process only: nothing ships without it), alternating; the cost is the median over
rounds of the difference against the signed run, beside the data the frames carry. Writes
``frame_mac.json`` and ``frame_mac.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
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


@contextmanager
def unsigned() -> Iterator[None]:
    """Every MAC a constant, in this process: the same frames, the same checks, no hashing."""
    real: Callable[..., bytes] = hmac.digest
    hmac.digest = lambda key, msg, digest: bytes(32)
    try:
        yield
    finally:
        hmac.digest = real


def measure(model_spec: str, devices: int, rounds: int) -> dict[str, Any]:
    model, shape = build_model(model_spec, None, 0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    graph = trace_model(model, x, model_spec)
    plan = build_plan(graph, even_partition(graph, devices))

    def once() -> tuple[float, int]:
        t0 = time.perf_counter()
        _, _, nbytes = run_plan(plan, x, graph.tensors, allowed_resolver)
        return time.perf_counter() - t0, nbytes

    once()  # first-touch allocations
    signed, plain, nbytes = [], [], 0
    for _ in range(rounds):
        s, nbytes = once()
        with unsigned():
            p, _ = once()
        signed.append(s)
        plain.append(p)
    cost = statistics.median(s - p for s, p in zip(signed, plain, strict=True))
    return {
        "devices": devices,
        "mib_per_request": round(nbytes / 2**20, 2),
        "signed_ms": round(statistics.median(signed) * 1e3, 1),
        "unsigned_ms": round(statistics.median(plain) * 1e3, 1),
        "mac_ms": round(cost * 1e3, 2),
        "mac_share": round(cost / statistics.median(signed), 4),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = list(report["models"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    shares = [report["models"][m]["mac_share"] * 100 for m in models]
    ax.bar(models, shares, color="#4c72b0")
    ax.axhline(3.0, color="k", linestyle="--", label="goal: 3% of a request's time")
    for i, m in enumerate(models):
        ax.text(i, shares[i], f"{report['models'][m]['mib_per_request']} MiB", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("HMAC-SHA256 share of the request, %")
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
    report: dict[str, Any] = {"check": "hmac-sha256", "models": {}}
    for model in args.models:
        report["models"][model] = measure(model, args.devices, args.rounds)
        print(model, report["models"][model])
    save_report(report, args.out, "frame_mac", plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
