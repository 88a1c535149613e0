"""Assignments: what one node runs for one plan generation, and the weights it needs.

An assignment is a small retained JSON message (units, forwarding tables, and a table of weight
*references*). Each weight tensor travels once as a content-addressed blob: its raw little-endian
bytes, named by their SHA-256 and cut into parts no larger than the broker's packet limit, on
retained topics ``blob/<sha256>/<part>``. Nodes that share a weight share its blob; a node that
already holds the bytes (in memory or in its cache directory) fetches nothing; a blob whose
bytes do not hash to its name is refused. Pure: no sockets, no files, no clocks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from edgeflowd.core.units import ExecutionUnit
from edgeflowd.errors import ProtocolError
from edgeflowd.wire.codec import tensor_bytes, tensor_from_bytes

__all__ = ["ASSIGNMENT_SCHEMA", "Assignment", "BlobRef", "blob_of", "split_blob", "tensor_of_blob"]

ASSIGNMENT_SCHEMA = "edgeflow.assignment/1"


@dataclass(frozen=True)
class BlobRef:
    """A weight tensor by content: ``parts`` retained messages whose bytes hash to ``sha256``."""

    sha256: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    parts: int

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
            "parts": self.parts,
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> BlobRef:
        try:
            ref = cls(
                sha256=str(value["sha256"]),
                dtype=str(value["dtype"]),
                shape=tuple(int(v) for v in value["shape"]),
                nbytes=int(value["nbytes"]),
                parts=int(value["parts"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"{where}: needs sha256, dtype, shape, nbytes, parts: {exc}") from exc
        if len(ref.sha256) != 64 or any(c not in "0123456789abcdef" for c in ref.sha256):
            raise ProtocolError(f"{where}: sha256 must be 64 lower-case hex digits, got {ref.sha256!r}")
        if ref.parts < 1 or ref.nbytes < 0 or ref.parts > max(1, ref.nbytes):
            raise ProtocolError(f"{where}: {ref.parts} parts for {ref.nbytes} bytes is inconsistent")
        return ref


def blob_of(tensor: torch.Tensor, part_bytes: int, what: str = "weight") -> tuple[BlobRef, bytes]:
    """The reference and raw bytes of one weight tensor."""
    dtype, shape, raw = tensor_bytes(tensor, what)
    parts = max(1, math.ceil(len(raw) / part_bytes))
    return BlobRef(hashlib.sha256(raw).hexdigest(), dtype, tuple(shape), len(raw), parts), raw


def split_blob(raw: bytes, ref: BlobRef) -> list[bytes]:
    size = max(1, math.ceil(len(raw) / ref.parts))
    return [raw[i * size : (i + 1) * size] for i in range(ref.parts)]


def tensor_of_blob(ref: BlobRef, parts: Mapping[int, bytes], where: str) -> torch.Tensor:
    """The tensor once every part is present; refuses bytes that do not hash to ``ref.sha256``."""
    raw = b"".join(parts[i] for i in range(ref.parts))
    if hashlib.sha256(raw).hexdigest() != ref.sha256:
        raise ProtocolError(f"{where}: blob bytes do not hash to {ref.sha256[:12]}…; refused")
    return tensor_from_bytes(ref.dtype, list(ref.shape), raw, where)


@dataclass(frozen=True)
class Assignment:
    """Node ``node`` (plan device index ``device``) runs ``units`` of plan ``plan`` (generation
    ``generation``); ``weights`` maps each constant the units name to its blob."""

    generation: int
    plan: str
    model: str
    node: str
    device: int
    units: tuple[ExecutionUnit, ...]
    weights: Mapping[str, BlobRef]

    def to_bytes(self) -> bytes:
        body = {
            "schema": ASSIGNMENT_SCHEMA,
            "generation": self.generation,
            "plan": self.plan,
            "model": self.model,
            "node": self.node,
            "device": self.device,
            "units": [u.to_json() for u in self.units],
            "weights": {name: ref.to_json() for name, ref in sorted(self.weights.items())},
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, payload: bytes, topic: str) -> Assignment:
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"{topic}: assignment is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("schema") != ASSIGNMENT_SCHEMA:
            raise ProtocolError(f"{topic}: field 'schema' must be {ASSIGNMENT_SCHEMA!r}")
        for name, kind in (
            ("generation", int),
            ("plan", str),
            ("model", str),
            ("node", str),
            ("device", int),
            ("units", list),
            ("weights", dict),
        ):
            if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
                raise ProtocolError(f"{topic}: field {name!r} must be {kind.__name__}, got {data.get(name)!r}")
        units = tuple(ExecutionUnit.from_json(u, f"{topic}: units[{i}]") for i, u in enumerate(data["units"]))
        weights = {str(k): BlobRef.from_json(v, f"{topic}: weights.{k}") for k, v in data["weights"].items()}
        for unit in units:
            if unit.device != data["device"]:
                raise ProtocolError(f"{topic}: unit {unit.uid} belongs to device {unit.device}, not {data['device']}")
            missing = [n for n in unit.const_names() if n not in weights]
            if missing:
                raise ProtocolError(f"{topic}: unit {unit.uid} names weights {missing[:3]} the assignment lacks")
        return cls(data["generation"], data["plan"], data["model"], data["node"], data["device"], units, weights)
