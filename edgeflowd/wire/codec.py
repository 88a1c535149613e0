"""Tensors as bytes, for every wire format: raw little-endian bytes of an allow-listed dtype, and
back. No pickle anywhere: decoding only ever builds tensors of these dtypes from bytes.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from edgeflowd.errors import ProtocolError

__all__ = ["expected_bytes", "tensor_bytes", "tensor_from_bytes"]

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


def tensor_bytes(tensor: torch.Tensor, what: str = "tensor") -> tuple[str, list[int], bytes]:
    """(dtype name, shape, raw little-endian bytes) of a tensor, for any wire format."""
    t = tensor.detach().contiguous().cpu()
    if t.dtype not in _NAMES:
        raise ProtocolError(f"{what}: dtype {t.dtype} cannot be sent")
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return _NAMES[t.dtype], list(t.shape), raw


def expected_bytes(dtype: object, shape: list[int] | tuple[int, ...], where: str) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype`` (an allow-listed name); ProtocolError otherwise."""
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ProtocolError(f"{where}: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if min(shape, default=0) < 0:
        raise ProtocolError(f"{where}: shape {list(shape)} has a negative size")
    return math.prod(shape) * torch.empty((), dtype=_DTYPES[dtype]).element_size()


def tensor_from_bytes(dtype: object, shape: list[int], data: bytes | memoryview, where: str) -> torch.Tensor:
    """Inverse of :func:`tensor_bytes`; a wrong dtype, shape or length raises ProtocolError."""
    expected = expected_bytes(dtype, shape, where)
    torch_dtype = _DTYPES[str(dtype)]
    if len(data) != expected:
        raise ProtocolError(f"{where}: shape {shape} {dtype} needs {expected} bytes, got {len(data)}")
    if not expected:
        return torch.empty(shape, dtype=torch_dtype)
    # One copy into torch's own (64-byte aligned) memory: a bytearray's is 16-byte aligned, which
    # slowed some convolutions reading it by up to 30% on this project's test machine.
    out = torch.empty(shape, dtype=torch_dtype)
    out.view(-1).view(torch.uint8).numpy()[:] = np.frombuffer(data, dtype=np.uint8)
    return out
