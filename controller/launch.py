"""Starting the pieces of a local cluster as real processes: Mosquitto on a free loopback port
and ``edgeflowd`` daemons (separate interpreters: a process forked after torch has run hangs).
Used by the integration tests and the benchmarks; every wait has a deadline."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edgeflowd.errors import EdgeFlowError
from edgeflowd.mqtt import BrokerSettings

__all__ = ["Broker", "DaemonProcess", "free_port", "mosquitto_broker"]

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    def __init__(self, port: int, process: subprocess.Popen[bytes], tls: bool = False) -> None:
        self.port = port
        self.process = process
        self.tls = tls

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def settings(self) -> BrokerSettings:
        """How an anonymous client reaches it (secured brokers: build :class:`BrokerSettings`)."""
        return BrokerSettings(self.url)


@contextmanager
def mosquitto_broker(
    tmp: Path,
    extra: str = "",
    port: int | None = None,
    store: Path | None = None,
    listener: str = "allow_anonymous true\n",
    tls: bool = False,
) -> Iterator[Broker]:
    """Mosquitto on 127.0.0.1 with TCP_NODELAY, stopped (and reaped) on exit. ``listener``: the
    listener's settings (certificates, authentication; ``tls`` when they make it TLS). With
    ``store``, retained messages are saved there at exit and restored by the next broker given it
    (run as root, Mosquitto reads and writes as user ``mosquitto``: files must be reachable)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise EdgeFlowError("mosquitto is not installed: run `make install` as root (it installs it with apt)")
    port = port or free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    persistence = f"persistence true\npersistence_location {store}/\n" if store else "persistence false\n"
    conf.write_text(f"listener {port} 127.0.0.1\n{listener}set_tcp_nodelay true\n{persistence}{extra}")
    log = open(tmp / f"mosquitto-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline or process.poll() is not None:
                    text = (tmp / f"mosquitto-{port}.log").read_text()
                    raise EdgeFlowError(f"mosquitto did not start on port {port}: {text.strip()}") from exc
                time.sleep(0.05)
        yield Broker(port, process, tls)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


class DaemonProcess:
    """One ``edgeflowd`` started as its own process (never forked from this torch process)."""

    def __init__(self, node: str, broker: str, cluster: str, log_dir: Path, *extra: str,
                 env: dict[str, str] | None = None, cpus: Sequence[int] = (),
                 prefix: Sequence[str] = ()) -> None:  # fmt: skip
        """``cpus``: pin the daemon (all its threads, from the start) to these CPUs. ``prefix``:
        a command that runs it (a testbed device's cgroup and namespace)."""
        self.node = node
        pin = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
        self.args = [*prefix, *pin, sys.executable, "-m", "edgeflowd.cli", "--node-id", node, "--broker", broker,
                     "--cluster", cluster, "--threads", "1", *extra]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_dir / f"edgeflowd-{node}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        if self.alive():
            self.process.terminate()
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
