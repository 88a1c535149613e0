"""Operator plugins: a module installed on a board and listed in its daemon's ``plugins`` makes
the functions it defines ops there; deploy places a unit that uses one only on a node that has
it, and says which node lacks what when none has."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from controller.graph.trace import trace_model
from controller.planner.methods import plan_model
from edgeflowd.core.ops import In, OpCall, check_call
from edgeflowd.errors import PlanError, ProfileError, ProtocolError
from edgeflowd.node.config import read_config
from edgeflowd.node.plugins import load_plugins
from edgeflowd.profiles.devices import Cluster, load_cluster
from edgeflowd.wire.messages import Info, decode_control
from tests import models
from tests.cluster import Broker, DaemonProcess, Watcher, mosquitto_broker, node_status, run_cli

OP = "local.tests.plugin_ops.soft_clip"
CLUSTER = "plug"


def _cluster(path: Path, *nodes: str) -> Path:
    devices = "\n".join(f"  - {{id: {n}, profile: local-core}}" for n in nodes)
    path.write_text(f"schema: edgeflow.cluster/1\nname: {CLUSTER}\ndevices:\n{devices}\n")
    return path


def _with_ops(cluster: Cluster, ops: dict[str, frozenset[str]]) -> Cluster:
    from dataclasses import replace  # noqa: PLC0415

    return cluster.with_devices(tuple(replace(d, ops=ops.get(d.id, frozenset())) for d in cluster.devices))


def test_the_plugin_defines_its_own_functions_only() -> None:
    (ops,) = load_plugins(["tests.plugin_ops"]).values()
    assert set(ops) == {OP, "local.tests.plugin_ops.rows_reversed"}  # not torch, which it imports
    call = OpCall(OP, (In(0), 2.0))
    check_call(call, "t", ops)
    with pytest.raises(ProtocolError, match=r"not allow-listed on this node and no plugin of it defines it"):
        check_call(call, "t")
    with pytest.raises(ProfileError, match=r"plugin 'torch.nn.functional': torch's own modules are not plugins"):
        load_plugins(["torch.nn.functional"])


def test_a_plugin_that_does_not_import_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "edgeflowd.yaml"
    config.write_text("node_id: n\nplugins:\n  - tests.plugin_ops\n  - tests.no_such_plugin\n")
    report = read_config(config, {}, environ={})
    assert any(f"{config}:4" in e and "'tests.no_such_plugin' does not import" in e for e in report.errors), (
        report.errors
    )
    assert read_config(config, {"plugins": "tests.plugin_ops"}, environ={}).errors == []
    bad = read_config(None, {"node_id": "n", "plugins": "tests/plugin_ops"}, environ={})
    assert any("--plugins: plugins: 'tests/plugin_ops' is not a Python module name" in e for e in bad.errors)


def test_deployable_plans_put_plugin_layers_where_the_plugin_is(tmp_path: Path) -> None:
    graph = trace_model(models.plugin_user(), torch.randn(1, 3, 16, 12), "plugin_user")
    cluster = load_cluster(_cluster(tmp_path / "c.yaml", "node-a", "node-b", "node-c"))
    for holder in ("node-a", "node-c"):
        planned = plan_model(graph, _with_ops(cluster, {holder: frozenset({OP})}), "equal", deployable=True)
        (unit,) = [u for u in planned.plan.units if u.layer == "soft_clip"]
        assert cluster.devices[unit.device].id == holder
    with pytest.raises(PlanError) as refused:
        plan_model(graph, _with_ops(cluster, {"node-b": frozenset({"local.other.op"})}), "equal", deployable=True)
    text = str(refused.value)
    assert f"uses {OP}, which no node of cluster plug runs" in text
    assert f"node-a lacks {OP} (it has no plugins)" in text and "node-b lacks" in text and "tests.plugin_ops" in text
    assert plan_model(graph, cluster, "equal").plan.units  # in-process, any device may run it


def test_a_models_own_module_is_refused_for_a_cluster(tmp_path: Path) -> None:
    graph = trace_model(models.unknown_ops(), torch.randn(1, 3, 9, 5), "unknown")
    cluster = load_cluster(_cluster(tmp_path / "c.yaml", "node-a"))
    with pytest.raises(
        PlanError, match=r"local\.module\.pad, a module of the model object that EdgeFlow does not know"
    ):
        plan_model(graph, cluster, "equal", deployable=True)


@pytest.fixture(scope="module")
def plugged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Watcher, Path]]:
    tmp = tmp_path_factory.mktemp("plugins")
    with mosquitto_broker(tmp) as broker:
        daemons = [
            DaemonProcess(
                "node-a", broker.url, CLUSTER, tmp, "--profile", "local-core", "--plugins", "tests.plugin_ops"
            ),
            DaemonProcess("node-b", broker.url, CLUSTER, tmp, "--profile", "local-core"),
        ]
        watcher = Watcher(broker.settings, CLUSTER)
        try:
            watcher.wait_for(
                "two nodes online",
                lambda last: all(
                    (s := node_status(last, watcher.root, d.node)) is not None and s.state == "online" for d in daemons
                ),
            )
            yield broker, watcher, tmp
        finally:
            watcher.close()
            for daemon in daemons:
                daemon.terminate()


@pytest.mark.integration
def test_a_plugin_op_runs_on_the_node_that_has_it(
    plugged: tuple[Broker, Watcher, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    broker, watcher, tmp = plugged
    infos = [f"{watcher.root}/node/{n}/info" for n in ("node-a", "node-b")]
    watcher.wait_for("both nodes' info", lambda last: all(last.get(t) for t in infos))
    info = decode_control(watcher.payload("node-a", "info"), "info", Info)
    assert info.plugins == {"tests.plugin_ops": sorted([OP, "local.tests.plugin_ops.rows_reversed"])}
    assert decode_control(watcher.payload("node-b", "info"), "info", Info).plugins == {}
    model = "tests.models:plugin_user"
    deploy = ["deploy", "--model", model, "--input-shape", "1x3x20x16", "--broker", broker.url, "--method", "equal"]
    code, out = run_cli(capsys, *deploy, "--cluster", str(_cluster(tmp / "both.yaml", "node-a", "node-b")))
    assert code == 0, out
    code, out = run_cli(
        capsys, "infer", "--model", model, "--cluster", CLUSTER, "--broker", broker.url, "--repeat", "3", "--check"
    )
    assert code == 0 and "3/3 requests succeeded" in out and ": ok" in out, out
    code, out = run_cli(capsys, *deploy, "--cluster", str(_cluster(tmp / "b.yaml", "node-b")))
    assert code != 0 and f"node-b lacks {OP} (it has no plugins)" in out, out
