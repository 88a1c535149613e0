"""The formats of device profiles and cluster files, declared once as msgspec types, the project's
one schema mechanism: the parser (:mod:`edgeflowd.profiles.devices`) converts each YAML document
into them, so that what they declare is what is checked, and :mod:`edgeflowd.profiles.schemas`
writes their JSON Schemas, which editors use to check and complete the files as they are typed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = ["ClusterDeviceDoc", "ClusterDoc", "ComputeDoc", "DeviceProfileDoc", "LinkDoc", "OpKind"]

_FINITE = 1e12  # beyond any real rate or time: .inf and typos of many zeros are refused
Positive = Annotated[float, Meta(gt=0, lt=_FINITE)]
NonNegative = Annotated[float, Meta(ge=0, lt=_FINITE)]

OpKind = Literal["conv", "dwconv", "matmul", "pool", "eltwise", "upsample", "concat", "reshape", "unknown"]
"""The op kinds of the cost model (``DEFAULT_KIND_FACTORS``'s keys)."""


class LinkDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The device's path to the broker: every forwarded byte goes up one link and down another."""

    up_mbps: Annotated[Positive, Meta(description="throughput towards the broker, Mbit/s")]
    down_mbps: Annotated[Positive, Meta(description="throughput from the broker, Mbit/s")]
    latency_ms: Annotated[NonNegative, Meta(description="one message's latency through the broker, ms")]


class ComputeDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gflops: Annotated[Positive, Meta(description="effective GFLOP/s on dense convolutions")]
    per_kind: Annotated[
        dict[OpKind, Positive],
        Meta(description="throughput of an op kind relative to dense convolution (memory-bound kinds: below 1)"),
    ] = msgspec.field(default_factory=dict)
    op_overhead_ms: Annotated[NonNegative, Meta(description="fixed cost of running one unit, ms")] = 0.2
    weights_gbps: Annotated[
        NonNegative, Meta(description="GB/s of one pass over a layer's weights, which every unit of it reads (0: free)")
    ] = 0.0


class DeviceProfileDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A device profile (``profiles/devices/*.yaml``)."""

    compute: ComputeDoc
    memory_mb: Annotated[Positive, Meta(description="budget for weights and activations, MiB")]
    link: LinkDoc
    schema: Literal["edgeflow.device/1"] = "edgeflow.device/1"
    name: str | None = None
    description: str = ""
    threads: Annotated[int, Meta(ge=1, description="torch threads the daemon runs with")] = 1


class ClusterDeviceDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, Meta(pattern=r"^[^/#+]+$", description="the node's node_id (one MQTT topic level)")]
    profile: Annotated[
        str | DeviceProfileDoc,
        Meta(description="a shipped profile's name, a path relative to this file, or an inline profile"),
    ]
    overrides: Annotated[
        dict[str, Any] | None, Meta(description="fields of the profile replaced for this device (nested)")
    ] = None
    load: Annotated[float, Meta(ge=0, lt=1, description="CPU share other work takes there, planned with")] = 0.0


class ClusterDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A cluster file (``profiles/clusters/*.yaml``)."""

    devices: Annotated[list[ClusterDeviceDoc], Meta(min_length=1)]
    schema: Literal["edgeflow.cluster/1"] = "edgeflow.cluster/1"
    name: str | None = None
    description: str = ""
    client: Annotated[LinkDoc | None, Meta(description="the requester's own link to the broker")] = None
