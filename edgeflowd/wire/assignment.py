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
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import torch

from edgeflowd.core.ops import check_call
from edgeflowd.core.units import ExecutionUnit
from edgeflowd.errors import ProtocolError
from edgeflowd.wire.codec import tensor_bytes, tensor_from_bytes
from edgeflowd.wire.frames import FrameKeys, key_of_hex
from edgeflowd.wire.schema import Document, decode, encode
from edgeflowd.wire.units import UnitDoc, unit_doc, unit_of

__all__ = [
    "ASSIGNMENT_SCHEMA",
    "NODE_WORK_SCHEMA",
    "Assignment",
    "AssignmentDoc",
    "BlobRef",
    "KeysDoc",
    "NodeWork",
    "NodeWorkDoc",
    "blob_of",
    "split_blob",
    "tensor_of_blob",
]

ASSIGNMENT_SCHEMA = "edgeflow.assignment/1"
NODE_WORK_SCHEMA = "edgeflow.node-work/1"


class BlobRef(msgspec.Struct, frozen=True):
    """A weight tensor by content: ``parts`` retained messages whose bytes hash to ``sha256``."""

    sha256: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    parts: int

    def __post_init__(self) -> None:  # msgspec runs it on decode too; its errors name the path
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if self.parts < 1 or self.nbytes < 0 or self.parts > max(1, self.nbytes):
            raise ValueError(f"{self.parts} parts for {self.nbytes} bytes is inconsistent")


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


class KeysDoc(msgspec.Struct, frozen=True):
    """The plan's frame keys as a node's assignment carries them (:class:`FrameKeys`, hex)."""

    plan: str
    request: str
    client: str

    def __post_init__(self) -> None:  # msgspec runs it on decode too; its errors name the path
        key_of_hex(self.plan, "plan")
        key_of_hex(self.request, "request")

    @classmethod
    def of(cls, keys: FrameKeys) -> KeysDoc:
        assert keys.plan is not None, "a node's assignment carries the plan key"
        return cls(keys.plan.hex(), keys.request.hex(), keys.client)

    def keys(self) -> FrameKeys:
        return FrameKeys(bytes.fromhex(self.plan), bytes.fromhex(self.request), self.client)


class AssignmentDoc(Document, frozen=True, tag=ASSIGNMENT_SCHEMA):
    generation: int
    plan: str
    model: str
    node: str
    device: int
    units: tuple[UnitDoc, ...]
    weights: dict[str, BlobRef]
    keys: KeysDoc


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
    keys: FrameKeys  # the plan's: this assignment's topic is the only place a node learns them

    @classmethod
    def from_doc(
        cls,
        doc: AssignmentDoc,
        where: str,
        plugins: Mapping[str, Callable[..., Any]] | None = None,
        checked: bool = True,
    ) -> Assignment:
        """Check a decoded assignment: every unit has ops, each allow-listed (or defined by one of
        the node's ``plugins``) and writing nothing in place (:func:`~edgeflowd.core.ops.check_call`;
        ``checked=False``: not that, for a deployer that only carries a plan on, which the node
        checks), belongs to its device, and every weight a unit names has a blob; errors name
        ``where`` (the topic and the path) at fault."""
        units = tuple(unit_of(u, f"{where}.units[{i}]") for i, u in enumerate(doc.units))
        for i, unit in enumerate(units):
            if not unit.ops:
                raise ProtocolError(f"{where}.units[{i}] ({unit.uid}) has no ops")
            for k, call in enumerate(unit.ops if checked else ()):
                check_call(call, f"{where}.units[{i}].ops[{k}] ({unit.uid})", plugins)
            if unit.device != doc.device:
                raise ProtocolError(f"{where}: unit {unit.uid} belongs to device {unit.device}, not {doc.device}")
            missing = [n for n in unit.const_names() if n not in doc.weights]
            if missing:
                raise ProtocolError(f"{where}: unit {unit.uid} names weights {missing[:3]} the assignment lacks")
        return cls(doc.generation, doc.plan, doc.model, doc.node, doc.device, units, doc.weights, doc.keys.keys())

    def to_bytes(self) -> bytes:
        return encode(self.to_doc())

    @classmethod
    def from_bytes(
        cls, payload: bytes, topic: str, plugins: Mapping[str, Callable[..., Any]] | None = None
    ) -> Assignment:
        """One assignment on its own (what :class:`NodeWork` carries one of per model)."""
        return cls.from_doc(decode(payload, AssignmentDoc, topic), f"{topic}: $", plugins)

    def work(self) -> NodeWork:
        """The node's work when it runs this one plan only."""
        return NodeWork(self.node, {self.model: self})

    def to_doc(self) -> AssignmentDoc:
        units = tuple(unit_doc(u) for u in self.units)
        weights = dict(sorted(self.weights.items()))
        return AssignmentDoc(
            self.generation, self.plan, self.model, self.node, self.device, units, weights, KeysDoc.of(self.keys)
        )


class NodeWorkDoc(Document, frozen=True, tag=NODE_WORK_SCHEMA):
    node: str
    plans: tuple[AssignmentDoc, ...]


@dataclass(frozen=True)
class NodeWork:
    """What node ``node`` runs, as its one retained ``node/<id>/assignment`` says: an assignment
    for each model the cluster serves on it (several models share the node's memory). One message
    for all of them, so that a node learns its whole work from one exact topic (some brokers hand
    retained messages only to exact subscriptions, and a node cannot know the models' names
    beforehand), and a re-plan of one model hands the others' assignments on unchanged."""

    node: str
    plans: Mapping[str, Assignment]  # by model

    def __post_init__(self) -> None:
        for model, assignment in self.plans.items():
            if assignment.model != model or assignment.node != self.node:
                raise ProtocolError(f"assignment of {assignment.model!r} for {assignment.node!r} filed under {model!r}")

    @property
    def generation(self) -> int:
        """The newest generation in it: the one a rollout of it waits for (-1: nothing to run).
        Generations are handed out once per cluster, whatever the model, so a node that reports
        this generation ready runs every plan of the message."""
        return max((a.generation for a in self.plans.values()), default=-1)

    def replace(self, assignment: Assignment | None, model: str) -> NodeWork:
        """This work with ``model``'s assignment replaced (``None``: removed)."""
        plans = {m: a for m, a in self.plans.items() if m != model}
        if assignment is not None:
            plans[model] = assignment
        return NodeWork(self.node, dict(sorted(plans.items())))

    def to_bytes(self) -> bytes:
        """An empty payload when there is nothing to run: the retained topic is cleared."""
        if not self.plans:
            return b""
        return encode(NodeWorkDoc(self.node, tuple(a.to_doc() for _, a in sorted(self.plans.items()))))

    @classmethod
    def from_bytes(
        cls, payload: bytes, topic: str, plugins: Mapping[str, Callable[..., Any]] | None = None
    ) -> NodeWork:
        """Decode and check every assignment (:meth:`Assignment.from_doc`): each for this node,
        one per model, no plan id or generation twice; errors name the topic and the path."""
        return cls.from_doc(decode(payload, NodeWorkDoc, topic), topic, plugins)

    @classmethod
    def from_doc(
        cls,
        doc: NodeWorkDoc,
        topic: str,
        plugins: Mapping[str, Callable[..., Any]] | None = None,
        checked: bool = True,
    ) -> NodeWork:
        plans: dict[str, Assignment] = {}
        for i, plan in enumerate(doc.plans):
            where = f"{topic}: $.plans[{i}]"
            assignment = Assignment.from_doc(plan, where, plugins, checked)
            if assignment.node != doc.node:
                raise ProtocolError(f"{where}: assignment is for node {assignment.node!r}, not {doc.node!r}")
            for field in ("model", "plan", "generation"):  # each names one plan of one model, once
                clash = next((a for a in plans.values() if getattr(a, field) == getattr(plan, field)), None)
                if clash is not None:
                    raise ProtocolError(
                        f"{where}.{field}: {getattr(plan, field)!r} is also that of the plan of {clash.model!r}"
                    )
            plans[plan.model] = assignment
        return cls(doc.node, plans)
