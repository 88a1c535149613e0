"""The emulation harness: CPU quotas that throttle, tbf links that shape, and clean-up that leaves
no cgroup, namespace, veth or qdisc behind, after a normal exit, Ctrl-C, SIGTERM or SIGKILL.
Traffic goes only between this host and the namespaces the test creates; every loop is bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from controller.lab.launch import REPO
from controller.lab.testbed import Slot, Testbed, leftovers, missing_rights, slots_for, sweep
from edgeflowd.profiles.devices import load_cluster

needs_rights = pytest.mark.skipif(bool(missing_rights(True)), reason="; ".join(missing_rights(True)) or "ok")
pytestmark = pytest.mark.integration

BUSY = "import os, time\nt = time.time()\nwhile time.time() - t < 1.5: pass\nprint(sum(os.times()[:2]))"


def test_slots_keep_relative_speeds_within_the_core_budget() -> None:
    cluster = load_cluster("paper-4")
    slots = slots_for(cluster, cores=1.2)
    assert sum(s.cores for s in slots) == pytest.approx(1.2)
    speeds = [d.profile.gflops for d in cluster.devices]
    assert [s.cores / slots[0].cores for s in slots] == pytest.approx([g / speeds[0] for g in speeds])
    assert slots[1].up_mbps == cluster.devices[1].profile.link.up_mbps
    assert all(s.up_mbps is None for s in slots_for(cluster, 1.2, shape_links=False))


@needs_rights
def test_cpu_quota_throttles_each_device() -> None:
    slots = [Slot(0, "slow", 0.2), Slot(1, "fast", 0.6)]
    with Testbed(slots, shape_links=False) as bed:
        bed.throttle()
        procs = [
            subprocess.Popen(bed.command(s, [sys.executable, "-c", BUSY]), stdout=subprocess.PIPE, text=True)
            for s in slots
        ]
        used = [float(p.communicate(timeout=30)[0]) for p in procs]
        assert all(bed.cgroup(s).is_dir() for s in slots)
    # A quota is a cap: on a shared machine a device may get less than it allows, never more.
    assert used[0] == pytest.approx(0.2 * 1.5, abs=0.1)  # a fifth of a core is always there to take
    assert used[1] <= 0.6 * 1.5 + 0.15
    assert used[1] > 1.8 * used[0]  # the faster device's larger quota shows
    assert leftovers(os.getpid()) == []


# The benchmark, then what the device delivers: the probe convolution back to back for 2 s on the
# wall clock, in the same throttled process (no CPU time, no share: calls done over time taken).
BENCH = (
    "import json, sys, time, torch\n"
    f"sys.path.insert(0, {str(REPO)!r})\n"
    "from edgeflowd.node.benchmark import _probe_conv, run_benchmark\n"
    "torch.set_num_threads(1)\n"
    "figures = run_benchmark()\n"
    "op, flops = _probe_conv()\n"
    "with torch.no_grad():\n"
    "    op()\n"
    "    calls, start = 0, time.perf_counter()\n"
    "    while calls < 10_000 and time.perf_counter() - start < 2.0:\n"
    "        op()\n"
    "        calls += 1\n"
    "    figures['delivered_gflops'] = flops * calls / (time.perf_counter() - start) / 1e9\n"
    "print(json.dumps(figures))"
)


@needs_rights
def test_a_throttled_device_benchmarks_at_its_share() -> None:
    """Under a quota a short op runs at full speed or waits out a period: timed on the wall clock,
    the 0.1-core device's convolution read 12-155 GFLOP/s. Timed in CPU time and scaled by the
    share measured over a window, the conv rate is what the throttled device delivers, and the
    compute-bound rates follow the quotas."""
    slots = [Slot(0, "slow", 0.1), Slot(1, "fast", 0.4)]
    with Testbed(slots, shape_links=False) as bed:
        bed.throttle()
        figures = []
        for slot in slots:  # one at a time: neither takes the other's core
            argv = bed.command(slot, [sys.executable, "-c", BENCH])
            done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
    slow, fast = figures
    keys = ("cpu_share", "conv_gflops", "delivered_gflops", "matmul_gflops", "eltwise_gflops")
    print({k: (slow[k], fast[k]) for k in keys})
    # A quota is a cap: a device may get less on a busy machine, never more.
    assert 0.07 <= slow["cpu_share"] <= 0.11
    assert 0.25 <= fast["cpu_share"] <= 0.42
    # The conv rate is what the throttled device delivers. Read against the shares instead, it
    # failed on CI (5.8x for shares 3.8x apart): the two devices run one after the other, and this
    # machine's own speed drifts by tens of percent within minutes (the fast device's conv rate
    # per CPU second read 135-170 GFLOP/s in four runs). Seconds apart, in one process, it holds:
    # 0.92-1.22x of the delivered rate in those runs; wall-clock timing read 12-155 GFLOP/s.
    for name, device in (("0.1 core", slow), ("0.4 core", fast)):
        read = device["conv_gflops"] / device["delivered_gflops"]
        said = f"conv_gflops {device['conv_gflops']} on {name}, which delivered {device['delivered_gflops']:.2f}"
        assert 1 / 1.4 <= read <= 1.4, said
    # The compute-bound rates follow the quotas, 4x apart, within that drift.
    for key in ("conv_gflops", "matmul_gflops"):
        ratio = fast[key] / slow[key]
        assert 2.5 <= ratio <= 7.0, f"{key}: {fast[key]} on 0.4 core against {slow[key]} on 0.1"
    # Not the element-wise rate: a memory-bound add of 0.1 ms reads what the shared machine's memory
    # and caches give it after each throttled pause (0.28-0.88 GFLOP/s on the 0.1-core device,
    # 1.5-4.7 on the 0.4-core one, in seven runs on 2026-12-04); the fit of a node's unit times
    # replaces it once units run (docs/partitioning.md).
    # The weight pass is the difference of two timings (one row and eight), noisier than a rate.
    ratio = fast["weights_gbps"] / slow["weights_gbps"]
    assert 2.0 <= ratio <= 8.0, f"weights_gbps: {fast['weights_gbps']} on 0.4 core, {slow['weights_gbps']} on 0.1"
    assert leftovers(os.getpid()) == []


@needs_rights
def test_a_device_in_its_namespace_sees_its_quota() -> None:
    """`ip netns exec` mounts a /sys without cgroups: a daemon there could not see its quota, and
    only noticed a throttle when its probe moved by 30%, which a 0.4-core device benchmarked on a
    shared core did not (the demo waited 300 s for it). The testbed mounts the CPU controller."""
    slot = Slot(0, "dev", 0.25, 100.0, 100.0, 1.0)
    probe = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from edgeflowd.node.benchmark import cpu_quota\nprint(cpu_quota())"
    )
    with Testbed([slot], shape_links=True) as bed:
        seen = []
        for throttled in (False, True):
            if throttled:
                bed.throttle()
            argv = bed.command(slot, [sys.executable, "-c", probe])
            seen.append(subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    assert seen[0] == "None"  # unlimited until throttled
    assert float(seen[1]) == pytest.approx(0.25, abs=0.01)
    assert leftovers(os.getpid()) == []


def _serve_once(host: str, port: int, send: int, done: dict[str, float]) -> None:
    """Accept one connection: send ``send`` bytes, or receive until EOF and record the seconds."""
    with socket.create_server((host, port)) as server:
        server.settimeout(20)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(20)
            start = time.monotonic()
            if send:
                conn.sendall(b"x" * send)
                return
            while conn.recv(1 << 16):
                pass
            done["s"] = time.monotonic() - start


def _transfer_s(bed: Testbed, slot: Slot, upload: int, download: int) -> float:
    """Seconds to move the bytes over the slot's link, timed by the receiving end."""
    done: dict[str, float] = {}
    port = 18000 + slot.index
    server = threading.Thread(target=_serve_once, args=(bed.host_ip(slot), port, download, done))
    server.start()
    time.sleep(0.2)
    client = f"import socket, time\ns = socket.create_connection(('{bed.host_ip(slot)}', {port}), timeout=20)\n" + (
        f"s.sendall(b'y' * {upload})\ns.close()\n"
        if upload
        else f"n, t = 0, time.monotonic()\nwhile n < {download}:\n    n += len(s.recv(1 << 16))\n"
        "print(time.monotonic() - t)\ns.close()\n"
    )
    out = subprocess.run(
        bed.command(slot, [sys.executable, "-c", client]), check=True, timeout=30, capture_output=True, text=True
    ).stdout
    server.join(30)
    return done["s"] if upload else float(out)


@needs_rights
def test_links_are_shaped_to_the_profile_rates() -> None:
    slot = Slot(7, "shaped", 1.0, up_mbps=20, down_mbps=40)
    with Testbed([slot]) as bed:
        up = _transfer_s(bed, slot, upload=2_500_000, download=0)  # 20 Mbit at 20 Mbit/s: 1 s
        down = _transfer_s(bed, slot, upload=0, download=5_000_000)  # 40 Mbit at 40 Mbit/s: 1 s
        qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
        assert f"ef{os.getpid()}h7" in qdiscs and "tbf" in qdiscs
    assert 0.85 < up < 1.3, up
    assert 0.85 < down < 1.3, down
    assert leftovers(os.getpid()) == []
    assert (
        f"ef{os.getpid()}"
        not in subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    )


_OWNER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    from controller.lab.testbed import Slot, Testbed
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    slots = [Slot(3, "a", 0.3, 50, 50), Slot(4, "b", 0.3, 50, 50)]
    with Testbed(slots) as bed:
        procs = [subprocess.Popen(bed.command(s, ["sleep", "60"])) for s in slots]
        print(*(p.pid for p in procs), flush=True)
        time.sleep(60)
    """
)


@needs_rights
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_run_leaves_nothing_behind(how: signal.Signals) -> None:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        devices = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(devices) == 2
        assert len(leftovers(owner.pid)) == 6  # 2 cgroups, 2 namespaces, 2 host-side veths
        owner.send_signal(how)
        owner.wait(30)
    finally:
        owner.kill()
        owner.wait(10)
        left_by_failure = sweep() if how != signal.SIGKILL else []
    if how == signal.SIGKILL:  # nothing can clean up after SIGKILL but a later sweep
        assert len(leftovers(owner.pid)) == 6
        assert len(sweep()) >= 4
    assert leftovers(owner.pid) == [] and left_by_failure == []
    assert not [pid for pid in devices if _running(pid)]  # the devices' processes are gone


def _running(pid: int) -> bool:
    try:  # a killed child of a dead owner may wait as a zombie for a PID 1 that does not reap
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody")
def test_refuses_clearly_without_rights() -> None:
    code = "from controller.lab.testbed import Slot, Testbed\nwith Testbed([Slot(0, 'a', 0.5)]): pass"
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "cannot run the testbed: the testbed needs root" in result.stderr, result.stderr
