"""Partition methods: exact plans, never slower than one device, deterministic, memory-aware."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.control.verify import TOLERANCE, check_partition, reference_outputs
from controller.graph.layers import LayerGraph
from controller.graph.trace import trace_model
from controller.planner.methods import METHODS, lower_bound_s, plan_model
from controller.planner.methods.baselines import cut_points, single_on
from controller.planner.methods.evaluate import predicted_latency
from controller.planner.methods.optimal import model_latency, solve_optimal
from controller.zoo import build_model
from edgeflowd.errors import PlanError
from edgeflowd.profiles.devices import Cluster, Device, DeviceProfile, Link, load_cluster


@pytest.fixture(scope="module")
def small() -> tuple[LayerGraph, torch.Tensor, list[torch.Tensor]]:
    model, _ = build_model("small_dag", (1, 3, 48, 40))
    x = torch.randn(1, 3, 48, 40)
    return trace_model(model, x, "small_dag"), x, reference_outputs(model, x)


def _cluster(specs: list[tuple[float, float, float]], memory_mb: float = 1000.0, client: Link | None = None) -> Cluster:
    devices = tuple(
        Device(f"d{i}", DeviceProfile(f"p{i}", gflops, memory_mb, 1, Link(mbps, mbps, latency)))
        for i, (gflops, mbps, latency) in enumerate(specs)
    )
    return Cluster("test", devices, client=client or Link(100.0, 100.0, 1.0))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "optimal"])
def test_every_method_emits_exact_plans(
    small: tuple[LayerGraph, torch.Tensor, list[torch.Tensor]], method: str
) -> None:
    graph, x, want = small
    cluster = load_cluster("paper-4")
    planned = plan_model(graph, cluster, method)
    assert check_partition(method, graph, planned.partition, x, want).relative <= TOLERANCE
    assert planned.latency_s >= lower_bound_s(graph, cluster)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "cluster"), [("resnet50", "paper-4"), ("yolov5s", "lab-8")])
def test_edgeflow_plans_for_zoo_models_are_exact(name: str, cluster: str) -> None:
    model, shape = build_model(name)
    x = torch.randn(shape)
    graph = trace_model(model, x, name)
    planned = plan_model(graph, load_cluster(cluster), "edgeflow")
    assert sum(1 for u in planned.plan.units if u.device >= 0) > len(graph.compute_layers)  # really split
    assert check_partition("edgeflow", graph, planned.partition, x, reference_outputs(model, x)).relative <= TOLERANCE


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    specs=st.lists(
        st.tuples(st.floats(0.5, 50.0), st.sampled_from([1.0, 10.0, 100.0, 1000.0]), st.floats(0.1, 5.0)),
        min_size=1,
        max_size=5,
    )
)
def test_never_slower_than_the_best_single_device(
    small: tuple[LayerGraph, torch.Tensor, list[torch.Tensor]], specs: list[tuple[float, float, float]]
) -> None:
    graph, _, _ = small
    cluster = _cluster(specs)
    best_single = min(predicted_latency(graph, cluster, single_on(graph, cluster, d)) for d in range(len(cluster)))
    assert plan_model(graph, cluster, "edgeflow").latency_s <= best_single + 1e-12


def test_one_dominant_device_takes_everything(small: tuple[LayerGraph, torch.Tensor, list[torch.Tensor]]) -> None:
    graph, _, _ = small
    cluster = _cluster([(1.0, 10.0, 5.0), (100.0, 10.0, 5.0), (1.0, 10.0, 5.0)])
    planned = plan_model(graph, cluster, "edgeflow")
    assert {u.device for u in planned.plan.units if u.device >= 0} == {1}


def test_planning_is_deterministic(small: tuple[LayerGraph, torch.Tensor, list[torch.Tensor]]) -> None:
    graph, _, _ = small
    cluster = load_cluster("paper-4")
    assert METHODS["edgeflow"](graph, cluster) == METHODS["edgeflow"](graph, cluster)


def test_devices_without_memory_get_no_rows(small: tuple[LayerGraph, torch.Tensor, list[torch.Tensor]]) -> None:
    graph, _, _ = small
    roomy = _cluster([(5.0, 1000.0, 0.2), (5.0, 1000.0, 0.2)])
    tiny = Device("tiny", DeviceProfile("tiny", 50.0, 0.01, 1, Link(1000.0, 1000.0, 0.2)))
    cluster = Cluster("mixed", (*roomy.devices, tiny), roomy.client)
    planned = plan_model(graph, cluster, "edgeflow")
    assert not planned.plan.on_device(2)
    starved = _cluster([(5.0, 1000.0, 0.2)], memory_mb=0.01)
    with pytest.raises(PlanError, match=r"cannot place layer stem: needs .* MiB, the most any device has left"):
        plan_model(graph, starved, "edgeflow")


def test_cut_points_of_a_chain_and_of_a_dag() -> None:
    graph = trace_model(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)),
        torch.zeros(1, 3, 9, 9),
    )
    assert cut_points(graph) == [0]
    model, shape = build_model("small_dag", (1, 3, 16, 16))
    dag = trace_model(model, torch.zeros(shape))
    names = [layer.name for layer in dag.compute_layers]
    assert [names[i] for i in cut_points(dag)] == ["stem", "add", "cat"]


def test_progressive_is_close_to_the_milp_optimum() -> None:
    model, _ = build_model("small_dag", (1, 3, 24, 24))
    graph = trace_model(model, torch.zeros(1, 3, 24, 24))
    cluster = _cluster([(5.0, 100.0, 0.5), (10.0, 100.0, 0.5)])
    best = solve_optimal(graph, cluster, time_limit_s=60)
    assert best.proven
    for name in ("single", "coedge", "equal"):
        value = model_latency(graph, cluster, METHODS[name](graph, cluster))
        assert value is not None and value >= best.objective_s - 1e-9


def test_optimal_refuses_large_graphs() -> None:
    model, shape = build_model("resnet18")
    graph = trace_model(model, torch.zeros(shape))
    with pytest.raises(PlanError, match="beyond the MILP's reach"):
        METHODS["optimal"](graph, load_cluster("paper-4"))
