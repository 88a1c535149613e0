"""Control messages: JSON objects with a ``schema`` field ``edgeflow.<kind>/<version>``, one frozen
type each. Decoding is strict about the fields it knows (type errors name the topic and field)
and ignores keys it does not know, so a newer sender stays readable."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from edgeflowd.errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSIONS",
    "AssignmentReport",
    "ControllerEvent",
    "Info",
    "PlanInfo",
    "Status",
    "Telemetry",
    "decode_control",
    "encode_control",
]

PROTOCOL_VERSIONS = (1,)
"""Protocol versions this build speaks (the ``v1`` in topic names)."""

M = TypeVar("M", bound="_Message")


@dataclass(frozen=True)
class _Message:
    kind: ClassVar[str] = ""

    @property
    def schema(self) -> str:
        return f"edgeflow.{self.kind}/1"


@dataclass(frozen=True)
class Status(_Message):
    """Retained ``node/<id>/status``; the broker publishes the offline one as the last will."""

    kind: ClassVar[str] = "status"
    state: str  # online | offline
    instance: str  # random per process start: the same node id twice is detectable
    session: int = 0


@dataclass(frozen=True)
class Info(_Message):
    """Retained ``node/<id>/info``: who the node is and what it can do."""

    kind: ClassVar[str] = "info"
    node: str
    version: str
    protocol: list[int] = field(default_factory=lambda: list(PROTOCOL_VERSIONS))
    profile: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Telemetry(_Message):
    """Periodic ``node/<id>/telemetry``: load as psutil reports it, and the node's counters since
    it started (``malformed``: messages refused as invalid; ``dropped``: valid data it could not
    keep: queue or buffer full, expired; ``stale``: frames of another plan generation).
    ``cpu_percent`` covers only the CPUs the daemon may run on (its affinity), so a node pinned to
    some cores of a shared machine reports their load."""

    kind: ClassVar[str] = "telemetry"
    cpu_percent: float
    memory_percent: float
    load_avg: list[float]
    temperature_c: float | None = None
    malformed: int = 0
    dropped: int = 0
    stale: int = 0
    errors: int = 0
    units_run: int = 0
    frames_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    pending: int = 0
    generation: int = -1
    process_cpu_percent: float = 0.0  # the daemon's own share of the CPUs it may run on


@dataclass(frozen=True)
class AssignmentReport(_Message):
    """``node/<id>/assignment/reported``: the generation a node runs, or why it cannot."""

    kind: ClassVar[str] = "assignment-report"
    generation: int
    state: str  # ready | error
    error: str = ""
    units: list[str] = field(default_factory=list)
    instance: str = ""  # the reporting process (retained reports outlive it)


@dataclass(frozen=True)
class PlanInfo(_Message):
    """Retained ``controller/plan``: the deployed plan, as a requester needs it. ``sources`` are the
    requester's own units (the model inputs, with their forwarding tables); ``outputs`` lists
    ``{"layer", "shape"}`` in the model's output order; ``nodes[d]`` runs plan device ``d``."""

    kind: ClassVar[str] = "plan"
    generation: int
    plan: str
    model: str
    method: str
    input_shape: list[int]
    nodes: list[str]
    sources: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    predicted_ms: float = 0.0
    blobs: dict[str, Any] = field(default_factory=dict)  # sha256 -> parts, to clear them later


@dataclass(frozen=True)
class ControllerEvent(_Message):
    """``controller/event``: what the controller noticed or did (a node joined or left, a re-plan
    and why, a node refused), for dashboards and logs."""

    kind: ClassVar[str] = "event"
    event: str
    node: str = ""
    detail: str = ""
    generation: int = -1


def encode_control(message: _Message) -> bytes:
    body = {f.name: getattr(message, f.name) for f in fields(message)}
    return json.dumps({"schema": message.schema, **body}, separators=(",", ":")).encode()


def _check(value: Any, hint: Any, where: str) -> None:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if not any(_matches(value, o) for o in options):
            raise ProtocolError(f"{where}: expected {hint}, got {value!r}")
        return
    if not _matches(value, hint):
        raise ProtocolError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and (item is Any or all(_matches(v, item) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, origin)


def decode_control(payload: bytes, topic: str, cls: type[M]) -> M:
    """Parse a control message of type ``cls`` received on ``topic``."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{topic}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"{topic}: a control message is a JSON object")
    schema = data.get("schema")
    expected = f"edgeflow.{cls.kind}/"
    if not isinstance(schema, str) or not schema.startswith(expected):
        raise ProtocolError(f"{topic}: field 'schema' must be {expected}1, got {schema!r}")
    if schema != f"{expected}1":
        raise ProtocolError(f"{topic}: schema {schema!r} is newer than this node speaks ({expected}1)")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolError(f"{topic}: missing field {f.name!r}")
            continue
        _check(data[f.name], hints[f.name], f"{topic}: field {f.name!r}")
        values[f.name] = data[f.name]
    return cls(**values)
