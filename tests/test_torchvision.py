"""torchvision's own models, written by others: they verify exactly, split every layer whose rows
do not truly mix (global pooling, what follows it and squeeze-excite gates run whole), and deploy
to three real daemons. torchvision does not import beside the pinned CPU torch, so these run in a
venv of their own: ``make test-vision`` (torch 2.14.1 with torchvision 0.29.1)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch

torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed: `make test-vision` runs these")

from controller.control.verify import TOLERANCE, check_partition, reference_outputs  # noqa: E402
from controller.graph.trace import trace_model  # noqa: E402
from controller.planner.partitions import even_partition, random_partition  # noqa: E402
from controller.zoo import build_model  # noqa: E402
from tests.cluster import Broker, DaemonProcess, Watcher, mosquitto_broker, node_status, run_cli  # noqa: E402

pytestmark = pytest.mark.vision

MODELS = {  # spec: input shape (odd sizes where the model takes them)
    "tests.vision_models:efficientnet_b0": "1x3x224x224",
    "tests.vision_models:convnext_tiny": "1x3x224x224",
    "tests.vision_models:shufflenet_v2_x1_0": "1x3x224x224",
    "tests.vision_models:deeplabv3_mobilenet_v3_large": "1x3x201x177",
}
NODES = ("node-a", "node-b", "node-c")


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("x"))


@pytest.mark.parametrize("spec", sorted(MODELS))
def test_torchvision_models_split_where_rows_allow_and_verify(spec: str) -> None:
    model, shape = build_model(spec, _shape(MODELS[spec]))
    x = torch.randn(shape)
    graph = trace_model(model, x, spec)
    assert not any(op.target.startswith("local.") for layer in graph for op in layer.ops), spec
    # Whole: only maps of one row (global pooling, squeeze-excite gates) and what is not a map.
    whole = [layer for layer in graph.compute_layers if not layer.splittable]
    mixing = [(layer.name, layer.note) for layer in whole if len(layer.out_shape) == 4 and layer.out_shape[2] > 1]
    assert not mixing, mixing
    print(f"{spec}: {graph.summary()}")
    want = reference_outputs(model, x)
    rng = random.Random(0)
    for devices in (2, 4):
        for partition in [even_partition(graph, devices), random_partition(graph, devices, rng)]:
            check = check_partition("p", graph, partition, x, want)
            assert check.relative <= TOLERANCE, (spec, devices, check.relative)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("vision")
    with mosquitto_broker(tmp) as broker:
        daemons = [DaemonProcess(n, broker.url, "local-3", tmp, "--profile", "local-core") for n in NODES]
        watcher = Watcher(broker.settings, "local-3")
        try:
            watcher.wait_for(
                "three nodes online",
                lambda last: all(
                    (s := node_status(last, watcher.root, n)) is not None and s.state == "online" for n in NODES
                ),
            )
            yield broker
        finally:
            watcher.close()
            for daemon in daemons:
                daemon.terminate()


@pytest.mark.integration
@pytest.mark.parametrize("spec", sorted(MODELS))
def test_torchvision_models_deploy_and_answer_exactly(
    local: Broker, capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    shape = MODELS[spec]
    deploy = ["deploy", "--model", spec, "--input-shape", shape, "--cluster", "local-3", "--broker", local.url]
    code, out = run_cli(capsys, *deploy, "--method", "equal", "--timeout", "300")
    assert code == 0, out
    infer = ["infer", "--model", spec, "--cluster", "local-3", "--broker", local.url, "--repeat", "2", "--check"]
    code, out = run_cli(capsys, *infer, "--timeout", "120")
    assert code == 0 and "2/2 requests succeeded" in out and ": ok" in out, out
