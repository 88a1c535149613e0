"""The package under a real systemd: the built ``.deb`` installed into a throw-away container whose
PID 1 is systemd (``systemd-nspawn`` booting an overlay of this machine's root, so nothing of it
stays), with Mosquitto on this machine's loopback. Boot 1 installs the package (``dpkg -i``
returns; the unit is enabled, not started, its configuration not yet valid) and configures it.
Boot 2 reaches ``multi-user.target`` with the daemon active and ``READY`` though nothing is
deployed (STATUS: waiting for an assignment); a deploy from this machine reaches it and requests
through it are exact; a frozen daemon (SIGSTOP) is restarted by the watchdog (shortened to 6 s by a
drop-in); ``systemctl stop`` publishes offline; a configuration error fails the start
without a restart loop; the journal holds the daemon's lines. Needs root and ``systemd-nspawn``
(``apt-get install systemd-container``; ``make install`` does as root), else it is skipped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab.launch import REPO
from edgeflowd.net.mqtt import listen, received
from edgeflowd.wire.messages import Status, decode_control
from edgeflowd.wire.topics import Topics
from tests.cluster import Broker, mosquitto_broker, run_cli

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="boots a container: needs root"),
    pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="needs systemd-nspawn (systemd-container)"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)"),
]

CLUSTER, NODE = "booted", "ns-1"

UNIT = """[Unit]
Description=EdgeFlow package probe
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/bin/bash /mnt/probe/{script}
StandardOutput=append:/mnt/out/{script}.log
StandardError=append:/mnt/out/{script}.log
TimeoutStartSec=300
"""

INSTALL = """set -x
time timeout 240 dpkg -i /mnt/deb/edgeflowd.deb; echo "dpkg rc=$?"
echo "enabled=$(systemctl is-enabled edgeflowd) active=$(systemctl is-active edgeflowd)"
sed -i "s#^broker: .*#broker: mqtt://127.0.0.1:{port}#; s#^cluster: .*#cluster: {cluster}#" /etc/edgeflow/edgeflowd.yaml
echo 'node_id: {node}' >> /etc/edgeflow/edgeflowd.yaml
echo 'PYTHONPATH=/mnt/site' >> /etc/default/edgeflowd
mkdir -p /etc/systemd/system/edgeflowd.service.d  # the unit's 60 s watchdog, shortened for the test
printf '[Service]\nWatchdogSec=6\n' > /etc/systemd/system/edgeflowd.service.d/watchdog.conf
"""

RUN = """set -x
up=$(systemctl show -P UserspaceTimestampMonotonic)
reached=$(systemctl show multi-user.target -P ActiveEnterTimestampMonotonic)
echo "multi-user.target after $(( (reached - up) / 1000 )) ms"
# Ready once benchmarked; connected (and its link measured) a moment later: wait for it, bounded.
for i in $(seq 60); do systemctl show edgeflowd -p StatusText | grep -q 'connected to' && break; sleep 0.5; done
echo "state=$(systemctl is-active edgeflowd) $(systemctl show edgeflowd -p StatusText)"
touch /mnt/out/checked
for i in $(seq 240); do [ -e /mnt/out/freeze ] && break; sleep 0.5; done
frozen=$(systemctl show -P MainPID edgeflowd); kill -STOP "$frozen"
for i in $(seq 120); do [ "$(systemctl show -P NRestarts edgeflowd)" = 1 ] && break; sleep 0.5; done
for i in $(seq 120); do [ "$(systemctl is-active edgeflowd)" = active ] && break; sleep 0.5; done
restarts=$(systemctl show -P NRestarts edgeflowd); pid=$(systemctl show -P MainPID edgeflowd)
echo "after the freeze: NRestarts=$restarts $(systemctl is-active edgeflowd) pid $frozen -> $pid"
for i in $(seq 240); do [ -e /mnt/out/stop ] && break; sleep 0.5; done
systemctl stop edgeflowd; echo "stopped=$(systemctl is-active edgeflowd)"
echo 'colour: red' >> /etc/edgeflow/edgeflowd.yaml
systemctl start edgeflowd; sleep 6
echo "broken: $(systemctl show edgeflowd -p ActiveState -p Result -p NRestarts -p ExecMainStatus | tr '\\n' ' ')"
journalctl -u edgeflowd --no-pager -o cat | grep -c 'node={node}' | sed 's/^/journal lines: /'
"""


def _run(*cmd: str | Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


@pytest.fixture
def overlay_root() -> Iterator[Path]:
    """This machine's root under a writable overlay whose upper layer is in /dev/shm: the
    container's changes live there, and go with it."""
    base = Path(tempfile.mkdtemp(prefix="edgeflow-nspawn-", dir="/dev/shm"))
    upper, work, root = base / "upper", base / "work", Path(tempfile.mkdtemp(prefix="edgeflow-root-"))
    upper.mkdir()
    work.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        root.rmdir()
        pytest.skip(f"cannot mount an overlay of / here: {mounted.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "--lazy", str(root)], check=False)
        root.rmdir()
        shutil.rmtree(base, ignore_errors=True)
        _sweep_nspawn()


def _sweep_nspawn() -> None:
    """What systemd-nspawn leaves behind on a host whose PID 1 is not systemd: its runtime
    directory and the container's cgroups beside this process's (empty once it has exited)."""
    shutil.rmtree("/run/systemd/nspawn", ignore_errors=True)
    for hierarchy in ("unified", "systemd"):
        for leftover in ("payload/init.scope", "payload", "supervisor"):
            path = Path("/sys/fs/cgroup") / hierarchy / leftover
            if path.is_dir():
                subprocess.run(["rmdir", str(path)], capture_output=True, check=False)


def _site(into: Path) -> tuple[Path, Path]:
    """torch and what it needs, as a board's own install would provide beside the package's venv
    (the .deb is built without torch): this environment's packages, less EdgeFlow itself, as
    links into where the container mounts them (``/mnt/hostsite``: the service's PrivateTmp
    would hide a checkout under /tmp). Returns (the links, the packages)."""
    import torch  # noqa: PLC0415 - only to find this environment's site-packages

    packages = Path(torch.__file__).parents[1]
    into.mkdir()
    for entry in packages.iterdir():
        if not entry.name.startswith(("edgeflow", "__editable__", "_edgeflow")) and entry.suffix != ".pth":
            (into / entry.name).symlink_to(Path("/mnt/hostsite") / entry.name)
    return into, packages


def _boot(root: Path, probe: Path, script: str, binds: list[str], wait: bool = True) -> subprocess.Popen[str]:
    unit = probe / f"{script}.service"
    unit.write_text(UNIT.format(script=script))
    command = [
        "systemd-nspawn",
        "--register=no",
        "--keep-unit",
        "--quiet",
        "-D",
        str(root),
        *binds,
        f"--bind-ro={unit}:/etc/systemd/system/edgeflow-probe.service",
        "-b",
        "systemd.wants=edgeflow-probe.service",
        "systemd.firstboot=off",
    ]
    boot = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait:
        assert boot.wait(300) == 0, boot.stderr.read() if boot.stderr else ""
    return boot


def _status(broker: Broker, wanted: str, timeout_s: float, other_than: str = "", of: str = "") -> Status:
    """The node's status once it says ``wanted`` (from an instance other than ``other_than``, or
    from instance ``of``)."""
    conn, messages = listen(broker.settings, "systemd-test", [Topics(CLUSTER).node(NODE, "status")])
    try:
        for topic, payload in received(messages, timeout_s):
            status = decode_control(payload, topic, Status)
            if status.state == wanted and status.instance != other_than and status.instance == (of or status.instance):
                return status
    finally:
        conn.stop()
    raise AssertionError(f"{NODE} did not say {wanted} within {timeout_s:g} s")


def test_the_package_under_systemd(overlay_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dist, probe, out = tmp_path / "dist", tmp_path / "probe", tmp_path / "out"
    for folder in (probe, out):
        folder.mkdir()
    _run("make", "-C", REPO, "deb", "DEB_TORCH=none", f"DEB_OUT={dist}")
    (deb,) = dist.glob("edgeflowd_*.deb")
    site, packages = _site(tmp_path / "site")
    with mosquitto_broker(tmp_path) as broker:
        (probe / "install").write_text(INSTALL.format(port=broker.port, cluster=CLUSTER, node=NODE))
        (probe / "run").write_text(RUN.format(node=NODE))
        binds = [f"--bind-ro={probe}:/mnt/probe", f"--bind-ro={dist}:/mnt/deb", f"--bind={out}:/mnt/out"]
        binds += [f"--bind-ro={site}:/mnt/site", f"--bind-ro={packages}:/mnt/hostsite"]
        (dist / "edgeflowd.deb").symlink_to(deb.name)

        _boot(overlay_root, probe, "install", binds)
        installed = (out / "install.log").read_text()
        print(installed)
        assert "dpkg rc=0" in installed and "enabled=enabled active=inactive" in installed
        assert "enabled, not started: set node_id and broker" in installed

        started = time.monotonic()
        boot = _boot(overlay_root, probe, "run", binds, wait=False)
        try:
            online = _status(broker, "online", 120)
            print(f"{NODE} online {time.monotonic() - started:.1f} s after the boot began")
            deadline = time.monotonic() + 60
            while not (out / "checked").exists():  # the probe has seen it idle: now deploy
                assert time.monotonic() < deadline and boot.poll() is None, "the probe did not run"
                time.sleep(0.2)
            cluster_file = tmp_path / "booted.yaml"
            cluster_file.write_text(
                f"schema: edgeflow.cluster/1\nname: {CLUSTER}\ndevices:\n  - {{id: {NODE}, profile: local-core}}\n"
            )
            where = ["--broker", broker.url]
            code, said = run_cli(capsys, "deploy", "--model", "small_dag", "--cluster", str(cluster_file), *where)
            assert code == 0, said
            code, said = run_cli(capsys, "infer", "--model", "small_dag", "--cluster", CLUSTER, *where, "--check")
            assert code == 0 and ": ok" in said, said
            (out / "freeze").touch()  # SIGSTOP: the watchdog restarts it, a new instance comes online
            restarted = _status(broker, "online", 120, other_than=online.instance)
            (out / "stop").touch()
            offline = _status(broker, "offline", 60, of=restarted.instance)  # said by the stop, not a will
            assert boot.wait(120) == 0, boot.stderr.read() if boot.stderr else ""
            print(f"instances: {online.instance} frozen, {restarted.instance} restarted, {offline.instance} stopped")
        finally:
            (out / "stop").touch()
            if boot.poll() is None:
                boot.kill()
                boot.wait(30)
    ran = (out / "run.log").read_text()
    print(ran)
    reached = re.search(r"multi-user.target after (\d+) ms", ran)
    assert reached, ran
    print(f"booted to multi-user.target in {int(reached[1]) / 1e3:.2f} s, nothing deployed")
    assert "state=active StatusText=connected to" in ran and "waiting for an assignment" in ran
    assert re.search(r"after the freeze: NRestarts=1 active pid (\d+) -> (?!\1)\d+", ran), ran
    assert "stopped=inactive" in ran
    broken = re.search(r"broken: (.*)", ran)
    assert broken and "NRestarts=0" in broken[1] and "ExecMainStatus=2" in broken[1], ran
    journal = re.search(r"journal lines: (\d+)", ran)
    assert journal and int(journal[1]) >= 3, ran
