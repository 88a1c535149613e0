"""The zoo's models are faithful (published parameter counts) and verify exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from controller.cli.main import main
from controller.zoo import ZOO, build_model

PUBLISHED_PARAMETERS = {
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "inception_v3": 27_161_264,  # torchvision, auxiliary head included
    "mobilenet_v2": 3_504_872,
    "yolov5s": 7_235_389,  # Ultralytics v7.0 summary
}


# Ours: test structures, or small versions of published designs (their layer kinds, not their sizes).
OURS = {"small_dag", "tiny_chain", "resnet18_d", "shufflenet_v2", "convnext", "unet", "fpn"}


def test_every_standard_model_has_a_published_count() -> None:
    assert set(ZOO) - OURS == set(PUBLISHED_PARAMETERS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_count_matches_the_published_model(name: str) -> None:
    model, _ = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]


def test_weights_are_seeded() -> None:
    a, _ = build_model("resnet18", seed=3)
    b, _ = build_model("resnet18", seed=3)
    c, _ = build_model("resnet18", seed=4)
    assert torch.equal(a.state_dict()["layer1.0.bn1.running_var"], b.state_dict()["layer1.0.bn1.running_var"])
    assert not torch.equal(a.state_dict()["conv1.weight"], c.state_dict()["conv1.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_verify_passes_for_every_zoo_model(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--model", name, "--devices", "4", "--random-partitions", "20"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 21 and "21/21 partitions exact" in out


def test_console_script_verifies_a_user_factory(tmp_path: object) -> None:
    """`edgeflow verify` as a user runs it, on a package.module:factory spec."""
    cmd = [
        sys.executable,
        "-m",
        "controller.cli",
        "verify",
        "--model",
        "tests.models:tiny_unet",
        "--input-shape",
        "1x3x17x12",
        "--devices",
        "3",
        "--random-partitions",
        "4",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5/5 partitions exact" in done.stdout
