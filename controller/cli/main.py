"""``edgeflow`` command line. Entry points configure logging and print for people; the
modules they call stay pure."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from controller.cli.args import CLUSTER_HELP, add_schedule_argument, input_shape, positive_int
from controller.cli.cluster import add_cluster_commands
from controller.cli.service import add_service_commands
from controller.control.verify import TOLERANCE, check_partition, partitions_to_check, reference_outputs
from controller.graph.layers import LayerGraph
from controller.graph.trace import trace_model
from controller.planner.gantt import draw_gantt
from controller.planner.methods import METHODS, lower_bound_s, plan_model
from controller.planner.report import compare_table, method_summary, plan_figures
from controller.zoo import ZOO, build_model
from edgeflowd import __version__
from edgeflowd.errors import EdgeFlowError, PlanError
from edgeflowd.profiles.devices import load_cluster

__all__ = ["main"]


def _cmd_verify(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model, shape = build_model(args.model, args.input_shape, args.seed)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    graph = trace_model(model, x, args.model)
    want = reference_outputs(model, x)
    print(f"{graph.summary()}; input {'x'.join(map(str, shape))}; traced in {time.perf_counter() - t0:.1f} s")
    for layer in graph.compute_layers:
        if layer.note:
            print(f"  note: layer {layer.name}: {layer.note}")
    print(
        f"{'partition':<12} {'units':>6} {'messages':>9} {'sent MiB':>9} "
        f"{'max abs err':>12} {'relative':>10} {'time s':>7}  result"
    )
    failures = 0
    for name, partition in partitions_to_check(graph, args.devices, args.random_partitions, args.seed):
        c = check_partition(name, graph, partition, x, want)
        failures += not c.ok
        print(
            f"{c.name:<12} {c.units:>6} {c.messages:>9} {c.bytes / 2**20:>9.2f} {c.max_abs:>12.3e} "
            f"{c.relative:>10.2e} {c.seconds:>7.2f}  {'ok' if c.ok else 'FAIL'}",
            flush=True,
        )
    total = args.random_partitions + 1
    print(
        f"{total - failures}/{total} partitions exact within {TOLERANCE:g} (relative); "
        f"{time.perf_counter() - t0:.1f} s in all"
    )
    return 1 if failures else 0


def _load_graph(args: argparse.Namespace) -> tuple[LayerGraph, tuple[int, ...]]:
    model, shape = build_model(args.model, args.input_shape, args.seed)
    return trace_model(model, torch.zeros(shape), args.model), shape


def _cmd_plan(args: argparse.Namespace) -> int:
    graph, shape = _load_graph(args)
    cluster = load_cluster(args.cluster)
    print(f"{graph.summary()}; input {'x'.join(map(str, shape))}")
    print(f"cluster {cluster.name}: " + ", ".join(f"{d.id} ({d.profile.name})" for d in cluster.devices))
    names = list(METHODS) if args.compare else [args.method]
    results = {}
    for name in names:
        try:
            results[name] = plan_model(graph, cluster, name, schedule=args.schedule)
        except PlanError as exc:
            if name == args.method:
                raise
            print(f"{name}: skipped: {exc}")
    chosen = results[args.method]
    for line in method_summary(graph, cluster, chosen):
        print(line)
    bound = lower_bound_s(graph, cluster)
    if args.compare:
        print()
        for line in compare_table(results, bound):
            print(line)
    if args.json:
        report = {
            "model": args.model,
            "cluster": cluster.name,
            "input_shape": list(shape),
            "lower_bound_s": bound,
            "methods": {name: plan_figures(p) for name, p in results.items()},
            "partition": {
                "method": args.method,
                "devices": [d.id for d in cluster.devices],
                "rows": {name: [[r.start, r.stop] for r in ranges] for name, ranges in chosen.partition.rows.items()},
            },
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.gantt:
        draw_gantt(chosen.timeline, cluster, f"{args.model} on {cluster.name}, {args.method}", args.gantt)
        print(f"wrote {args.gantt}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeflow", description="Distributed DNN inference across heterogeneous edge devices."
    )
    parser.add_argument("--version", action="version", version=f"edgeflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser(
        "verify",
        help="check that split execution equals the unsplit model",
        description="Run the even split and random partitions unit by unit and compare with the unsplit model.",
    )
    verify.add_argument("--model", required=True, help=f"zoo name ({', '.join(ZOO)}) or package.module:factory")
    verify.add_argument(
        "--input-shape", type=input_shape, default=None, help="NxCxHxW (default: the zoo entry's, else 1x3x224x224)"
    )
    verify.add_argument("--devices", type=positive_int, default=4)
    verify.add_argument("--random-partitions", type=int, default=5, metavar="K")
    verify.add_argument("--seed", type=int, default=0)
    verify.set_defaults(func=_cmd_verify)
    plan = sub.add_parser(
        "plan",
        help="partition a model over a cluster and predict its latency",
        description="Plan a model on a cluster profile and print the predicted timeline.",
    )
    plan.add_argument("--model", required=True, help=f"zoo name ({', '.join(ZOO)}) or package.module:factory")
    plan.add_argument("--cluster", required=True, help=CLUSTER_HELP)
    plan.add_argument("--method", choices=list(METHODS), default="edgeflow")
    add_schedule_argument(plan)
    plan.add_argument("--compare", action="store_true", help="plan with every method and compare")
    plan.add_argument("--json", metavar="OUT", help="write figures and the chosen partition as JSON")
    plan.add_argument("--gantt", metavar="OUT.png", help="draw the predicted per-device timeline")
    plan.add_argument("--input-shape", type=input_shape, default=None)
    plan.add_argument("--seed", type=int, default=0)
    plan.set_defaults(func=_cmd_plan)
    add_cluster_commands(sub, f"zoo name ({', '.join(ZOO)}) or package.module:factory")
    add_service_commands(sub, f"zoo name ({', '.join(ZOO)}) or package.module:factory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EdgeFlowError as exc:
        print(f"edgeflow {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
