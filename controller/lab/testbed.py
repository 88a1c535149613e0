"""Emulated heterogeneous devices on one Linux machine, for real-execution benchmarks (as root).

Each device gets a cgroup v1 CPU quota (``cpu.cfs_quota_us``: a share of one core, 1 ms in
every 1 ms / share) and, with ``shape_links``, its own network namespace behind a veth pair whose two
ends are rate-limited by ``tbf`` to the profile's uplink and downlink. Its process runs inside both
from its first instruction (a shell moves itself into the cgroup, then execs). This kernel has no
``netem``: link *delay* comes from a relay per device (controller/lab/relay.py) at the host end of
its link, which forwards to the broker on loopback and holds every byte ``latency_ms`` in each
direction (:meth:`Testbed.start_relays`).

Everything made is named after the owning process id (``edgeflow-<pid>-...``, veths
``ef<pid>h<i>``), recorded, and removed on exit, Ctrl-C or SIGTERM (``close``); :func:`sweep`
removes what a run killed with SIGKILL left behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from controller.lab.launch import REPO, stop_process
from edgeflowd.errors import EdgeFlowError
from edgeflowd.profiles.devices import Cluster

__all__ = ["CGROUP_CPU", "Slot", "Testbed", "TestbedError", "leftovers", "slots_for", "sweep"]

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
# A share of a core is a quota per CFS period, and a process runs at full speed until its quota
# is spent, then waits for the next period. A slow board runs slowly all the time: the shorter the
# period, the closer the emulation. Each device gets the kernel's smallest quota, 1 ms, in a
# period of 1 ms / share (a 0.4-core device: 1 ms in every 2.5 ms; 0.1 core: 1 ms in every 10 ms).
# The default 100 ms period would run a unit of a few ms at full speed and then pause 90 ms: what
# each unit takes would say nothing of the device's speed, and the cost model could fit nothing.
QUOTA_US = 1_000


class TestbedError(EdgeFlowError):
    """The machine cannot host the testbed (rights, kernel features), or setting it up failed."""


@dataclass(frozen=True)
class Slot:
    """One emulated device: its CPU share (cores) and link rates (None: unshaped)."""

    index: int
    node: str
    cores: float
    up_mbps: float | None = None
    down_mbps: float | None = None
    latency_ms: float = 0.0  # one way, added by a relay (0: none)


def slots_for(cluster: Cluster, cores: float, shape_links: bool = True) -> list[Slot]:
    """Devices of ``cluster`` as CPU shares of ``cores`` cores in all, in proportion to their
    declared GFLOP/s, so relative speeds hold. Each device runs one torch thread: no share exceeds
    one core."""
    total = sum(d.profile.gflops for d in cluster.devices)
    slots = []
    for i, device in enumerate(cluster.devices):
        share = min(1.0, cores * device.profile.gflops / total)
        link = device.profile.link
        if shape_links:
            slots.append(Slot(i, device.id, share, link.up_mbps, link.down_mbps, link.latency_ms))
        else:
            slots.append(Slot(i, device.id, share))
    return slots


def _run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def missing_rights(shape_links: bool) -> list[str]:
    """Why this process cannot run the testbed here (empty: it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the testbed needs root (cgroup CPU quotas, network namespaces, tc)")
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        problems.append(f"no cgroup v1 CPU controller at {CGROUP_CPU} (cgroup v2 cpu.max is not supported here)")
    elif not os.access(CGROUP_CPU, os.W_OK):
        problems.append(f"{CGROUP_CPU} is not writable")
    if shape_links:
        problems += [f"`{tool}` is not installed (iproute2)" for tool in ("ip", "tc") if shutil.which(tool) is None]
    return problems


def _kill_cgroup(path: Path, timeout_s: float = 5.0) -> None:
    """SIGKILL every process in the cgroup, then remove it: the kernel refuses (EBUSY) until the
    last one has fully exited, which can trail its disappearance from ``cgroup.procs``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


class Testbed:
    """``with Testbed(slots, shape_links) as bed:`` then start each device's process with
    ``bed.command(slot, argv)`` (it reaches the host, the broker, at ``bed.host_ip(slot)``), and
    call ``bed.throttle()`` once they are up."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, slots: Sequence[Slot], shape_links: bool = True) -> None:
        self.slots = list(slots)
        self.shape_links = shape_links
        self.owner = os.getpid()
        self._cgroups: list[Path] = []
        self._netns: list[str] = []
        self._veths: list[str] = []
        self._relays: list[subprocess.Popen[bytes]] = []
        self._subnet = ""  # 10.<n>: a /16 no interface uses, chosen on entry; 10.<n>.<slot>.0/30 per device

    def host_ip(self, slot: Slot) -> str:
        return f"{self._subnet}.{slot.index}.1"

    def device_ip(self, slot: Slot) -> str:
        return f"{self._subnet}.{slot.index}.2"

    def cgroup(self, slot: Slot) -> Path:
        return CGROUP_CPU / f"edgeflow-{self.owner}-{slot.node}"

    def netns(self, slot: Slot) -> str:
        return f"edgeflow-{self.owner}-{slot.index}"

    def _veth(self, slot: Slot) -> tuple[str, str]:
        return f"ef{self.owner}h{slot.index}", f"ef{self.owner}d{slot.index}"

    def __enter__(self) -> Testbed:
        problems = missing_rights(self.shape_links)
        if problems:
            raise TestbedError("cannot run the testbed: " + "; ".join(problems))
        try:
            if self.shape_links:
                used = set(re.findall(r"inet 10\.(\d+)\.", _run("ip", "-o", "addr", "show")))
                free = next((n for n in range(200, 255) if str(n) not in used), None)
                if free is None:
                    raise TestbedError("no free 10.200-254.0.0/16 network for the devices' links")
                self._subnet = f"10.{free}"
            for slot in self.slots:
                self._cpu(slot)
                if self.shape_links:
                    self._link(slot)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _cpu(self, slot: Slot) -> None:
        path = self.cgroup(slot)
        path.mkdir()
        self._cgroups.append(path)
        period = math.ceil(QUOTA_US / slot.cores)
        (path / "cpu.cfs_period_us").write_text(str(period))

    def throttle(self) -> None:
        """Hold each device to its share from now on. The cgroups start unlimited, so that the
        processes start (import torch, benchmark) at full speed: start-up is not what is measured."""
        for slot in self.slots:
            path = self.cgroup(slot)
            period = int((path / "cpu.cfs_period_us").read_text())
            (path / "cpu.cfs_quota_us").write_text(str(round(slot.cores * period)))

    def set_share(self, slot: Slot, cores: float) -> None:
        """Give ``slot``'s device another CPU share from now on (a board throttled by heat or
        given less by its other work), without restarting what runs in it."""
        period = math.ceil(QUOTA_US / cores)
        path = self.cgroup(slot)
        (path / "cpu.cfs_quota_us").write_text("-1")  # the kernel checks a new period against the quota
        (path / "cpu.cfs_period_us").write_text(str(period))
        (path / "cpu.cfs_quota_us").write_text(str(round(cores * period)))

    @staticmethod
    def _tbf(mbps: float) -> list[str]:
        # The bucket must hold a GSO segment (64 KiB) and a timer tick of traffic, or tbf drops.
        burst = max(128 * 1024, int(mbps * 1e6 / 8 / 100))
        return ["tbf", "rate", f"{mbps:g}mbit", "burst", str(burst), "latency", "200ms"]

    def _link(self, slot: Slot) -> None:
        ns, (host_if, dev_if) = self.netns(slot), self._veth(slot)
        _run("ip", "netns", "add", ns)
        self._netns.append(ns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", dev_if, "netns", ns)
        self._veths.append(host_if)  # deleting one end deletes the pair and both qdiscs
        _run("ip", "addr", "add", f"{self.host_ip(slot)}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        inside = ("ip", "netns", "exec", ns)
        _run(*inside, "ip", "addr", "add", f"{self.device_ip(slot)}/30", "dev", dev_if)
        _run(*inside, "ip", "link", "set", dev_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        if slot.down_mbps:  # host -> device
            _run("tc", "qdisc", "add", "dev", host_if, "root", *self._tbf(slot.down_mbps))
        if slot.up_mbps:  # device -> host
            _run(*inside, "tc", "qdisc", "add", "dev", dev_if, "root", *self._tbf(slot.up_mbps))

    def broker_hosts(self) -> list[str]:
        """Link host ends the broker itself must listen on: those of devices without a relay."""
        return [self.host_ip(s) for s in self.slots if self.shape_links and not s.latency_ms]

    def start_relays(self, broker_port: int) -> None:
        """For each device with a latency, a relay at its link's host end, on the broker's port,
        forwarding to the broker on loopback with that delay each way (stopped by :meth:`close`)."""
        for slot in self.slots:
            if not (self.shape_links and slot.latency_ms):
                continue
            argv = [
                sys.executable,
                "-m",
                "controller.lab.relay",
                "--listen",
                f"{self.host_ip(slot)}:{broker_port}",
                "--to",
                f"127.0.0.1:{broker_port}",
                "--delay-ms",
                f"{slot.latency_ms:g}",
            ]
            relay = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
            self._relays.append(relay)
            assert relay.stdout is not None
            line = relay.stdout.readline().decode()  # its one line, printed once it listens
            if not line.startswith("relaying"):
                raise TestbedError(f"the relay for {slot.node} did not start: {line.strip() or 'no output'}")

    def command(self, slot: Slot, argv: Sequence[str]) -> list[str]:
        """``argv`` run as ``slot``: in its namespace, inside its CPU cgroup from the start."""
        # Into the cgroup first: `ip netns exec` mounts the namespace's own /sys, without cgroups.
        enter = f'echo $$ > {self.cgroup(slot)}/cgroup.procs && exec "$@"'
        if not self.shape_links:
            return ["sh", "-c", enter, "sh", *argv]
        # Then the CPU controller mounted again in the namespace's /sys (its own mounts, gone with
        # it), so that the device sees its quota as a board's container does: a daemon notices a
        # new quota at once (edgeflowd.node.benchmark.cpu_quota), without waiting for its probe to
        # disagree with a rate by 30%. Where that mount fails the device runs without it.
        mount = (
            "mount -t tmpfs cgroups /sys/fs/cgroup && mkdir /sys/fs/cgroup/cpu && "
            f'mount -t cgroup -o {CGROUP_CPU.name} cgroup /sys/fs/cgroup/cpu; exec "$@"'
        )
        inside = ["ip", "netns", "exec", self.netns(slot), "sh", "-c", mount, "sh"]
        return ["sh", "-c", enter, "sh", *inside, *argv]

    def close(self) -> None:
        """Kill what runs in the devices' cgroups, then remove cgroups and namespaces. Idempotent."""
        errors = []
        for relay in self._relays:
            stop_process(relay, 5.0)
        self._relays.clear()
        for path in reversed(self._cgroups):
            try:
                _kill_cgroup(path)
            except OSError as exc:
                errors.append(f"{path}: {exc}")
        self._cgroups.clear()
        # Links first and explicitly: a deleted namespace frees its veth asynchronously.
        for link in reversed(self._veths):
            try:
                _run("ip", "link", "del", link)
            except TestbedError as exc:
                errors.append(str(exc))
        self._veths.clear()
        for ns in reversed(self._netns):
            try:
                _run("ip", "netns", "del", ns)
            except TestbedError as exc:
                errors.append(str(exc))
        self._netns.clear()
        if errors:
            raise TestbedError("clean-up left: " + "; ".join(errors))


def _made() -> list[tuple[str, str, int]]:
    """(kind, name, owner pid) of every cgroup, namespace and host-side veth a testbed made."""
    found = [
        ("cgroup", str(p), int(m.group(1)))
        for p in CGROUP_CPU.glob("edgeflow-*")
        if (m := re.fullmatch(r"edgeflow-(\d+)-.+", p.name))
    ]
    if shutil.which("ip"):
        found += [
            ("link", n, int(pid)) for n, pid in re.findall(r"^\d+: (ef(\d+)h\d+)[@:]", _run("ip", "-o", "link"), re.M)
        ]
        found += [
            ("netns", n, int(pid)) for n, pid in re.findall(r"^(edgeflow-(\d+)-\d+)", _run("ip", "netns", "list"), re.M)
        ]
    return found


def leftovers(owner: int | None = None) -> list[str]:
    """Cgroups, namespaces and veths a testbed made (of ``owner``, or of any process) still there."""
    return [f"{kind} {name}" for kind, name, pid in _made() if owner is None or pid == owner]


def sweep() -> list[str]:
    """Remove what testbeds of processes no longer alive left behind (links before their
    namespaces: a deleted namespace frees its veth asynchronously); returns what it removed."""
    removed = []
    for kind, name, pid in _made():
        if Path(f"/proc/{pid}").exists():
            continue
        if kind == "cgroup":
            _kill_cgroup(Path(name))
        else:
            _run("ip", kind, "del", name)
        removed.append(f"{kind} {name}")
    return removed
