"""``make deb``: the package's contents, its maintainer scripts and unit, and an install into a
clean root (``dpkg --root``) that leaves a working ``edgeflowd --check-config``; then a purge that
leaves nothing behind. Built with DEB_TORCH=none (the vendor-torch variant: the same package less
torch, which would make the build ten times longer)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from controller.lab.launch import REPO

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)"),
]


def _run(*cmd: str | Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, env=env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    _run("make", "-C", REPO, "deb", "DEB_TORCH=none", f"DEB_OUT={out}")
    (package,) = out.glob("edgeflowd_*.deb")
    yield package


def test_package_fields_contents_and_scripts(deb: Path, tmp_path: Path) -> None:
    fields = dict(re.findall(r"^(\S+): (.*)$", _run("dpkg-deb", "--field", deb).stdout, re.M))
    assert (
        fields["Package"] == "edgeflowd"
        and fields["Architecture"] == _run("dpkg", "--print-architecture").stdout.strip()
    )
    assert re.match(r"python3 \(>= 3\.\d+\), python3 \(<< 3\.\d+\)", fields["Depends"])
    listing = _run("dpkg-deb", "--contents", deb).stdout.splitlines()
    paths = {line.split()[5].removeprefix(".") for line in listing}
    for path in (
        "/opt/edgeflow/bin/edgeflowd",
        "/opt/edgeflow/bin/edgeflow",
        "/lib/systemd/system/edgeflowd.service",
        "/etc/edgeflow/edgeflowd.yaml",
        "/etc/default/edgeflowd",
        "/usr/lib/sysusers.d/edgeflowd.conf",
        "/opt/edgeflow/share/edgeflow/profiles/devices/rpi4.yaml",
        "/usr/share/doc/edgeflowd/examples/mosquitto/edgeflow.acl",
        "/usr/share/doc/edgeflowd/copyright",
    ):
        assert path in paths, path
    assert all(line.split()[1] == "root/root" for line in listing)
    assert any(re.search(r"/usr/bin/edgeflowd -> /opt/edgeflow/bin/edgeflowd$", line) for line in listing)
    assert not [p for p in paths if "/site-packages/torch/" in p]  # the vendor-torch variant
    assert _run("dpkg-deb", "--info", deb, "conffiles").stdout.split() == [
        "/etc/edgeflow/edgeflowd.yaml",
        "/etc/default/edgeflowd",
    ]
    for script in ("postinst", "prerm", "postrm"):
        text = _run("dpkg-deb", "--info", deb, script).stdout
        assert text.startswith("#!/bin/sh\n")
        assert subprocess.run(["sh", "-n"], input=text, text=True, check=False).returncode == 0, script
    # Nothing refers to the directory the environment was built in.
    _run("dpkg-deb", "--extract", deb, tmp_path)
    venv = tmp_path / "opt/edgeflow"
    for file in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if file.is_file() and not file.is_symlink():
            assert b"edgeflow-deb-" not in file.read_bytes(), file
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()


def _fake_system_torch(site: Path) -> None:
    """A torch visible the way a vendor install makes it visible: on the path, beside the venv."""
    site.mkdir()
    installed = Path(torch.__file__).parent
    (site / "torch").symlink_to(installed)
    for info in installed.parent.glob("torch-*.dist-info"):
        (site / info.name).symlink_to(info)


def test_install_into_a_clean_root_check_config_and_purge(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg/updates").mkdir(parents=True)
    (root / "var/lib/dpkg/info").mkdir()
    (root / "var/lib/dpkg/status").touch()
    # Chrootless: the maintainer scripts run here with DPKG_ROOT set (the root has no shell).
    dpkg = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", "--log=/dev/null"]
    _run(*dpkg, "--install", deb)
    wants = root / "etc/systemd/system/multi-user.target.wants/edgeflowd.service"
    assert wants.is_symlink() and os.readlink(wants) == "/lib/systemd/system/edgeflowd.service"  # enabled

    # The installed unit passes systemd-analyze (which needs ExecStart to exist: point it into the root).
    if shutil.which("systemd-analyze"):
        unit = tmp_path / "edgeflowd.service"
        unit.write_text(
            (root / "lib/systemd/system/edgeflowd.service")
            .read_text()
            .replace("/opt/edgeflow/bin/edgeflowd", f"{root}/opt/edgeflow/bin/edgeflowd")
        )
        result = _run("systemd-analyze", "verify", unit, check=False)
        assert result.returncode == 0 and result.stderr == "", result.stderr

    python, edgeflowd = root / "opt/edgeflow/bin/python", root / "opt/edgeflow/bin/edgeflowd"
    config = root / "etc/edgeflow/edgeflowd.yaml"
    modeline = config.read_text().splitlines()[0]  # editors check the file against the installed schema
    assert modeline.startswith("# yaml-language-server: $schema=/opt/edgeflow/"), modeline
    assert (root / modeline.split("$schema=/", 1)[1]).is_file(), modeline
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLOWD_", "PYTHON", "VIRTUAL_ENV"))}
    fresh = _run(python, edgeflowd, "--check-config", "--config", config, env=env, check=False)
    assert fresh.returncode == 2  # the shipped file leaves node_id to the administrator
    errors = [line for line in fresh.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "node_id must be set" in errors[0] and "torch is not installed" in errors[1], errors
    assert re.search(rf"^cache_dir: +/var/cache/edgeflow +# {re.escape(str(config))}:\d+$", fresh.stdout, re.M)

    _fake_system_torch(tmp_path / "system-site")
    env |= {"PYTHONPATH": str(tmp_path / "system-site"), "EDGEFLOWD_NODE_ID": "pi4-a", "EDGEFLOWD_PROFILE": "rpi4"}
    ready = _run(python, edgeflowd, "--check-config", "--config", config, env=env, check=False)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert re.search(r"^node_id: +pi4-a +# environment EDGEFLOWD_NODE_ID$", ready.stdout, re.M)
    assert "ok: profile: rpi4" in ready.stdout and f"ok: torch {torch.__version__}" in ready.stdout
    assert "# 0 errors: ready to start" in ready.stdout

    _run(*dpkg, "--purge", "edgeflowd")
    left = [p for p in root.rglob("*") if not p.is_relative_to(root / "var/lib/dpkg") and not p.is_dir()]
    assert left == [] and not (root / "opt/edgeflow").exists() and not (root / "etc/edgeflow").exists()
