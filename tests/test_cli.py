"""`edgeflow verify` exit codes and messages; one-line errors for model specs; `infer --check` verdicts;
`edgeflow status` states."""

from __future__ import annotations

import argparse

import pytest
import torch

import controller.control.verify
from controller.cli.cluster import _check
from controller.cli.main import main
from controller.cli.status import Seen, status_doc, status_lines
from controller.control.registry import Registry
from controller.control.requester import Result
from controller.control.verify import relative_error
from edgeflowd.profiles.devices import Cluster, Device, load_device_profile
from edgeflowd.wire.messages import PlanInfo, Status


def test_verify_reports_every_partition(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", "--model", "tests.models:tiny_unet", "--input-shape", "1x3x9x9", "--random-partitions", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[2:5]] == ["even", "random-1", "random-2"]


def test_verify_exits_non_zero_when_an_error_exceeds_the_tolerance(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(controller.control.verify, "TOLERANCE", -1.0)
    code = main(["verify", "--model", "tests.models:tiny_unet", "--input-shape", "1x3x9x9", "--random-partitions", "1"])
    assert code == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_model_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--model", "tests.models:ControlFlow"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeflow verify: error: cannot trace model") and err.count("\n") == 1


def test_bad_shape_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--model", "vgg16", "--input-shape", "224x224"])
    assert exc.value.code == 2
    assert "1x3xHxW" in capsys.readouterr().err


def test_relative_error_counts_equal_infinities_as_exact() -> None:
    want = torch.tensor([float("-inf"), 1.0, 2.0])
    assert relative_error([want.clone()], [want]) == (0.0, 0.0)
    max_abs, rel = relative_error([torch.tensor([0.0, 1.0, 2.0])], [want])
    assert max_abs == float("inf") and rel == float("inf")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("os:system", "model 'os:system': calling it failed: TypeError"),
        ("os:getcwd", "the factory returned str, not a torch.nn.Module"),
    ],
)
def test_a_model_spec_that_gives_no_module_is_one_line(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--model", spec, "--cluster", "testbed-4"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_infer_check_with_no_result_is_a_failure_not_ok(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(model="small_dag", seed=0)
    info = PlanInfo(1, "g1", "small_dag", "equal", [1, 3, 40, 40], ["n0"], [], [])
    x = torch.randn(1, 3, 40, 40)
    failed = [Result("r-1", None, 0.0, "timed out"), Result("r-2", None, 0.0, "timed out")]
    assert _check(args, info, [x, x], failed) == 1
    out = capsys.readouterr().out
    assert "none of 2 results arrived: FAIL" in out and "ok" not in out.split(":")[-1]


def test_status_shows_a_node_never_heard_from_as_unknown_not_offline() -> None:
    reg = Registry(
        Cluster("c", (Device("a", load_device_profile("local-core")), Device("b", load_device_profile("local-core"))))
    )
    reg.on_status("a", Status("offline", "i1", 1), 5.0)  # its last will: it was there, and left
    states = {line.split()[0]: line.split()[1] for line in status_lines(status_doc(reg, Seen()))[1:3]}
    assert states == {"a": "offline", "b": "unknown"}
    reg.on_status("b", Status("online", "i2", 1), 6.0)
    assert status_lines(status_doc(reg, Seen()))[2].split()[1] == "online"
