"""The C allocator's settings for a long-running daemon that allocates the same large tensors on
every request.

glibc's ``malloc`` serves blocks above a threshold (128 KiB, raised as blocks are freed) with a
fresh ``mmap`` and gives them back with ``munmap``, and trims freed memory at the top of the heap
back to the system. A daemon's feature maps are megabytes and come back every request, so each
request paid again for zeroed pages: YOLOv5s on two pinned daemons took ~10,000 page faults per
request per daemon and ran 229-235 ms with the settings below against 261-308 ms without (medians
of 20 requests, run alternately). Keeping freed memory costs nothing a daemon would use: its peak
is reached on the first request and held by every later one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "environment", "keep_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
"""glibc's largest allowed mmap threshold on 64-bit systems: blocks up to it come from the heap."""
TRIM_THRESHOLD_BYTES = 1 << 30
"""Freed memory kept before any is given back."""


def environment() -> dict[str, str]:
    """The same settings for another process (the broker a lab starts), as glibc reads them."""
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES)}


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and to keep what is freed; False (and
    nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.info("C library %s has no mallopt: allocator settings left as they are", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok: bool = (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    )
    if not ok:
        log.warning("mallopt refused the allocator settings: large tensors are mapped afresh per request")
    return ok
