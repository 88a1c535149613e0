"""Bundle codec: a length-prefixed JSON header followed by raw little-endian tensor bytes.

Layout: ``b"EFB1"`` | header length (uint32, big-endian) | header (UTF-8 JSON) | tensor bytes.
The header is ``{"meta": {...}, "tensors": {name: {"dtype", "shape", "offset", "nbytes"}}}``.
No pickle anywhere: decoding only ever builds tensors of allow-listed dtypes from bytes.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping
from typing import Any

import torch

from edgeflowd.core.units import ExecutionUnit
from edgeflowd.errors import ProtocolError

__all__ = [
    "decode_bundle",
    "decode_units",
    "encode_bundle",
    "encode_units",
    "pack_envelope",
    "tensor_bytes",
    "tensor_from_bytes",
    "unpack_envelope",
]

MAGIC = b"EFB1"
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported board is little-endian
    raise ImportError("edgeflow's tensor codec assumes a little-endian host")


def pack_envelope(magic: bytes, header: Mapping[str, Any], *body: bytes | memoryview) -> bytes:
    """``magic`` | header length (uint32, big-endian) | header as compact JSON | body."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([magic, struct.pack(">I", len(raw)), raw, *body])


def unpack_envelope(data: bytes, magic: bytes, what: str, where: str) -> tuple[dict[str, Any], memoryview]:
    """Inverse of :func:`pack_envelope`: (header object, body); faults name ``where``."""
    if len(data) < 8 or data[:4] != magic:
        raise ProtocolError(f"{where}: not an EdgeFlow {what} (bad magic)")
    (hlen,) = struct.unpack(">I", data[4:8])
    if 8 + hlen > len(data):
        raise ProtocolError(f"{where}: header length {hlen} exceeds the {len(data)}-byte payload")
    try:
        header = json.loads(data[8 : 8 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{where}: {what} header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"{where}: {what} header must be a JSON object")
    return header, memoryview(data)[8 + hlen :]


def tensor_bytes(tensor: torch.Tensor, what: str = "tensor") -> tuple[str, list[int], bytes]:
    """(dtype name, shape, raw little-endian bytes) of a tensor, for any wire format."""
    t = tensor.detach().contiguous().cpu()
    if t.dtype not in _NAMES:
        raise ProtocolError(f"{what}: dtype {t.dtype} cannot be sent")
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return _NAMES[t.dtype], list(t.shape), raw


def tensor_from_bytes(dtype: object, shape: list[int], data: bytes | memoryview, where: str) -> torch.Tensor:
    """Inverse of :func:`tensor_bytes`; a wrong dtype, shape or length raises ProtocolError."""
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ProtocolError(f"{where}: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    torch_dtype = _DTYPES[dtype]
    expected = math.prod(shape) * torch.empty((), dtype=torch_dtype).element_size()
    if min(shape, default=0) < 0 or len(data) != expected:
        raise ProtocolError(f"{where}: shape {shape} {dtype} needs {expected} bytes, got {len(data)}")
    if not expected:
        return torch.empty(shape, dtype=torch_dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(torch_dtype).reshape(shape)


def encode_bundle(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> bytes:
    table: dict[str, dict[str, Any]] = {}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        dtype, shape, raw = tensor_bytes(tensors[name], name)
        table[name] = {"dtype": dtype, "shape": shape, "offset": offset, "nbytes": len(raw)}
        chunks.append(raw)
        offset += len(raw)
    return pack_envelope(MAGIC, {"meta": dict(meta), "tensors": table}, *chunks)


def decode_bundle(data: bytes, where: str = "bundle") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse a bundle; every inconsistency raises :class:`ProtocolError` naming ``where``."""
    header, body = unpack_envelope(data, MAGIC, "bundle", where)
    if (
        not isinstance(header, dict)
        or not isinstance(header.get("meta"), dict)
        or not isinstance(header.get("tensors"), dict)
    ):
        raise ProtocolError(f"{where}: header needs objects 'meta' and 'tensors'")
    tensors: dict[str, torch.Tensor] = {}
    for name, spec in header["tensors"].items():
        field = f"{where}: tensors.{name}"
        try:
            if spec["dtype"] not in _DTYPES:
                raise ValueError(spec["dtype"])
            shape = [int(v) for v in spec["shape"]]
            offset, nbytes = int(spec["offset"]), int(spec["nbytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"{field}: needs dtype (one of {sorted(_DTYPES)}), shape, offset, nbytes") from exc
        if offset < 0 or offset + nbytes > len(body):
            raise ProtocolError(f"{field}: {nbytes} bytes at offset {offset}; payload has {len(body)}")
        tensors[name] = tensor_from_bytes(spec.get("dtype"), shape, body[offset : offset + nbytes], field)
    return header["meta"], tensors


def encode_units(units: list[ExecutionUnit], tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Units with exactly the constant tensors their ops name."""
    names = sorted({n for unit in units for n in unit.const_names()})
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ProtocolError(f"cannot encode units: constants {missing[:3]} are not available")
    return encode_bundle(
        {"schema": "edgeflow.units/1", "units": [u.to_json() for u in units]}, {n: tensors[n] for n in names}
    )


def decode_units(data: bytes, where: str = "units") -> tuple[list[ExecutionUnit], dict[str, torch.Tensor]]:
    meta, tensors = decode_bundle(data, where)
    if meta.get("schema") != "edgeflow.units/1" or not isinstance(meta.get("units"), list):
        raise ProtocolError(f"{where}: meta.schema must be 'edgeflow.units/1' with a 'units' list")
    units = [ExecutionUnit.from_json(u, f"{where}.units[{i}]") for i, u in enumerate(meta["units"])]
    for unit in units:
        missing = [n for n in unit.const_names() if n not in tensors]
        if missing:
            raise ProtocolError(f"{where}: unit {unit.uid} names constants {missing[:3]} that the bundle lacks")
    return units, tensors
