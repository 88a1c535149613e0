"""Device and cluster profiles: YAML files validated once, with errors that name file, line and
field (``profiles/devices/pi4.yaml:12: link.up_mbps: expected a positive number, got 'fast'``).

A device profile declares compute (GFLOP/s on convolutions, with optional per-op-kind factors),
memory budget, torch threads and its link to the broker. A cluster lists device ids with a
profile each (a file name under ``profiles/devices/`` or a path), optional overrides and a
static load, plus the requester's own link (``client``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeflowd.profiles.yamldoc import YamlDoc, check_keys, number, read_text, require

__all__ = [
    "DEFAULT_KIND_FACTORS",
    "MEASURED_KINDS",
    "Cluster",
    "Device",
    "DeviceProfile",
    "Link",
    "load_cluster",
    "load_device_profile",
    "parse_cluster",
]


def _profiles_dir() -> Path:
    """The checkout's ``profiles/``, else the copy an installed package put under its prefix."""
    checkout = Path(__file__).resolve().parents[2] / "profiles"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "edgeflow" / "profiles"


PROFILES_DIR = _profiles_dir()

# Throughput of each op kind relative to dense convolution on a CPU: depthwise and element-wise
# work is memory-bound, so a FLOP of it costs more time. Profiles may override per device.
DEFAULT_KIND_FACTORS: dict[str, float] = {
    "conv": 1.0,
    "dwconv": 0.3,
    "matmul": 0.6,
    "pool": 0.25,
    "eltwise": 0.2,
    "upsample": 0.2,
    "concat": 0.2,
    "reshape": 0.2,
    "unknown": 0.5,
}
MEASURED_KINDS = ("dwconv", "matmul", "eltwise", "pool", "concat", "upsample")
"""The kinds a node's benchmark measures a rate of (``<kind>_gflops``), whose factors relative to
dense convolution then replace the declared ones: on this project's test machine the declared
element-wise factor was 8x too fast (an add over 256x56x56 runs ~3 GFLOP/s, not a fifth of a
130 GFLOP/s convolution) and the pooling one 4x."""


@dataclass(frozen=True)
class Link:
    """The device's path to the broker: every forwarded byte goes up one link and down another."""

    up_mbps: float
    down_mbps: float
    latency_ms: float


def _free(load: float) -> float:
    """The share of the CPU left to EdgeFlow (never below 5%: a busy board still makes progress)."""
    return max(0.05, 1.0 - load)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    gflops: float
    memory_mb: float
    threads: int
    link: Link
    kind_factors: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_FACTORS))
    op_overhead_ms: float = 0.2
    description: str = ""
    weights_gbps: float = 0.0
    """How fast one pass over a layer's weights goes (GB/s): every unit of a layer reads all of
    them, whatever its rows. 0: not charged."""

    def rate(self, kind: str, load: float = 0.0) -> float:
        """FLOP/s for ``kind`` with a fraction ``load`` of the CPU taken by other work."""
        factor = self.kind_factors.get(kind, self.kind_factors.get("unknown", 0.5))
        return self.gflops * 1e9 * factor * _free(load)

    def weights_rate(self, load: float = 0.0) -> float:
        """Bytes/s of a pass over a layer's weights with a fraction ``load`` taken (0: not charged)."""
        return self.weights_gbps * 1e9 * _free(load)


@dataclass(frozen=True)
class Device:
    """One node as the planner sees it; ``ops``: the plugin ops (``local.*``) it reported it runs."""

    id: str
    profile: DeviceProfile
    load: float = 0.0
    ops: frozenset[str] = frozenset()

    def rate(self, kind: str) -> float:
        return self.profile.rate(kind, self.load)

    def weights_rate(self) -> float:
        return self.profile.weights_rate(self.load)

    @property
    def link(self) -> Link:
        return self.profile.link


@dataclass(frozen=True)
class Cluster:
    name: str
    devices: tuple[Device, ...]
    client: Link = Link(up_mbps=1000.0, down_mbps=1000.0, latency_ms=0.2)

    def __len__(self) -> int:
        return len(self.devices)

    def with_devices(self, devices: tuple[Device, ...], name: str | None = None) -> Cluster:
        return replace(self, devices=devices, name=name or self.name)


def _device_profile(doc: YamlDoc, data: Any, path: tuple[str | int, ...], name: str) -> DeviceProfile:
    if not isinstance(data, dict):
        raise doc.error(path, "a device profile is a mapping")
    check_keys(doc, data, path, {"schema", "name", "description", "compute", "memory_mb", "threads", "link"})
    compute = require(doc, data, path, "compute")
    cpath = (*path, "compute")
    if not isinstance(compute, dict):
        raise doc.error(cpath, "expected a mapping with gflops")
    check_keys(doc, compute, cpath, {"gflops", "per_kind", "op_overhead_ms", "weights_gbps"})
    factors = dict(DEFAULT_KIND_FACTORS)
    per_kind = compute.get("per_kind", {}) or {}
    if not isinstance(per_kind, dict):
        raise doc.error((*cpath, "per_kind"), "expected a mapping of op kind to factor")
    for kind, factor in per_kind.items():
        if kind not in DEFAULT_KIND_FACTORS:
            raise doc.error((*cpath, "per_kind", kind), f"unknown op kind (known: {', '.join(DEFAULT_KIND_FACTORS)})")
        factors[kind] = number(doc, factor, (*cpath, "per_kind", kind))
    link = require(doc, data, path, "link")
    lpath = (*path, "link")
    if not isinstance(link, dict):
        raise doc.error(lpath, "expected a mapping with up_mbps, down_mbps, latency_ms")
    check_keys(doc, link, lpath, {"up_mbps", "down_mbps", "latency_ms"})
    threads = require(doc, data, path, "threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise doc.error((*path, "threads"), f"expected a positive integer, got {threads!r}")
    return DeviceProfile(
        name=str(data.get("name", name)),
        description=str(data.get("description", "")),
        gflops=number(doc, require(doc, compute, cpath, "gflops"), (*cpath, "gflops")),
        op_overhead_ms=number(doc, compute.get("op_overhead_ms", 0.2), (*cpath, "op_overhead_ms"), strict=False),
        weights_gbps=number(doc, compute.get("weights_gbps", 0.0), (*cpath, "weights_gbps"), strict=False),
        kind_factors=factors,
        memory_mb=number(doc, require(doc, data, path, "memory_mb"), (*path, "memory_mb")),
        threads=threads,
        link=_link(doc, link, lpath),
    )


def _link(doc: YamlDoc, link: dict[str, Any], lpath: tuple[str | int, ...]) -> Link:
    return Link(
        up_mbps=number(doc, require(doc, link, lpath, "up_mbps"), (*lpath, "up_mbps")),
        down_mbps=number(doc, require(doc, link, lpath, "down_mbps"), (*lpath, "down_mbps")),
        latency_ms=number(doc, require(doc, link, lpath, "latency_ms"), (*lpath, "latency_ms"), strict=False),
    )


def load_device_profile(path: str | Path) -> DeviceProfile:
    """Load a device profile file; a bare name (``rpi4``) means a shipped ``devices/NAME.yaml``."""
    path = Path(path)
    if not path.is_file() and not path.suffix:
        path = PROFILES_DIR / "devices" / f"{path}.yaml"
    doc = YamlDoc(read_text(path), str(path))
    return _device_profile(doc, doc.data, (), path.stem)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def _resolve_profile(ref: str, base_dir: Path) -> Path:
    candidates = [base_dir / ref, base_dir.parent / "devices" / f"{ref}.yaml", PROFILES_DIR / "devices" / f"{ref}.yaml"]
    return next((c for c in candidates if c.is_file()), candidates[0])


def parse_cluster(text: str, source: str, base_dir: Path) -> Cluster:
    doc = YamlDoc(text, source)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "a cluster profile is a mapping with 'devices'")
    check_keys(doc, data, (), {"schema", "name", "description", "devices", "client"})
    raw_devices = require(doc, data, (), "devices")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise doc.error(("devices",), "expected a non-empty list of devices")
    devices: list[Device] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw_devices):
        path: tuple[str | int, ...] = ("devices", i)
        if not isinstance(entry, dict):
            raise doc.error(path, "each device is a mapping with 'id' and 'profile'")
        check_keys(doc, entry, path, {"id", "profile", "overrides", "load"})
        dev_id = require(doc, entry, path, "id")
        if not isinstance(dev_id, str) or not dev_id or "/" in dev_id or "#" in dev_id or "+" in dev_id:
            raise doc.error((*path, "id"), f"expected a name without '/', '#', '+', got {dev_id!r}")
        if dev_id in seen:
            raise doc.error((*path, "id"), f"device id {dev_id!r} appears twice")
        seen.add(dev_id)
        ref = require(doc, entry, path, "profile")
        ppath: tuple[str | int, ...]
        if isinstance(ref, str):
            profile_path = _resolve_profile(ref, base_dir)
            pdoc = YamlDoc(read_text(profile_path), str(profile_path))
            raw, pdoc_used, ppath = pdoc.data, pdoc, ()
        elif isinstance(ref, dict):
            raw, pdoc_used, ppath = ref, doc, (*path, "profile")
        else:
            raise doc.error((*path, "profile"), "expected a profile name, a path, or an inline profile mapping")
        overrides = entry.get("overrides")
        if overrides is not None:
            raw, pdoc_used, ppath = _merge(raw, overrides), doc, (*path, "overrides")
        profile = _device_profile(pdoc_used, raw, ppath, str(ref) if isinstance(ref, str) else dev_id)
        load = number(doc, entry.get("load", 0.0), (*path, "load"), strict=False)
        if load >= 1.0:
            raise doc.error((*path, "load"), f"expected a CPU fraction in [0, 1), got {load}")
        devices.append(Device(dev_id, profile, load))
    client = Cluster.client
    if "client" in data:
        raw_client = data["client"]
        if not isinstance(raw_client, dict):
            raise doc.error(("client",), "expected a mapping with up_mbps, down_mbps, latency_ms")
        check_keys(doc, raw_client, ("client",), {"up_mbps", "down_mbps", "latency_ms"})
        client = _link(doc, raw_client, ("client",))
    return Cluster(name=str(data.get("name", Path(source).stem)), devices=tuple(devices), client=client)


def load_cluster(path: str | Path) -> Cluster:
    """Load a cluster file; a bare name (``paper-4``) means ``profiles/clusters/NAME.yaml``."""
    path = Path(path)
    if not path.exists() and not path.suffix:
        path = PROFILES_DIR / "clusters" / f"{path}.yaml"
    return parse_cluster(read_text(path), str(path), path.parent)
