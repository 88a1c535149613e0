"""The daemon's configuration: defaults, then the YAML file (``--config``), then ``EDGEFLOWD_*``
environment variables (``/etc/default/edgeflowd`` under systemd), then command-line flags.
Every value remembers where it came from, and every error names that place: the file and line,
the variable, or the flag."""

from __future__ import annotations

import argparse
import math
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgeflowd.core.sizes import PACKET_BYTES
from edgeflowd.errors import ProfileError
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.node.plugins import load_plugins
from edgeflowd.profiles.yamldoc import YamlDoc, check_keys, number, read_text

__all__ = [
    "ENV_PREFIX",
    "SECURITY",
    "SETTINGS",
    "ConfigReport",
    "DaemonConfig",
    "Setting",
    "add_arguments",
    "load_config",
    "read_config",
]

ENV_PREFIX = "EDGEFLOWD_"
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_NOT_SETTINGS = {"EDGEFLOWD_ARGS"}  # extra flags, expanded by the unit's ExecStart
_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _declare(
    default: Any, help: str, metavar: str | None = None, choices: Sequence[str] = (), path: bool = False
) -> Any:
    """One setting: YAML key = field name, variable ``EDGEFLOWD_<NAME>``, flag ``--name-with-dashes``;
    ``path``: relative to the configuration file."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "choices": tuple(choices), "path": path})


@dataclass(frozen=True)
class DaemonConfig:
    """Every setting of the daemon, declared once: the YAML keys, the ``EDGEFLOWD_*`` variables and
    the flags are derived from these fields (:data:`SETTINGS`, :func:`add_arguments`)."""

    node_id: str = _declare("", "this node's id: a cluster profile's device id", "ID")
    broker: str = _declare("mqtt://127.0.0.1:1883", "mqtt://HOST[:PORT], or mqtts:// for TLS", "URL")
    cluster: str = _declare("default", "cluster name, the topic root edgeflow/v2/NAME/", "NAME")
    profile: str | None = _declare(
        None, "device profile YAML, or a shipped profile's name; sets torch threads", "FILE", path=True
    )
    threads: int | None = _declare(None, "torch threads (default: the profile's, else 1)", "N")
    workers: int = _declare(1, "units computed at once; with torch threads, the node's CPU use", "N")
    mqtt_version: str = _declare("5", "MQTT version: 5 speaks 3.1.1 to a broker that refuses 5", choices=("5", "3.1.1"))
    ca_file: str | None = _declare(None, "CA that signed the broker's certificate (mqtts://)", "PEM", path=True)
    cert_file: str | None = _declare(None, "client certificate, with --key-file", "PEM", path=True)
    key_file: str | None = _declare(None, "the client certificate's key", "PEM", path=True)
    username: str | None = _declare(None, "user name at the broker", "NAME")
    password_file: str | None = _declare(None, "file whose first line is the password", "FILE", path=True)
    keepalive_s: int = _declare(
        5, "MQTT keepalive: the broker declares a frozen node offline 1.5x this after its last word", "S"
    )
    packet_bytes: int = _declare(
        PACKET_BYTES, "largest MQTT message sent; capped by the broker's limit under MQTT 5", "BYTES"
    )
    request_ttl_s: float = _declare(30.0, "a request's partial inputs are dropped after this", "S")
    buffer_mb: float = _declare(256.0, "partial inputs held for all requests together, of each model served", "MIB")
    max_requests: int = _declare(
        8, "requests of each model served held at once; a new one beyond is refused as busy", "N"
    )
    queue_messages: int = _declare(10000, "inbound messages waiting for the engine; more are dropped", "N")
    telemetry_interval_s: float = _declare(
        2.0, "seconds between telemetry messages; the controller takes 3 missed for a frozen node", "S"
    )
    measure_interval_s: float = _declare(
        10.0, "when idle, probe the node's speed this often and benchmark again if it moved (0: never)", "S"
    )
    assignment_timeout_s: float = _declare(120.0, "weights of a new assignment must arrive within this", "S")
    cache_dir: str | None = _declare(None, "keep fetched weights here, named by SHA-256", "DIR", path=True)
    log_level: str = _declare("info", "log level", choices=("debug", "info", "warning", "error"))
    plugins: str = _declare(
        "", "Python modules installed here whose functions this node runs as ops (YAML: a list)", "MOD[,MOD...]"
    )
    homeassistant_discovery: bool = _declare(False, "announce this node to Home Assistant (MQTT discovery)")
    homeassistant_prefix: str = _declare("homeassistant", "Home Assistant's MQTT discovery prefix", "PREFIX")

    @property
    def plugin_modules(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.plugins.split(",") if name.strip())

    def broker_settings(self) -> BrokerSettings:
        return BrokerSettings(
            self.broker,
            self.mqtt_version,
            self.ca_file,
            self.cert_file,
            self.key_file,
            self.username,
            self.password_file,
            self.keepalive_s,
        )

    def problems(self) -> list[tuple[str, str]]:
        """(setting, message) for every value that is wrong, alone or with the others."""
        found: list[tuple[str, str]] = []
        if not self.node_id or any(c in self.node_id for c in "/#+"):
            found.append(("node_id", f"node_id must be set and contain no '/', '#', '+' (got {self.node_id!r})"))
        for name in ("workers", "packet_bytes", "queue_messages", "max_requests"):
            if getattr(self, name) < 1:
                found.append((name, f"{name} must be at least 1, got {getattr(self, name)}"))
        if self.threads is not None and self.threads < 1:
            found.append(("threads", f"threads must be at least 1, got {self.threads}"))
        prefix = self.homeassistant_prefix
        if not prefix or prefix.startswith("/") or any(c in prefix for c in "#+\x00"):
            found.append(
                ("homeassistant_prefix", f"homeassistant_prefix must be a topic with no '#', '+' (got {prefix!r})")
            )
        levels = SETTINGS["log_level"].choices
        if self.log_level not in levels:
            found.append(("log_level", f"log_level must be {', '.join(levels)}, got {self.log_level!r}"))
        found += [("broker" if name == "url" else name, m) for name, m in self.broker_settings().problems()]
        found += [
            ("plugins", f"plugins: {name!r} is not a Python module name (package.module)")
            for name in self.plugin_modules
            if not _MODULE_NAME.fullmatch(name)
        ]
        return found


@dataclass(frozen=True)
class Setting:
    name: str
    kinds: tuple[type, ...]  # what a YAML value may be (an int is a float too)
    help: str
    default: Any
    metavar: str | None
    choices: tuple[str, ...]
    path: bool

    @property
    def flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"

    @property
    def variable(self) -> str:
        return f"{ENV_PREFIX}{self.name.upper()}"


def _kinds(hint: Any) -> tuple[type, ...]:
    kinds = tuple(k for k in typing.get_args(hint) or (hint,) if k is not type(None))
    return (int, float) if float in kinds else kinds


_HINTS = typing.get_type_hints(DaemonConfig)
SETTINGS: dict[str, Setting] = {
    f.name: Setting(
        f.name,
        _kinds(_HINTS[f.name]),
        f.metadata["help"],
        f.default,
        f.metadata["metavar"],
        f.metadata["choices"],
        f.metadata["path"],
    )
    for f in fields(DaemonConfig)
}
SECURITY = ("ca_file", "cert_file", "key_file", "username", "password_file")
"""The settings that prove who we are to the broker; every ``edgeflow`` tool takes them too."""


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: Iterable[str], required: Iterable[str] = ()
) -> None:
    """The flags of settings ``names``, as :data:`SETTINGS` declares them (no defaults: a flag
    left out leaves the file's, the variable's or the declared value)."""
    must = set(required)
    for name in names:
        s = SETTINGS[name]
        default = f" (default {s.default})" if s.default not in (None, "") else ""
        if s.kinds == (bool,):  # --name / --no-name
            parser.add_argument(s.flag, action=argparse.BooleanOptionalAction, default=None, help=f"{s.help}{default}")
            continue
        kind: Callable[[str], Any] = s.kinds[-1]
        parser.add_argument(
            s.flag,
            type=kind,
            metavar=s.metavar,
            choices=s.choices or None,
            required=name in must,
            help=s.help if name in must else f"{s.help}{default}",
        )


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
    check_keys(doc, {key: value}, (), set(SETTINGS))
    kinds = SETTINGS[key].kinds
    if float in kinds:
        return number(doc, value, (key,))
    if kinds == (bool,):
        if not isinstance(value, bool):
            raise doc.error((key,), f"expected true or false, got {value!r}")
        return value
    if key == "mqtt_version" and isinstance(value, (int, float)):
        return str(value)  # YAML reads 5 as a number
    if key == "plugins" and isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str) or "," in item:
                raise doc.error((key, i), f"expected a module name, got {item!r}")
        return ",".join(value)
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
        if SETTINGS[key].path and not Path(value).is_absolute() and (path.parent / value).exists():
            values[key] = str(path.parent / value)
        report.sources[key] = f"{path}:{doc.line((key,))}"
        if key == "plugins" and isinstance(value, list):  # each module's own line, for its errors
            report.sources.update({f"plugins.{m}": f"{path}:{doc.line((key, i))}" for i, m in enumerate(value)})
    return values


def _from_environment(environ: Mapping[str, str], report: ConfigReport) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS or text == "":
            continue  # an empty variable (a blank line in /etc/default/edgeflowd) sets nothing
        key = name[len(ENV_PREFIX) :].lower()
        setting = SETTINGS.get(key)
        if setting is None:
            report.errors.append(
                f"environment {name}: unknown setting (expected {ENV_PREFIX} + one of "
                f"{', '.join(k.upper() for k in SETTINGS)})"
            )
            continue
        kinds = setting.kinds
        if kinds == (bool,):
            if text.lower() not in _BOOLEANS:
                report.errors.append(f"environment {name}: expected one of {', '.join(_BOOLEANS)}, got {text!r}")
                continue
            values[key] = _BOOLEANS[text.lower()]
            report.sources[key] = f"environment {name}"
            continue
        try:
            values[key] = float(text) if float in kinds else int(text) if int in kinds else text
            if isinstance(values[key], float) and not math.isfinite(values[key]):
                raise ValueError(text)
        except ValueError:
            values.pop(key, None)
            wanted = "a finite number" if float in kinds else kinds[0].__name__
            report.errors.append(f"environment {name}: expected {wanted}, got {text!r}")
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
    unread = False  # the file could not be read as a whole: its settings are not known
    if path is not None:
        values.update(_from_file(Path(path), report))
        unread = bool(report.errors) and not values
    values.update(_from_environment(os.environ if environ is None else environ, report))
    for key, value in overrides.items():
        if value is not None and key in SETTINGS:
            values[key] = value
            report.sources[key] = SETTINGS[key].flag
    report.config = replace(DaemonConfig(), **values)
    problems = report.config.problems()
    unknown = f" ({path} could not be read: see above)" if unread else ""
    report.errors += [
        f"{report.source(name)}: {problem}{unknown if report.source(name) == 'default' else ''}"
        for name, problem in problems
    ]
    if report.config.plugin_modules and not any(name == "plugins" for name, _ in problems):
        for module in report.config.plugin_modules:
            try:  # a plugin that does not import is a configuration error, found before serving
                load_plugins([module], report.sources.get(f"plugins.{module}", report.source("plugins")))
            except ProfileError as exc:
                report.errors.append(str(exc))
    return report


def load_config(
    path: str | Path | None, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> DaemonConfig:
    """:func:`read_config`, raising one :class:`ProfileError` that lists every error."""
    report = read_config(path, overrides, environ)
    if report.errors:
        raise ProfileError("\n".join(report.errors))
    return report.config
