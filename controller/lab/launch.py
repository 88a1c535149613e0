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
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edgeflowd.errors import EdgeFlowError
from edgeflowd.net.mqtt import listen, received
from edgeflowd.net.settings import BrokerSettings
from edgeflowd.node import allocator
from edgeflowd.wire.messages import Status, decode_control
from edgeflowd.wire.topics import NodeTopic, Topics

__all__ = [
    "Broker",
    "DaemonProcess",
    "controller_process",
    "ejabberd_broker",
    "embedded_broker",
    "free_port",
    "local_broker",
    "mosquitto_broker",
    "rabbitmq_broker",
    "stop_process",
    "unwind_on_signals",
    "wait_online",
]

REPO = Path(__file__).resolve().parents[2]


def unwind_on_signals() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, so that the ``with`` blocks that started a broker,
    daemons or a testbed clean them up; also in a process started with SIGINT ignored (a shell's
    background job)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    def __init__(
        self,
        port: int,
        process: subprocess.Popen[bytes],
        tls: bool = False,
        mqtt_version: str = "5",
        login: tuple[str, str] | None = None,
    ) -> None:
        self.port = port
        self.process = process
        self.tls = tls
        self.mqtt_version = mqtt_version  # the newest the broker speaks
        self.login = login  # (username, password file) every client must log in with; None: anonymous

    def login_flags(self) -> list[str]:
        """The command-line flags of ``login``, for ``edgeflow`` commands and ``edgeflowd``."""
        return ["--username", self.login[0], "--password-file", self.login[1]] if self.login else []

    @property
    def url(self) -> str:
        return self.url_at("127.0.0.1")

    def url_at(self, host: str) -> str:
        """Its URL on another of its listeners (a testbed link's host end)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def settings(self) -> BrokerSettings:
        """How a client reaches it (TLS brokers: build :class:`BrokerSettings`)."""
        username, password_file = self.login or (None, None)
        return BrokerSettings(self.url, self.mqtt_version, username=username, password_file=password_file)


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
    # The broker copies every payload through glibc's malloc: keep large blocks on its heap, as
    # the daemons do (edgeflowd.node.allocator); on a board, the same two variables go into
    # mosquitto's own service environment.
    env = {**os.environ, **allocator.environment()}
    with _serving([exe, "-c", str(conf)], port, tmp / f"mosquitto-{port}.log", "mosquitto", env) as process:
        yield Broker(port, process, tls)


RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian's rabbitmq-server package


@contextmanager
def rabbitmq_broker(tmp: Path) -> Iterator[Broker]:
    """RabbitMQ with its MQTT plugin on 127.0.0.1, all state under ``tmp``, stopped on exit: the
    broker of the compatibility table (MQTT 3.1.1 only before 3.13; retained messages only for
    subscriptions of their exact topic). Its Erlang port mapper runs on a port of its own and is
    stopped with it."""
    if not RABBITMQ_SERVER.exists():
        raise EdgeFlowError("rabbitmq-server is not installed: run `make test-brokers` as root (it installs it)")
    mqtt, amqp, dist, epmd = (free_port() for _ in range(4))
    home = tmp / f"rabbitmq-{mqtt}"
    home.mkdir()
    (home / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp}\nmqtt.listeners.tcp.default = 127.0.0.1:{mqtt}\n"
        "mqtt.allow_anonymous = true\nloopback_users = none\n"
    )
    (home / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    env = {
        **os.environ,
        "HOME": str(home),
        "RABBITMQ_NODENAME": f"edgeflow-{mqtt}@localhost",
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home / "log"),
        "RABBITMQ_DIST_PORT": str(dist),
        "ERL_EPMD_PORT": str(epmd),
    }
    try:
        with _serving([str(RABBITMQ_SERVER)], mqtt, tmp / f"rabbitmq-{mqtt}.log", "rabbitmq", env, 90) as process:
            yield Broker(mqtt, process, mqtt_version="3.1.1")
    finally:
        epmd_exe = shutil.which("epmd") or "epmd"
        subprocess.run([epmd_exe, "-port", str(epmd), "-kill"], env=env, capture_output=True, timeout=30, check=False)


EJABBERDCTL = Path("/usr/sbin/ejabberdctl")


@contextmanager
def ejabberd_broker(tmp: Path) -> Iterator[Broker]:
    """ejabberd's MQTT service (mod_mqtt, MQTT 5) on 127.0.0.1, stopped on exit with its Erlang port
    mapper (on a port of its own). ejabberd logs in no MQTT client without a password: with
    anonymous login any will do, and the broker hands every client the same one. ejabberdctl runs
    ejabberd as the ejabberd user, so its state lives in a directory of its own (a test's, private
    to root, would not do), removed after."""
    if not EJABBERDCTL.exists():
        raise EdgeFlowError("ejabberd is not installed: run `make test-brokers` as root (it installs it)")
    if os.geteuid() != 0:
        raise EdgeFlowError("ejabberdctl runs ejabberd as its own user: only root may start it here")
    mqtt, epmd = free_port(), free_port()
    node = f"edgeflow{mqtt}@localhost"
    home = Path(tempfile.mkdtemp(prefix=f"edgeflow-ejabberd-{mqtt}-"))
    for sub in ("conf", "logs", "spool"):
        (home / sub).mkdir()
    (home / "conf" / "ejabberd.yml").write_text(
        "hosts: [localhost]\nloglevel: info\nauth_method: [anonymous]\nanonymous_protocol: login_anon\n"
        f'listen:\n  - {{port: {mqtt}, ip: "127.0.0.1", module: mod_mqtt, backlog: 1000}}\n'
        "modules:\n  mod_mqtt: {}\n"
    )
    (home / "conf" / "ejabberdctl.cfg").write_text(f"ERLANG_NODE={node}\n")
    (home / "conf" / "inetrc").write_text("")
    for path in (home, *home.rglob("*")):
        shutil.chown(path, "ejabberd")
    password = tmp / f"ejabberd-{mqtt}.password"
    password.write_text("anonymous\n")
    env = {**os.environ, "ERL_EPMD_PORT": str(epmd)}
    argv = [str(EJABBERDCTL), "--config-dir", str(home / "conf"), "--logs", str(home / "logs")]
    argv += ["--spool", str(home / "spool"), "foreground"]
    try:
        with _serving(argv, mqtt, tmp / f"ejabberd-{mqtt}.log", "ejabberd", env, 60) as process:
            yield Broker(mqtt, process, login=("edgeflow", str(password)))
    finally:
        # ejabberdctl starts the Erlang VM under su: stopping ejabberdctl leaves the VM running.
        for sig in ("-TERM", "-KILL"):
            subprocess.run(["pkill", sig, "-f", f"sname {node}"], capture_output=True, timeout=10, check=False)
            time.sleep(1.0)
        epmd_exe = shutil.which("epmd") or "epmd"
        subprocess.run([epmd_exe, "-port", str(epmd), "-kill"], env=env, capture_output=True, timeout=30, check=False)
        shutil.rmtree(home, ignore_errors=True)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextmanager
def _serving(
    argv: list[str], port: int, log_path: Path, what: str, env: dict[str, str] | None = None, start_s: float = 15
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until it accepts connections on 127.0.0.1:``port`` (within ``start_s``); stop
    (and reap) it on exit."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + start_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise EdgeFlowError(f"{what} did not start on port {port}: {log_path.read_text().strip()}") from exc
                time.sleep(0.05)
        yield process
    finally:
        stop_process(process)
        log.close()


@contextmanager
def embedded_broker(tmp: Path, hosts: Sequence[str] = ()) -> Iterator[Broker]:
    """The pure-Python broker (amqtt; MQTT 3.1.1 only) in its own process, on 127.0.0.1 and
    ``hosts``, for machines without Mosquitto."""
    port = free_port()
    binds = [f"--bind={host}:{port}" for host in ("127.0.0.1", *hosts)]
    argv = [sys.executable, "-m", "controller.lab.embedded_broker", *binds]
    with _serving(argv, port, tmp / f"amqtt-{port}.log", "the embedded broker") as process:
        yield Broker(port, process, mqtt_version="3.1.1")


@contextmanager
def local_broker(tmp: Path, kind: str = "auto", hosts: Sequence[str] = ()) -> Iterator[Broker]:
    """Mosquitto (``kind`` "mosquitto", or "auto" where installed), else the embedded broker, on
    127.0.0.1 and ``hosts``."""
    if kind == "auto":
        kind = "mosquitto" if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists() else "embedded"
    if kind == "embedded":
        with embedded_broker(tmp, hosts) as broker:
            yield broker
        return
    port = free_port()
    with mosquitto_broker(tmp, port=port, extra="".join(f"listener {port} {h}\n" for h in hosts)) as broker:
        yield broker


@contextmanager
def controller_process(
    broker: Broker, log_dir: Path, cluster: str, model: str, *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``edgeflow controller`` as its own process; it must exit cleanly on SIGTERM."""
    log_path = log_dir / "controller.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.cli.main",
                "controller",
                "--broker",
                broker.url,
                "--mqtt-version",
                broker.mqtt_version,
                "--cluster",
                cluster,
                "--model",
                model,
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            yield process
        finally:
            process.terminate()
            code = process.wait(15)
    if code != 0:
        raise EdgeFlowError(f"the controller exited with status {code}: {log_path.read_text()[-2000:]}")


class DaemonProcess:
    """One ``edgeflowd`` started as its own process (never forked from this torch process)."""

    def __init__(
        self,
        node: str,
        broker: str,
        cluster: str,
        log_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        cpus: Sequence[int] = (),
        prefix: Sequence[str] = (),
    ) -> None:
        """``cpus``: pin the daemon (all its threads, from the start) to these CPUs. ``prefix``:
        a command that runs it (a testbed device's cgroup and namespace)."""
        self.node = node
        pin = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
        self.args = [
            *prefix,
            *pin,
            sys.executable,
            "-m",
            "edgeflowd.node.cli",
            "--node-id",
            node,
            "--broker",
            broker,
            "--cluster",
            cluster,
            "--threads",
            "1",
            *extra,
        ]
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


def wait_online(broker: Broker, cluster: str, nodes: Sequence[str], timeout_s: float) -> None:
    """Until every one of ``nodes`` reports itself online (after its start-up benchmark)."""
    topics = Topics(cluster)
    conn, messages = listen(broker.settings, "edgeflow-launch", [topics.node(node, "status") for node in nodes])
    online: set[str] = set()
    try:
        for topic, payload in received(messages, timeout_s):
            about = topics.parse(topic)
            node = about.node if isinstance(about, NodeTopic) else ""
            if payload and decode_control(payload, topic, Status).state == "online":
                online.add(node)
            if online >= set(nodes):
                return
    finally:
        conn.stop()
    raise EdgeFlowError(f"{', '.join(sorted(set(nodes) - online))} did not come online within {timeout_s:g} s")
