"""Profiles load, and every mistake in them is reported with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeflowd.errors import ProfileError
from edgeflowd.profiles.devices import PROFILES_DIR, load_cluster, load_device_profile


@pytest.mark.parametrize("path", sorted((PROFILES_DIR / "devices").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_device_profiles_load(path: Path) -> None:
    profile = load_device_profile(path)
    assert profile.gflops > 0 and profile.link.up_mbps > 0 and profile.memory_mb > 0


@pytest.mark.parametrize("path", sorted((PROFILES_DIR / "clusters").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_clusters_load(path: Path) -> None:
    cluster = load_cluster(path)
    assert len(cluster) >= 2 and len({d.id for d in cluster.devices}) == len(cluster)


def test_paper_cluster_is_heterogeneous() -> None:
    rates = [d.rate("conv") for d in load_cluster("paper-4").devices]
    assert len(rates) == 4 and max(rates) / min(rates) >= 3


GOOD_DEVICE = """schema: edgeflow.device/1
compute:
  gflops: 7.0
memory_mb: 2000
threads: 4
link:
  up_mbps: 80
  down_mbps: 100
  latency_ms: 2.0
"""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("gflops: 7.0", 'gflops: "fast"'), r":3: compute\.gflops: expected a number, got 'fast'"),
        (("  up_mbps: 80\n", ""), r":7: link: missing required field 'up_mbps'"),
        (("threads: 4", "threads: 0"), r":5: threads: expected a positive integer, got 0"),
        (("memory_mb: 2000", "memory_mb: 2000\ncolour: red"), r":5: colour: unknown field"),
        (
            ("  gflops: 7.0", "  gflops: 7.0\n  per_kind: {tensor: 2}"),
            r":4: compute\.per_kind\.tensor: unknown op kind",
        ),
        (
            ("  gflops: 7.0", "  gflops: 7.0\n  weights_gbps: -3"),
            r":4: compute\.weights_gbps: expected a number >= 0.0, got -3",
        ),
        (("link:", "link: ["), r":8: not valid YAML"),  # where the parser notices
        (("gflops: 7.0", "gflops: .nan"), r":3: compute\.gflops: expected a positive number, got nan"),
        (("latency_ms: 2.0", "latency_ms: .inf"), r":9: link\.latency_ms: expected a finite number, got inf"),
        (("threads: 4", "threads: 4\nmemory_mb: 10"), r":6: memory_mb: repeated key \(first at line 4\)"),
    ],
)
def test_device_profile_errors_name_file_line_and_field(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = tmp_path / "board.yaml"
    path.write_text(GOOD_DEVICE.replace(*edit))
    with pytest.raises(ProfileError, match=rf"^{path}{message}"):
        load_device_profile(path)


def test_a_profile_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_bytes(GOOD_DEVICE.replace("link:", "# caf\xe9\nlink:").encode("latin-1"))
    with pytest.raises(ProfileError, match=rf"^{path}:6: not UTF-8 text \(byte 0xe9\)"):
        load_device_profile(path)


def _cluster(tmp_path: Path, body: str) -> Path:
    (tmp_path / "board.yaml").write_text(GOOD_DEVICE)
    path = tmp_path / "lab.yaml"
    path.write_text("schema: edgeflow.cluster/1\n" + body)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "devices:\n  - {id: a, profile: board.yaml}\n  - {id: a, profile: board.yaml}\n",
            r":4: devices\[1\]\.id: device id 'a' appears twice",
        ),
        ("devices:\n  - {id: a, profile: board.yaml, load: 1.5}\n", r":3: devices\[0\]\.load: expected a CPU fraction"),
        ("devices:\n  - {id: a/b, profile: board.yaml}\n", r":3: devices\[0\]\.id: expected a name without"),
        ("devices:\n  - {id: a, profile: missing.yaml}\n", r"missing\.yaml: cannot read"),
        (
            "devices:\n  - id: a\n    profile: board.yaml\n    overrides: {link: {up_mbps: -1}}\n",
            r":5: devices\[0\]\.overrides\.link\.up_mbps",
        ),
        ("devices: []\n", r":2: devices: expected a non-empty list"),
    ],
)
def test_cluster_errors_name_file_line_and_field(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        load_cluster(_cluster(tmp_path, body))


def test_overrides_and_load_apply(tmp_path: Path) -> None:
    body = "devices:\n  - {id: a, profile: board.yaml, load: 0.5, overrides: {link: {up_mbps: 10}}}\n"
    (device,) = load_cluster(_cluster(tmp_path, body)).devices
    assert device.link.up_mbps == 10 and device.link.down_mbps == 100
    assert device.rate("conv") == pytest.approx(7e9 * 0.5)
