"""The daemon's configuration: defaults, then the YAML file (``--config``), then ``EDGEFLOWD_*``
environment variables (``/etc/default/edgeflowd`` under systemd), then command-line flags.
Every value remembers where it came from, and every error names that place: the file and line,
the variable, or the flag."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgeflowd.core.sizes import PACKET_BYTES
from edgeflowd.errors import ProfileError
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.profiles.yamldoc import YamlDoc, check_keys, number, read_text

__all__ = ["ENV_PREFIX", "ConfigReport", "DaemonConfig", "load_config", "read_config"]

ENV_PREFIX = "EDGEFLOWD_"
_NOT_SETTINGS = {"EDGEFLOWD_ARGS"}  # extra flags, expanded by the unit's ExecStart


@dataclass(frozen=True)
class DaemonConfig:
    node_id: str = ""
    broker: str = "mqtt://127.0.0.1:1883"  # mqtts://HOST[:PORT] for TLS
    cluster: str = "default"
    profile: str | None = None  # device profile YAML, or a shipped profile's name; sets torch threads
    threads: int | None = None  # overrides the profile's
    workers: int = 1  # units computed at once; with torch threads, the node's CPU use
    mqtt_version: str = "5"
    ca_file: str | None = None  # CA that signed the broker's certificate (else the system's CAs)
    cert_file: str | None = None  # client certificate, for brokers that authenticate by certificate
    key_file: str | None = None
    username: str | None = None
    password_file: str | None = None  # the password is its first line
    packet_bytes: int = PACKET_BYTES  # frame size; capped by the broker's limit under MQTT 5
    request_ttl_s: float = 30.0  # a request's partial inputs are dropped after this
    buffer_mb: float = 256.0  # bytes of partial inputs held for all requests together
    queue_messages: int = 10000  # inbound messages waiting for the engine; more are dropped
    telemetry_interval_s: float = 5.0
    assignment_timeout_s: float = 120.0  # weights of a new assignment must arrive within this
    cache_dir: str | None = None  # content-addressed weight cache (sha256 file names)
    log_level: str = "info"

    def broker_settings(self) -> BrokerSettings:
        return BrokerSettings(
            self.broker,
            self.mqtt_version,
            self.ca_file,
            self.cert_file,
            self.key_file,
            self.username,
            self.password_file,
        )

    def problems(self) -> list[tuple[str, str]]:
        """(setting, message) for every value that is wrong, alone or with the others."""
        found: list[tuple[str, str]] = []
        if not self.node_id or any(c in self.node_id for c in "/#+"):
            found.append(("node_id", f"node_id must be set and contain no '/', '#', '+' (got {self.node_id!r})"))
        for name in ("workers", "packet_bytes", "queue_messages"):
            if getattr(self, name) < 1:
                found.append((name, f"{name} must be at least 1, got {getattr(self, name)}"))
        if self.threads is not None and self.threads < 1:
            found.append(("threads", f"threads must be at least 1, got {self.threads}"))
        if self.log_level not in ("debug", "info", "warning", "error"):
            found.append(("log_level", f"log_level must be debug, info, warning or error, got {self.log_level!r}"))
        found += [("broker" if name == "url" else name, m) for name, m in self.broker_settings().problems()]
        return found


_TYPES: dict[str, tuple[type, ...]] = {
    "node_id": (str,),
    "broker": (str,),
    "cluster": (str,),
    "profile": (str,),
    "threads": (int,),
    "workers": (int,),
    "mqtt_version": (str,),
    "ca_file": (str,),
    "cert_file": (str,),
    "key_file": (str,),
    "username": (str,),
    "password_file": (str,),
    "packet_bytes": (int,),
    "request_ttl_s": (int, float),
    "buffer_mb": (int, float),
    "queue_messages": (int,),
    "telemetry_interval_s": (int, float),
    "assignment_timeout_s": (int, float),
    "cache_dir": (str,),
    "log_level": (str,),
}
_PATHS = ("profile", "ca_file", "cert_file", "key_file", "password_file", "cache_dir")  # relative to the file


@dataclass
class ConfigReport:
    """The effective configuration (valid only without errors), where each value came from, and
    every error found: all of them, so one ``--check-config`` run shows everything to fix."""

    config: DaemonConfig = field(default_factory=DaemonConfig)
    sources: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")


def _setting(doc: YamlDoc, key: str, value: Any) -> Any:
    check_keys(doc, {key: value}, (), set(_TYPES))
    kinds = _TYPES[key]
    if float in kinds:
        return number(doc, value, (key,))
    if key == "mqtt_version" and isinstance(value, (int, float)):
        return str(value)  # YAML reads 5 as a number
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise doc.error((key,), f"expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def _from_file(path: Path, report: ConfigReport) -> dict[str, Any]:
    try:
        doc = YamlDoc(read_text(path), str(path))
    except ProfileError as exc:
        report.errors.append(str(exc))
        return {}
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        report.errors.append(str(doc.error((), "the configuration is a mapping of settings")))
        return {}
    values: dict[str, Any] = {}
    for key, value in data.items():
        try:
            values[key] = _setting(doc, key, value)
        except ProfileError as exc:
            report.errors.append(str(exc))
            continue
        if key in _PATHS and not Path(value).is_absolute() and (path.parent / value).exists():
            values[key] = str(path.parent / value)
        report.sources[key] = f"{path}:{doc.line((key,))}"
    return values


def _from_environment(environ: Mapping[str, str], report: ConfigReport) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS or text == "":
            continue  # an empty variable (a blank line in /etc/default/edgeflowd) sets nothing
        key = name[len(ENV_PREFIX) :].lower()
        kinds = _TYPES.get(key)
        if kinds is None:
            report.errors.append(
                f"environment {name}: unknown setting (expected {ENV_PREFIX} + one of "
                f"{', '.join(k.upper() for k in _TYPES)})"
            )
            continue
        try:
            values[key] = float(text) if float in kinds else int(text) if int in kinds else text
        except ValueError:
            report.errors.append(f"environment {name}: expected {kinds[0].__name__}, got {text!r}")
            continue
        report.sources[key] = f"environment {name}"
    return values


def read_config(
    path: str | Path | None, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> ConfigReport:
    """Defaults, then the file at ``path``, then ``EDGEFLOWD_*`` variables of ``environ`` (this
    process's environment by default), then the non-None ``overrides`` (command-line flags)."""
    report = ConfigReport()
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_from_file(Path(path), report))
    values.update(_from_environment(os.environ if environ is None else environ, report))
    known = {f.name for f in fields(DaemonConfig)}
    for key, value in overrides.items():
        if value is not None and key in known:
            values[key] = value
            report.sources[key] = f"--{key.replace('_', '-')}"
    report.config = replace(DaemonConfig(), **values)
    report.errors += [f"{report.source(name)}: {problem}" for name, problem in report.config.problems()]
    return report


def load_config(
    path: str | Path | None, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> DaemonConfig:
    """:func:`read_config`, raising one :class:`ProfileError` that lists every error."""
    report = read_config(path, overrides, environ)
    if report.errors:
        raise ProfileError("\n".join(report.errors))
    return report.config
