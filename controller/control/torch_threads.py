"""The requester's torch threads: one while its requests are in flight."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["one_torch_thread"]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread while requests are in flight. A requester's tensor work is cutting
    inputs into row slices and joining results: copies, which torch runs in parallel on every
    core, after which libgomp's threads spin-wait (its default policy) on those cores. With the
    nodes on the same cores (a local cluster, this project's 2-core test machine) that was 10-12 ms
    of CPU per ResNet-50 request against 0-2 ms on one thread, and the median request 9% longer
    (70.0 against 63.9 ms, two pinned daemons, batches alternated)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
