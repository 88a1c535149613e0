"""``edgeflowd --check-config``: the effective configuration, each value with where it came from,
then every file and dependency the daemon will need, checked the way the daemon will use them.
Run it after editing ``/etc/edgeflow/edgeflowd.yaml``; the package runs it before starting."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeflowd import __version__
from edgeflowd.errors import EdgeFlowError
from edgeflowd.net.settings import BrokerURL
from edgeflowd.node.config import read_config
from edgeflowd.profiles.devices import load_device_profile

__all__ = ["check_config"]


def _value(value: Any) -> str:
    return "~" if value is None else str(value)


def _readable(name: str, path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"{name} {path}: cannot read: {exc.strerror}"
    return None


def _cache_dir(path: str | None) -> str | None:
    if path is None:
        return None
    target = Path(path)
    while not target.exists():  # the daemon creates the missing part
        target = target.parent
    if not target.is_dir() or not os.access(target, os.W_OK | os.X_OK):
        return f"cache_dir {path}: {target} is not a writable directory (for this user)"
    return None


def check_config(
    path: str | None, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> tuple[list[str], int]:
    """The report's lines and the exit status: 0 when the daemon would start, else 2."""
    report = read_config(path, overrides, environ)
    config = report.config
    lines = [f"# edgeflowd {__version__}: effective configuration (each value: where it was set)"]
    width = max(len(k) for k in asdict(config)) + 2
    for key, value in asdict(config).items():
        lines.append(f"{key + ':':<{width}}{_value(value):<40} # {report.source(key)}")
    errors = list(report.errors)
    notes: list[str] = []
    if config.profile:
        try:
            profile = load_device_profile(config.profile)
            notes.append(f"profile: {profile.name}, {profile.threads} threads, {profile.gflops:g} GFLOP/s declared")
        except EdgeFlowError as exc:
            errors.append(str(exc))
    files = {n: getattr(config, n) for n in ("ca_file", "cert_file", "key_file", "password_file")}
    unreadable = [e for n, p in files.items() if (e := _readable(n, p))]
    errors += unreadable
    settings = config.broker_settings()
    if not unreadable and not settings.problems():
        try:  # parses the certificates and reads the password, as connecting will
            if BrokerURL.parse(settings.url).tls:
                settings.tls_context()
            settings.password()
            notes.append(f"broker: {config.broker}" + (f" as {config.username}" if config.username else ""))
        except EdgeFlowError as exc:
            errors.append(str(exc))
    if config.password_file and not unreadable and os.stat(config.password_file).st_mode & stat.S_IROTH:
        notes.append(f"warning: password_file {config.password_file} is readable by every user (chmod 640)")
    if error := _cache_dir(config.cache_dir):
        errors.append(error)
    if importlib.util.find_spec("torch") is None:
        errors.append(
            f"torch is not installed for {sys.executable}: install the build for this board "
            "(pip install torch, or the vendor's wheel beside a venv with system site packages)"
        )
    else:
        notes.append(f"torch {importlib.metadata.version('torch')}")
    lines.append("# checks")
    lines += [f"ok: {note}" if not note.startswith("warning") else note for note in notes]
    lines += [f"error: {error}" for error in errors]
    lines.append(f"# {len(errors)} error{'s' if len(errors) != 1 else ''}" + ("" if errors else ": ready to start"))
    return lines, 2 if errors else 0
