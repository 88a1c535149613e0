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

from edgeflowd.profiles.formats import ClusterDoc, DeviceProfileDoc, LinkDoc
from edgeflowd.profiles.yamldoc import YamlDoc, convert, read_text

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
    """A profile from its document (:class:`DeviceProfileDoc`, which says what is valid)."""
    if not isinstance(data, dict):
        raise doc.error(path, "a device profile is a mapping")
    profile = convert(doc, data, path, DeviceProfileDoc)
    compute = profile.compute
    return DeviceProfile(
        name=profile.name or name,
        description=profile.description,
        gflops=compute.gflops,
        op_overhead_ms=compute.op_overhead_ms,
        weights_gbps=compute.weights_gbps,
        kind_factors={**DEFAULT_KIND_FACTORS, **{str(kind): f for kind, f in compute.per_kind.items()}},
        memory_mb=profile.memory_mb,
        threads=profile.threads,
        link=_link(profile.link),
    )


def _link(link: LinkDoc) -> Link:
    return Link(link.up_mbps, link.down_mbps, link.latency_ms)


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
    cluster = convert(doc, data, (), ClusterDoc)
    devices: list[Device] = []
    seen: set[str] = set()
    for i, entry in enumerate(cluster.devices):
        path: tuple[str | int, ...] = ("devices", i)
        if entry.id in seen:
            raise doc.error((*path, "id"), f"device id {entry.id!r} appears twice")
        seen.add(entry.id)
        ref = data["devices"][i]["profile"]  # as written: the profile's own file names its errors
        ppath: tuple[str | int, ...]
        if isinstance(ref, str):
            profile_path = _resolve_profile(ref, base_dir)
            pdoc = YamlDoc(read_text(profile_path), str(profile_path))
            raw, pdoc_used, ppath = pdoc.data, pdoc, ()
        else:
            raw, pdoc_used, ppath = ref, doc, (*path, "profile")
        if entry.overrides is not None:
            raw, pdoc_used, ppath = _merge(raw, entry.overrides), doc, (*path, "overrides")
        profile = _device_profile(pdoc_used, raw, ppath, ref if isinstance(ref, str) else entry.id)
        devices.append(Device(entry.id, profile, entry.load))
    client = _link(cluster.client) if cluster.client is not None else Cluster.client
    return Cluster(name=cluster.name or Path(source).stem, devices=tuple(devices), client=client)


def load_cluster(path: str | Path) -> Cluster:
    """Load a cluster file; a bare name (``paper-4``) means ``profiles/clusters/NAME.yaml``."""
    path = Path(path)
    if not path.exists() and not path.suffix:
        path = PROFILES_DIR / "clusters" / f"{path}.yaml"
    return parse_cluster(read_text(path), str(path), path.parent)
