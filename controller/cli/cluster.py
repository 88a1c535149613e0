"""``edgeflow deploy`` and ``edgeflow infer``: the commands that talk to a broker."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from controller.cli.args import (
    CLUSTER_HELP,
    add_broker_arguments,
    add_rates_argument,
    add_schedule_argument,
    broker_settings,
    input_shape,
    positive_float,
    positive_int,
)
from controller.control.deploy import deploy_plans
from controller.control.measured import measured_cluster
from controller.control.requester import InferenceClient, Result
from controller.control.traced import draw_request
from controller.control.verify import TOLERANCE, reference_outputs, relative_error
from controller.graph.trace import trace_model
from controller.lab.demo import CLUSTER as DEMO_CLUSTER
from controller.lab.demo import CORES as DEMO_CORES
from controller.lab.demo import DEFAULT_BASELINES, demo_table, run_demo
from controller.lab.launch import unwind_on_signals
from controller.planner.methods import METHODS, plan_model
from controller.planner.methods.evaluate import less_memory, memory_used
from controller.terminal import progress_bar
from controller.zoo import build_model
from edgeflowd.errors import EdgeFlowError
from edgeflowd.profiles.devices import load_cluster
from edgeflowd.wire.messages import PlanInfo

__all__ = ["add_cluster_commands"]

_FAILURES_SHOWN = 10  # a burst refused as busy would print a line per request


def _cmd_deploy(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cluster = load_cluster(args.cluster)
    if args.rates == "measured":  # before tracing: the nodes' load must not be this process's own
        cluster = measured_cluster(broker_settings(args), cluster, args.topic_cluster or cluster.name, args.timeout)
        print(
            "planned on what the nodes measured: "
            + ", ".join(f"{d.id} {d.profile.gflops:.1f} GFLOP/s (others' load {d.load:.0%})" for d in cluster.devices)
        )
    if len(args.model) != len(set(args.model)) or (args.input_shape and len(args.model) > 1):
        raise EdgeFlowError(f"--model {' --model '.join(args.model)}: each model once, and --input-shape with one only")
    nodes = [d.id for d in cluster.devices]
    plans, taken = [], dict.fromkeys(nodes, 0.0)
    for spec in args.model:  # each planned on the memory the models before it leave
        model, shape = build_model(spec, args.input_shape, args.seed)
        graph = trace_model(model, torch.zeros(shape), spec)
        planned = plan_model(graph, less_memory(cluster, taken), args.method, schedule=args.schedule, deployable=True)
        for device, used in enumerate(memory_used(planned.plan, graph)):
            taken[nodes[device]] += used
        print(
            f"{graph.summary()}; planned with {args.method} in {planned.plan_time_s:.2f} s; "
            f"predicted {planned.latency_s * 1e3:.1f} ms"
        )
        for device, node in enumerate(nodes):
            units = planned.plan.on_device(device)
            rows = sum(len(u.rows) for u in units)
            print(f"  {node:<16} {len(units):>4} units, {rows:>6} rows")
        plans.append((planned, graph))
    infos = deploy_plans(broker_settings(args), args.topic_cluster or cluster.name, plans, nodes, args.timeout, print)
    for info in infos:
        print(
            f"generation {info.generation} (plan {info.plan}) ready on {len(nodes)} nodes "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    return 0


def _inputs(args: argparse.Namespace, shape: tuple[int, ...]) -> list[torch.Tensor]:
    if args.input:
        array = np.load(args.input, allow_pickle=False)  # never unpickle a user's file
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if tuple(x.shape) != shape:
            raise EdgeFlowError(f"{args.input}: shape {tuple(x.shape)}, the deployed plan takes {shape}")
        return [x] * args.repeat
    return [torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + i)) for i in range(args.repeat)]


def _cmd_infer(args: argparse.Namespace) -> int:
    client = InferenceClient.connect(
        broker_settings(args),
        args.cluster,
        args.model,
        tap=args.traffic,
        plan_wait_s=args.plan_wait,
    )
    try:
        inputs = _inputs(args, client.input_shape)
        admits = client.info.admits
        if 0 < admits < args.concurrency:
            print(f"plan {client.info.plan} admits {admits} requests at once: those beyond are refused as busy")
        tick = progress_bar(len(inputs))
        results = client.run(iter(inputs), args.concurrency, args.timeout, on_result=tick)
        if args.timeline:
            print(draw_request(client, results, args.timeline))
    finally:
        client.close()
    info = client.info
    _report(info, results, client, args)
    failed = [r for r in results if not r.ok]
    status = 1 if failed else 0
    if args.check:
        status = max(status, _check(args, info, inputs, results))
    if args.output:
        first = next((r for r in results if r.ok), None)
        if first is not None and first.outputs is not None:
            arrays = [t.numpy() for t in first.outputs]
            if len(arrays) == 1:
                np.save(args.output, arrays[0])
            else:
                np.savez(args.output, *arrays)
            print(f"wrote {args.output}")
    return status


def _report(info: PlanInfo, results: list[Result], client: InferenceClient, args: argparse.Namespace) -> None:
    ok = [r.latency_s * 1e3 for r in results if r.ok]
    print(
        f"{info.model} plan {info.plan} ({info.method}, predicted {info.predicted_ms:.1f} ms) on "
        f"{len(info.nodes)} nodes: {len(ok)}/{len(results)} requests succeeded, "
        f"{args.concurrency} in flight"
    )
    if ok:
        p50, p90, p99 = np.percentile(ok, [50, 90, 99])
        print(f"latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  min {min(ok):.1f}  max {max(ok):.1f}")
    failed = [r for r in results if not r.ok]
    for r in failed[:_FAILURES_SHOWN]:
        print(f"  failed: {r.error}")
    if len(failed) > _FAILURES_SHOWN:
        busy = sum(r.error.startswith("busy: ") for r in failed)
        print(f"  ... and {len(failed) - _FAILURES_SHOWN} more failed ({busy} of all {len(failed)} refused as busy)")
    if client.traffic is not None and client.traffic.by_request:
        messages, mib = client.traffic.per_request()
        print(
            f"broker data traffic per request: {messages:.1f} messages, {mib:.2f} MiB "
            "(inputs, slices between nodes, results)"
        )


def _check(args: argparse.Namespace, info: PlanInfo, inputs: list[torch.Tensor], results: list[Result]) -> int:
    model, _ = build_model(args.model, tuple(info.input_shape), args.seed)
    worst, checked = 0.0, 0
    for x, r in zip(inputs, results, strict=True):
        if r.outputs is not None:
            worst = max(worst, relative_error(r.outputs, reference_outputs(model, x))[1])
            checked += 1
    if not checked:  # nothing to compare is no verdict at all, least of all "ok"
        print(f"max relative error against the local model: none of {len(results)} results arrived: FAIL")
        return 1
    verdict = "ok" if worst <= TOLERANCE else "FAIL"
    print(
        f"max relative error against the local model, over {checked} of {len(results)} results: "
        f"{worst:.2e} (tolerance {TOLERANCE:g}): {verdict}"
    )
    return 0 if worst <= TOLERANCE else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    unwind_on_signals()
    cluster = load_cluster(args.cluster)
    print(
        f"EdgeFlow demo: {args.model} on {cluster.name}, {len(cluster)} emulated devices sharing "
        f"{args.cores:g} of this machine's cores"
    )
    try:
        rows = run_demo(
            args.model,
            args.methods,
            args.requests,
            args.broker,
            cluster_spec=args.cluster,
            cores=args.cores,
            timelines=Path(args.timelines) if args.timelines else None,
        )
    except KeyboardInterrupt:
        print("interrupted; the broker and the daemons were stopped", file=sys.stderr)
        return 130
    print()
    for line in demo_table(rows):
        print(line)
    print(
        "measured: one request in flight; predicted: the controller's cost model, fitted to what the nodes "
        "measured (the cluster file's speeds only set the emulated quotas and links)"
    )
    return 0


def add_cluster_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], model_help: str) -> None:
    deploy = sub.add_parser(
        "deploy",
        help="plan a model on a cluster and publish the nodes' assignments",
        description="Plan, publish each node's retained assignment and weights, and wait until every "
        "node reports the new generation ready.",
    )
    deploy.add_argument(
        "--model",
        required=True,
        action="append",
        help=model_help + "; again for each further model: the models the cluster serves from then on",
    )
    deploy.add_argument("--cluster", required=True, help=CLUSTER_HELP)
    add_broker_arguments(deploy)
    deploy.add_argument("--method", choices=[m for m in METHODS if m != "optimal"], default="edgeflow")
    add_schedule_argument(deploy)
    deploy.add_argument("--topic-cluster", metavar="NAME", help="topic root name (default: the cluster's name)")
    deploy.add_argument("--input-shape", type=input_shape, default=None)
    deploy.add_argument("--seed", type=int, default=0, help="seed of the model's random weights")
    deploy.add_argument(
        "--timeout",
        type=float,
        default=150.0,
        help="seconds to wait for every node (default 150: longer than a node's own 120 s for its weights, "
        "so that a node that cannot fetch them says why before the deploy gives up)",
    )
    add_rates_argument(deploy, "the speeds, load and links the nodes measured (they must be running)")
    deploy.set_defaults(func=_cmd_deploy)
    infer = sub.add_parser(
        "infer",
        help="send requests to the deployed plan and report latency",
        description="Send inputs to the plan deployed on a cluster and wait for the correlated results.",
    )
    infer.add_argument("--model", required=True, help="the model the deployed plan must run")
    add_broker_arguments(infer)
    infer.add_argument("--cluster", default="default", help="cluster name (topic root) the plan was deployed to")
    infer.add_argument("--input", metavar="FILE.npy", help="input array (default: random inputs from --seed)")
    infer.add_argument("--repeat", type=positive_int, default=1, help="number of requests")
    infer.add_argument("--concurrency", type=positive_int, default=1, help="requests in flight at once")
    infer.add_argument("--output", metavar="FILE.npy", help="save the first result (.npz for several outputs)")
    infer.add_argument("--timeout", type=float, default=30.0, help="seconds before a request fails")
    infer.add_argument("--check", action="store_true", help="compare every result with the local model")
    infer.add_argument(
        "--traffic",
        action="store_true",
        help="count the broker's data messages per request (reads the whole data plane: more than "
        "`edgeflow acl` lets a requester read)",
    )
    infer.add_argument(
        "--timeline",
        metavar="OUT.png",
        help="draw one request (of median latency) as the nodes measured it, under the plan's prediction",
    )
    infer.add_argument("--seed", type=int, default=0, help="seed of the model's weights and of random inputs")
    infer.add_argument("--plan-wait", type=float, default=5.0, help="seconds to wait for the retained plan")
    infer.set_defaults(func=_cmd_infer)
    demo = sub.add_parser(
        "demo",
        help="run a whole cluster on this machine and compare partition methods on real execution",
        description="Start a broker, four edgeflowd processes made 1x-4x apart with 50-200 Mbit/s links "
        "(cgroup quotas and shaped network namespaces, as root), and the controller, which deploys EdgeFlow's "
        "plan; then deploy each baseline; send the same requests to each and print measured beside predicted "
        "latency.",
    )
    demo.add_argument("--model", default="yolov5s", help=model_help)
    demo.add_argument("--requests", type=positive_int, default=10)
    demo.add_argument(
        "--timelines",
        metavar="DIR",
        help="draw one request of each method (of median latency) as measured, under its prediction: DIR/METHOD.png",
    )
    demo.add_argument(
        "--cluster",
        default=DEMO_CLUSTER,
        help="cluster to emulate: its devices' declared speeds set their CPU quotas (in proportion), "
        "their links the shaped rates; plans use what the nodes measure",
    )
    demo.add_argument(
        "--cores",
        type=positive_float,
        default=DEMO_CORES,
        help="this machine's cores the devices' quotas add up to (0.5: every device at half speed)",
    )
    demo.add_argument(
        "--methods",
        nargs="*",
        choices=[m for m in METHODS if m not in ("optimal", "edgeflow")],
        default=list(DEFAULT_BASELINES),
        help="baselines to compare EdgeFlow's plan with",
    )
    demo.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "embedded"],
        default="auto",
        help="Mosquitto where installed (auto), or the embedded pure-Python broker (MQTT 3.1.1)",
    )
    demo.set_defaults(func=_cmd_demo)
