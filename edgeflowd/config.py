"""The daemon's configuration: defaults, then the YAML file (``--config``), then command-line flags.
Every error names the file, line and field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edgeflowd.errors import ProfileError
from edgeflowd.yamldoc import YamlDoc, check_keys, number, read_text

__all__ = ["DaemonConfig", "load_config"]


@dataclass(frozen=True)
class DaemonConfig:
    node_id: str = ""
    broker: str = "mqtt://127.0.0.1:1883"
    cluster: str = "default"
    profile: str | None = None  # device profile YAML; its ``threads`` sets torch's threads
    threads: int | None = None  # overrides the profile's
    workers: int = 1  # units computed at once; with torch threads, the node's CPU use
    mqtt_version: str = "5"
    packet_bytes: int = 1 << 20  # frame size; capped by the broker's limit under MQTT 5
    request_ttl_s: float = 30.0  # a request's partial inputs are dropped after this
    buffer_mb: float = 256.0  # bytes of partial inputs held for all requests together
    queue_messages: int = 10000  # inbound messages waiting for the engine; more are dropped
    telemetry_interval_s: float = 5.0
    assignment_timeout_s: float = 120.0  # weights of a new assignment must arrive within this
    cache_dir: str | None = None  # content-addressed weight cache (sha256 file names)
    log_level: str = "info"

    def validate(self, where: str = "configuration") -> DaemonConfig:
        if not self.node_id or any(c in self.node_id for c in "/#+"):
            raise ProfileError(f"{where}: node_id must be set and contain no '/', '#', '+' (got {self.node_id!r})")
        if self.mqtt_version not in ("5", "3.1.1"):
            raise ProfileError(f"{where}: mqtt_version must be '5' or '3.1.1', got {self.mqtt_version!r}")
        for name in ("workers", "packet_bytes", "queue_messages"):
            if getattr(self, name) < 1:
                raise ProfileError(f"{where}: {name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ProfileError(f"{where}: threads must be at least 1, got {self.threads}")
        return self


_TYPES: dict[str, tuple[type, ...]] = {
    "node_id": (str,), "broker": (str,), "cluster": (str,), "profile": (str,), "threads": (int,),
    "workers": (int,), "mqtt_version": (str,), "packet_bytes": (int,), "request_ttl_s": (int, float),
    "buffer_mb": (int, float), "queue_messages": (int,), "telemetry_interval_s": (int, float),
    "assignment_timeout_s": (int, float), "cache_dir": (str,), "log_level": (str,),
}  # fmt: skip


def _setting(doc: YamlDoc, key: str, value: Any) -> Any:
    kinds = _TYPES[key]
    if float in kinds:
        return number(doc, value, (key,))
    if key == "mqtt_version" and isinstance(value, (int, float)):
        return str(value)  # YAML reads 5 as a number
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise doc.error((key,), f"expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def load_config(path: str | Path | None, overrides: Mapping[str, Any]) -> DaemonConfig:
    """Defaults, then the file at ``path``, then the non-None ``overrides`` (command-line flags)."""
    config = DaemonConfig()
    where = "command line"
    if path is not None:
        path = Path(path)
        doc = YamlDoc(read_text(path), str(path))
        data = doc.data if doc.data is not None else {}
        if not isinstance(data, dict):
            raise doc.error((), "the configuration is a mapping of settings")
        check_keys(doc, data, (), set(_TYPES))
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _setting(doc, key, value)
        config = replace(config, **values)
        where = str(path)
        if config.profile and (path.parent / config.profile).is_file():  # relative to the file
            config = replace(config, profile=str(path.parent / config.profile))
    known = {f.name for f in fields(DaemonConfig)}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None and k in known})
    return config.validate(where)
