"""The daemon's allocator settings: tensors allocated on a worker thread and freed elsewhere,
every request, stop costing fresh pages (run in subprocesses, so that the setting is measured
on its own and does not leak into the test process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_WORKLOAD = """
import resource, sys, torch, concurrent.futures as cf
from edgeflowd.node.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
pool = cf.ThreadPoolExecutor(1)
def request():  # a daemon's pattern: a worker allocates feature maps of 1-24 MiB, all touched
    return [torch.ones(n << 18) for n in (1, 4, 16, 8, 24, 2, 12)]
def serve(requests):
    for _ in range(requests):
        held = pool.submit(request).result()
        del held
serve(10)  # the first requests reach the peak
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
serve(10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, env: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, mode],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_serves_later_requests_without_page_faults() -> None:
    # glibc's own threshold starts at 128 KiB and moves with what is freed, so whether a default
    # process faults depends on its history; pinned at that start, every block is mapped afresh.
    plain = _faults("plain", {"MALLOC_MMAP_THRESHOLD_": "131072"})
    kept = _faults("keep", {"MALLOC_MMAP_THRESHOLD_": "131072"})  # the daemon's setting overrides it
    assert plain > 1000, f"the workload should fault with mapped blocks ({plain} faults)"
    assert kept * 20 < plain, f"{kept} page faults with the setting, {plain} without"
