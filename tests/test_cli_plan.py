"""`edgeflow plan` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli.main import main


def test_plan_compare_writes_json_and_gantt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "plan.json", tmp_path / "gantt.png"
    args = ["plan", "--model", "small_dag", "--input-shape", "1x3x32x32", "--cluster", "home-3", "--compare"]
    assert main([*args, "--json", str(out), "--gantt", str(png)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "small_dag" and report["cluster"] == "home-3"
    assert set(report["methods"]) == {"edgeflow", "progressive", "single", "equal", "coedge", "ftp", "chain", "optimal"}
    for figures in report["methods"].values():
        assert figures["latency_s"] >= report["lower_bound_s"] > 0 and figures["plan_time_s"] >= 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "the best baseline" in text
    assert "rows per device" in text


def test_plan_skips_the_milp_on_big_graphs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "resnet18", "--input-shape", "1x3x64x64", "--cluster", "home-3", "--compare"]) == 0
    assert "optimal: skipped: optimal: 30 layers on 3 devices is beyond the MILP's reach" in capsys.readouterr().out


def test_plan_reports_a_bad_cluster_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices:\n  - {id: a, profile: rpi4, load: 2}\n")
    assert main(["plan", "--model", "small_dag", "--cluster", str(bad)]) == 2
    assert f"{bad}:2: devices[0].load: expected a CPU fraction" in capsys.readouterr().err
