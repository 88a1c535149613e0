"""`edgeflow verify` exit codes and messages."""

from __future__ import annotations

import pytest
import torch

import controller.control.verify
from controller.cli.main import main
from controller.control.verify import relative_error


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
