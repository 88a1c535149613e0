"""Build ``edgeflowd_<version>_<arch>.deb`` from this checkout (``make deb``).

The package carries its own virtual environment in /opt/edgeflow: EdgeFlow and its Python
dependencies, with torch pinned (``--torch torch==2.13.0``) or left out (``--torch none``) for boards
whose vendor ships its own torch build (Jetson): the environment sees the system's site packages.
Beside it: the systemd unit, the commented configuration (a conffile), /etc/default/edgeflowd, a
sysusers.d entry for the service user, /usr/bin links, and the example broker configuration.
Needs python3-venv and dpkg-deb; pip fetches the dependencies from the package index (or its cache).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib  # the build needs Python >= 3.11 (Debian 12); the package, what it bundles

REPO = Path(__file__).resolve().parent.parent
PREFIX = "/opt/edgeflow"
PACKAGE = "edgeflowd"


def _run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout


def _requirements(torch: str) -> list[str]:
    """pyproject's dependencies, with torch pinned to ``torch`` or dropped (``none``)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    rest = [d for d in deps if not re.match(r"torch\b", d)]
    return rest if torch == "none" else [torch, *rest]


def _venv(stage: Path, python: str, torch: str, wheels: Path) -> None:
    prefix = stage / PREFIX.lstrip("/")
    # Built isolated, so the host's packages cannot stand in for ones the board lacks; the system
    # site packages are switched on afterwards, for a vendor torch.
    _run(python, "-m", "venv", prefix)
    _run(prefix / "bin/pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", wheels, REPO)
    (wheel,) = wheels.glob("edgeflow-*.whl")
    pip = (prefix / "bin/pip", "install", "--no-compile", "--disable-pip-version-check", "-q")
    _run(*pip, "--no-deps", wheel)
    _run(*pip, *_requirements(torch))
    for cache in prefix.rglob("__pycache__"):
        shutil.rmtree(cache)
    # Byte-compile with the installed paths (tracebacks name /opt/edgeflow/...); dpkg keeps the
    # mtimes that validate them, and removes them with the package.
    # A few files only newer Pythons parse (torch's tests of 3.12 syntax) fail to compile, as under pip.
    compileall: list[str | Path] = [prefix / "bin/python", "-m", "compileall", "-qq", "-j", "0"]
    compileall += ["-s", stage, "-p", "/", prefix / "lib"]
    subprocess.run(compileall, check=False, capture_output=True)
    for path in [*(prefix / "bin").iterdir(), prefix / "pyvenv.cfg"]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if str(prefix).encode() in data:
                path.write_bytes(data.replace(str(prefix).encode(), PREFIX.encode()))
    cfg = prefix / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace("site-packages = false", "site-packages = true"))


def _copy(src: Path, dst: Path, mode: int = 0o644) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def _files(stage: Path) -> None:
    _copy(REPO / "edgeflow.service", stage / "lib/systemd/system/edgeflowd.service")
    _copy(REPO / "packaging/edgeflowd.yaml", stage / "etc/edgeflow/edgeflowd.yaml")
    _copy(REPO / "packaging/edgeflowd.default", stage / "etc/default/edgeflowd")
    sysusers = stage / "usr/lib/sysusers.d/edgeflowd.conf"
    sysusers.parent.mkdir(parents=True)
    sysusers.write_text('u edgeflow - "EdgeFlow device daemon" /nonexistent /usr/sbin/nologin\n')
    (stage / "usr/bin").mkdir(parents=True)
    for tool in ("edgeflowd", "edgeflow"):
        (stage / "usr/bin" / tool).symlink_to(f"{PREFIX}/bin/{tool}")
    doc = stage / "usr/share/doc" / PACKAGE
    for example in (REPO / "packaging/mosquitto").iterdir():
        _copy(example, doc / "examples/mosquitto" / example.name)
    for page in ("protocol.md", "dashboards.md", "packaging.md"):
        _copy(REPO / "docs" / page, doc / page)
    _copy(REPO / "packaging/copyright", doc / "copyright")


def _control(stage: Path, version: str, arch: str, torch: str, python: str) -> None:
    debian = stage / "DEBIAN"
    debian.mkdir()
    for script in ("postinst", "prerm", "postrm"):
        _copy(REPO / "packaging/debian" / script, debian / script, 0o755)
    (debian / "conffiles").write_text("/etc/edgeflow/edgeflowd.yaml\n/etc/default/edgeflowd\n")
    major, minor = map(int, _run(python, "-c", "import sys; print(*sys.version_info[:2])").split())
    size_kib = sum(p.lstat().st_size for p in stage.rglob("*") if p.is_file() or p.is_symlink()) // 1024
    torch_note = (
        "\n It uses the system's torch (a vendor build): the environment sees system site packages."
        if torch == "none"
        else f"\n It bundles {torch}."
    )
    (debian / "control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\nSection: net\nPriority: optional\n"
        f"Maintainer: EdgeFlow developers <edgeflow@users.noreply.github.com>\n"
        f"Depends: python3 (>= {major}.{minor}), python3 (<< {major}.{minor + 1})\n"
        f"Recommends: systemd\nSuggests: mosquitto, mosquitto-clients\nInstalled-Size: {size_kib}\n"
        f"Homepage: https://github.com/edgeflow/edgeflow\n"
        f"Description: EdgeFlow device daemon: distributed DNN inference across edge boards\n"
        f" edgeflowd runs this board's share of a deep-learning model split by rows across several\n"
        f" heterogeneous devices, coordinated over MQTT. Installed in its own virtual environment\n"
        f" under {PREFIX}.{torch_note}\n"
    )


def build(out: Path, torch: str, python: str, compression: str) -> Path:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = _run("dpkg", "--print-architecture").strip()
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if torch != "none" else "+systemtorch"
    target = out / f"{PACKAGE}_{version}{suffix}_{arch}.deb"
    with tempfile.TemporaryDirectory(prefix="edgeflow-deb-") as tmp:
        stage = Path(tmp) / "root"
        stage.mkdir()
        os.chmod(stage, 0o755)
        _venv(stage, python, torch, Path(tmp) / "wheels")
        _files(stage)
        _control(stage, version + suffix, arch, torch, python)
        _run("dpkg-deb", "--root-owner-group", f"-Z{compression}", "-z3", "--build", stage, target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="directory for the .deb (default dist/)")
    parser.add_argument("--torch", default="torch==2.13.0", help="torch requirement to bundle, or 'none'")
    parser.add_argument("--python", default="/usr/bin/python3", help="the interpreter the board has")
    parser.add_argument("--compression", default="gzip", choices=["gzip", "xz", "zstd", "none"])
    args = parser.parse_args()
    try:
        target = build(args.out, args.torch, args.python, args.compression)
    except subprocess.CalledProcessError as exc:
        print(f"build-deb: {' '.join(map(str, exc.cmd))} failed:\n{exc.stderr or exc.stdout}", file=sys.stderr)
        return 1
    print(f"{target} ({target.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
