"""Weights by content: the tensors a node holds, an optional on-disk cache named by SHA-256, and
the bookkeeping of one fetch (which blobs are missing, which parts have arrived)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from edgeflowd.errors import ProtocolError
from edgeflowd.wire.assignment import BlobRef, tensor_of_blob
from edgeflowd.wire.codec import tensor_bytes, tensor_from_bytes

__all__ = ["WeightFetch", "WeightStore"]

log = logging.getLogger(__name__)


class WeightStore:
    """Tensors by SHA-256, in memory and (with ``cache_dir``) on disk. A cached file is used only
    when its bytes still hash to its name, so a corrupt cache costs a download, never a wrong
    result."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._memory: dict[str, torch.Tensor] = {}

    def get(self, ref: BlobRef) -> torch.Tensor | None:
        tensor = self._memory.get(ref.sha256)
        if tensor is None and self.cache_dir is not None:
            path = self.cache_dir / ref.sha256
            try:
                raw = path.read_bytes()
            except OSError:
                return None
            if hashlib.sha256(raw).hexdigest() != ref.sha256:
                log.warning("cached weight %s does not match its hash; fetching it again", path)
                return None
            tensor = self._memory[ref.sha256] = tensor_from_bytes(ref.dtype, list(ref.shape), raw, str(path))
        return _as_named(tensor, ref) if tensor is not None else None

    def put(self, ref: BlobRef, tensor: torch.Tensor) -> None:
        self._memory[ref.sha256] = tensor
        if self.cache_dir is None:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.cache_dir, delete=False) as tmp:
                tmp.write(tensor_bytes(tensor)[2])
            os.replace(tmp.name, self.cache_dir / ref.sha256)  # atomic: readers never see half a file
        except OSError as exc:
            log.warning("cannot cache weight %s in %s: %s", ref.sha256[:12], self.cache_dir, exc)

    def keep_only(self, shas: Iterable[str]) -> None:
        """Forget in-memory tensors no assignment uses any more (the disk cache stays)."""
        wanted = set(shas)
        self._memory = {sha: t for sha, t in self._memory.items() if sha in wanted}


class WeightFetch:
    """The blobs one assignment still lacks, and the parts of them received so far."""

    def __init__(self, weights: Mapping[str, BlobRef], store: WeightStore, started: float) -> None:
        self.started = started
        self.missing: dict[str, BlobRef] = {}
        for ref in weights.values():
            if store.get(ref) is None:
                self.missing[ref.sha256] = ref
        self._parts: dict[str, dict[int, bytes]] = {}

    @property
    def done(self) -> bool:
        return not self.missing

    def add(self, sha256: str, part: int, payload: bytes, where: str) -> tuple[BlobRef, torch.Tensor] | None:
        """The blob's tensor once its last part arrives; parts of blobs not missing are ignored
        (retained copies may still arrive after a blob is complete)."""
        ref = self.missing.get(sha256)
        if ref is None:
            return None
        if not 0 <= part < ref.parts:
            raise ProtocolError(f"{where}: part {part} of a {ref.parts}-part blob")
        parts = self._parts.setdefault(sha256, {})
        parts[part] = payload
        if len(parts) < ref.parts:
            return None
        del self._parts[sha256]
        tensor = tensor_of_blob(ref, parts, where)  # raises on bytes that do not match the hash
        del self.missing[sha256]
        return ref, tensor


def _as_named(tensor: torch.Tensor, ref: BlobRef) -> torch.Tensor:
    """``tensor`` as ``ref`` describes it: blobs are stored by their bytes alone, and identical bytes
    may be another weight's under another shape or dtype (two models' zero tensors)."""
    if list(tensor.shape) == list(ref.shape) and str(tensor.dtype).removeprefix("torch.") == ref.dtype:
        return tensor
    return tensor_from_bytes(ref.dtype, list(ref.shape), tensor_bytes(tensor)[2], f"weight {ref.sha256[:12]}")
