"""When an idle node benchmarks itself again (edgeflowd.node.benchmark.RateDrift): only when its
conv rate has moved on consecutive probes, so that a burst of other work on its core during one
probe does not become the rate the planner uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from controller.lab.launch import REPO
from controller.lab.testbed import Slot, Testbed, missing_rights
from edgeflowd.node.benchmark import RateDrift, fit_link


def test_a_node_with_no_published_rate_measures_at_once() -> None:
    assert RateDrift().moved(0.0, 10.0)


def test_one_slow_probe_is_not_a_drift() -> None:
    drift = RateDrift(threshold=0.3, probes=2)
    published = 60.0
    assert not drift.moved(published, 30.0)  # a burst of other work
    assert not drift.moved(published, 59.0)  # gone: the count starts again
    assert not drift.moved(published, 30.0)


def test_a_rate_moved_on_consecutive_probes_is_measured_again_once() -> None:
    drift = RateDrift(threshold=0.3, probes=2)
    published = 60.0
    assert not drift.moved(published, 20.0)  # a new CPU quota ...
    assert drift.moved(published, 21.0)  # ... still there one interval later
    assert not drift.moved(published, 20.0)  # a fresh count after the node measured again


def test_within_the_threshold_is_no_drift_either_way() -> None:
    drift = RateDrift(threshold=0.3, probes=1)
    assert not drift.moved(60.0, 45.0) and not drift.moved(60.0, 75.0)
    assert drift.moved(60.0, 90.0) and drift.moved(60.0, 40.0)


@pytest.mark.skipif(bool(missing_rights(False)), reason="; ".join(missing_rights(False)) or "ok")
def test_a_node_reads_the_cpu_quota_its_cgroup_sets() -> None:
    """A new quota is a new speed at once: the daemon benchmarks again when it changes."""
    slot = Slot(0, "q", 0.25)
    probe = [sys.executable, "-c", "from edgeflowd.node.benchmark import cpu_quota; print(cpu_quota())"]
    with Testbed([slot], shape_links=False) as bed:
        before = subprocess.run(
            [*bed.command(slot, []), *probe], capture_output=True, text=True, timeout=60, cwd=REPO, check=True
        )
        bed.throttle()
        after = subprocess.run(
            [*bed.command(slot, []), *probe], capture_output=True, text=True, timeout=60, cwd=REPO, check=True
        )
    assert before.stdout.strip() == "None", before.stderr
    assert float(after.stdout) == pytest.approx(0.25, rel=0.01), after.stderr


def test_a_link_too_fast_to_fit_falls_back_to_the_larger_transfers_own_rate() -> None:
    """On loopback the 1 MiB transfer can take no longer than the 256 KiB one (noise): the rate
    was then left out, and a measured profile said its link was not measured (seen in CI)."""
    small, large = 256 << 10, 1 << 20
    fitted = fit_link([0.002], (small, 0.001, large, 0.002), (small, 0.0010, large, 0.0009))
    assert fitted["link_up_mbps"] == round(8 * (large - small) / 0.001 / 1e6, 2)
    assert fitted["link_down_mbps"] == round(8 * large / 0.0009 / 1e6, 2)
    assert "link_down_mbps" not in fit_link([0.002], (small, 0.001, large, 0.002), (0, 0.0, 0, 0.0))
