"""The one MQTT session wrapper the daemon, the controller and the requester share (paho-mqtt 2.x,
callback API v2). It connects with TCP_NODELAY (without it small messages stall ~40 ms behind
delayed ACKs), re-subscribes after every reconnect, learns the broker's packet limit from CONNACK
under MQTT 5, and hands each message to ``on_message`` on paho's network thread, which must only
enqueue."""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgeflowd.errors import EdgeFlowError

__all__ = [
    "DEFAULT_PACKET_BYTES", "BrokerSettings", "BrokerURL", "Connection", "MessageQueue", "MqttError", "listen",
    "received",
]  # fmt: skip

log = logging.getLogger(__name__)

DEFAULT_PACKET_BYTES = 1 << 20
"""Frames are cut at 1 MiB even where the broker takes more: chunks pipeline through the broker
(the cost model assumes the same), and every broker we know accepts that size."""


MessageQueue = queue.Queue[tuple[str, bytes]]
"""(topic, payload) pairs handed over from paho's network thread."""


class MqttError(EdgeFlowError):
    """The broker cannot be reached, refused us, or dropped a publish."""


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """``mqtt://HOST[:PORT]`` (port 1883) or ``mqtts://HOST[:PORT]`` (TLS, port 8883)."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise MqttError(f"broker URL {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise MqttError(f"broker URL {url!r}: bad port") from exc
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and how to prove who we are. ``mqtts://`` verifies the broker against
    ``ca_file`` (else the system's CAs); ``cert_file``/``key_file`` present a client certificate;
    ``username`` with the first line of ``password_file`` logs in. Secrets stay in files, never in
    command lines or configuration, which other users may read."""

    url: str = "mqtt://127.0.0.1:1883"
    mqtt_version: str = "5"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password_file: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        """(setting, message) for every inconsistency; file contents are checked at connect."""
        try:
            address = BrokerURL.parse(self.url)
        except MqttError as exc:
            return [("url", str(exc))]
        found: list[tuple[str, str]] = []
        if self.mqtt_version not in ("5", "3.1.1"):
            found.append(("mqtt_version", f"mqtt_version must be '5' or '3.1.1', got {self.mqtt_version!r}"))
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(self, name) and not address.tls:
                found.append((name, f"{name} needs TLS: the broker URL {self.url} is not mqtts://"))
        if bool(self.cert_file) != bool(self.key_file):
            found.append(("cert_file", "cert_file and key_file go together (a client certificate needs its key)"))
        if self.password_file and not self.username:
            found.append(("password_file", "password_file needs a username"))
        return found

    def _password(self) -> str | None:
        if not self.password_file:
            return None
        try:
            lines = Path(self.password_file).read_text().splitlines()
        except OSError as exc:
            raise MqttError(f"password_file {self.password_file}: cannot read: {exc.strerror}") from exc
        if not lines or not lines[0]:
            raise MqttError(f"password_file {self.password_file}: the first line (the password) is empty")
        return lines[0]

    def _tls_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttError(f"ca_file {self.ca_file}: {exc}") from exc
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise MqttError(f"cert_file {self.cert_file} / key_file {self.key_file}: {exc}") from exc
        return context

    def apply(self, client: paho.Client) -> BrokerURL:
        """Configure ``client`` for this broker; raises :class:`MqttError` naming the setting at fault."""
        problems = self.problems()
        if problems:
            raise MqttError("; ".join(message for _, message in problems))
        address = BrokerURL.parse(self.url)
        if address.tls:
            client.tls_set_context(self._tls_context())
        if self.username:
            client.username_pw_set(self.username, self._password())
        return address


def _nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Connection:
    """A paho client on its own network thread. ``on_message(topic, payload)`` and
    ``on_connect()`` run on that thread: keep them short (enqueue, publish)."""

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        on_message: Callable[[str, bytes], None],
        *,
        will: tuple[str, bytes] | None = None,
        on_connect: Callable[[], None] | None = None,
        packet_bytes: int = DEFAULT_PACKET_BYTES,
    ) -> None:
        self.max_packet = packet_bytes
        self._on_message = on_message
        self._on_connect = on_connect
        self._subscriptions: dict[str, int] = {}  # guarded by _lock; re-sent on every reconnect
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._refused: str | None = None
        self._v5 = settings.mqtt_version == "5"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
        )
        self.broker = settings.apply(self.client)
        self.client.on_socket_open = _nodelay
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_subscribe = self._subscribed
        self._waiting: set[int] = set()  # SUBSCRIBE message ids someone waits on; with _acked,
        self._acked: set[int] = set()  # guarded by _ack (ids are reused: only awaited ones are kept)
        self._ack = threading.Condition()
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)

    def begin(self) -> None:
        """Start connecting in the background; the network thread retries until it succeeds."""
        try:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {self.broker}: {exc}") from exc
        self.client.loop_start()

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and wait for the first CONNACK (for tools that cannot work without a broker):
        a refused or unreachable broker fails at once, not after the timeout."""
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {self.broker}: {exc}") from exc
        self.client.loop_start()
        if not self.connected.wait(timeout_s) or self._refused:
            self.client.loop_stop()
            reason = self._refused or f"no answer within {timeout_s:g} s (is the broker running?)"
            raise MqttError(f"cannot connect to {self.broker}: {reason}")

    def _connected(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.warning("%s refused the connection: %s", self.broker, reason)
            self.connected.set()  # wake start(), which reports the refusal
            return
        limit = getattr(props, "MaximumPacketSize", None) if self._v5 else None
        if isinstance(limit, int) and limit > 0:
            self.max_packet = min(self.max_packet, limit)
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        for topic, qos in subscriptions:
            client.subscribe(topic, qos)
        log.info("connected to %s (max packet %d bytes)", self.broker, self.max_packet)
        self.connected.set()
        if self._on_connect is not None:
            self._on_connect()

    def _disconnected(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if reason.is_failure:
            log.warning("lost the broker at %s (%s); reconnecting", self.broker, reason)

    def _message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._on_message(message.topic, bytes(message.payload))

    def _subscribed(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._ack:
            if mid in self._waiting:
                self._acked.add(mid)
                self._ack.notify_all()

    def subscribe(self, topic: str, qos: int = 0) -> None:
        with self._lock:
            self._subscriptions[topic] = qos
        self.client.subscribe(topic, qos)

    def subscribe_wait(self, topics: list[str], qos: int = 0, timeout_s: float = 10.0) -> bool:
        """Subscribe and wait for the broker's SUBACK, after which no message on these topics is
        missed; False when it did not come in time (the subscriptions stay and are retried on
        reconnect). Never call it from the network thread."""
        if not topics:
            return True
        with self._lock:
            self._subscriptions.update(dict.fromkeys(topics, qos))
        with self._ack:  # held from SUBSCRIBE on, so the SUBACK cannot slip past unrecorded
            rc, mid = self.client.subscribe([(t, qos) for t in topics])
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                return False
            self._waiting.add(mid)
            acked = self._ack.wait_for(lambda: mid in self._acked, timeout_s)
            self._waiting.discard(mid)
            self._acked.discard(mid)
        return acked

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subscriptions.pop(topic, None)
        self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> paho.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return info

    def publish_wait(self, topic: str, payload: bytes, timeout_s: float = 30.0, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement."""
        info = self.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise MqttError(f"publish to {topic}: {exc}") from exc
        if not info.is_published():
            raise MqttError(f"publish to {topic}: not acknowledged by {self.broker} within {timeout_s:g} s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def listen(broker: BrokerSettings, role: str, topics: Sequence[str]) -> tuple[Connection, MessageQueue]:
    """A started connection (client id ``<role>-<random>``) subscribed at QoS 1 to ``topics``,
    whose messages land in the returned queue: the shape every command-line tool needs."""
    inbox: MessageQueue = queue.Queue()
    conn = Connection(broker, f"{role}-{uuid.uuid4().hex[:8]}", lambda t, p: inbox.put((t, p)))
    for topic in topics:
        conn.subscribe(topic, qos=1)
    conn.start()
    return conn, inbox


def received(inbox: MessageQueue, wait_s: float) -> Iterator[tuple[str, bytes]]:
    """The messages that arrive in ``inbox`` within ``wait_s`` seconds (stop early by breaking)."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            yield inbox.get(timeout=left)
        except queue.Empty:
            return
