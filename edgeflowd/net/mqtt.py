"""The one MQTT session wrapper the daemon, the controller and the requester share (paho-mqtt 2.x,
callback API v2). It connects with TCP_NODELAY (without it small messages stall ~40 ms behind
delayed ACKs), re-subscribes after every reconnect, learns the broker's packet limit from CONNACK
under MQTT 5, falls back to MQTT 3.1.1 by itself when a broker refuses 5, and hands each message
to ``on_message`` on paho's network thread, which must only enqueue."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgeflowd.core.sizes import PACKET_BYTES
from edgeflowd.errors import MqttError
from edgeflowd.net.settings import BrokerSettings, BrokerURL

__all__ = [
    "Connection",
    "MessageQueue",
    "listen",
    "queued",
    "received",
]

log = logging.getLogger(__name__)


MessageQueue = queue.Queue[tuple[str, bytes]]
"""(topic, payload) pairs handed over from paho's network thread."""


def _configure(client: paho.Client, settings: BrokerSettings) -> BrokerURL:
    """Configure ``client`` for this broker; raises :class:`MqttError` naming the setting at fault."""
    problems = settings.problems()
    if problems:
        raise MqttError("; ".join(message for _, message in problems))
    address = BrokerURL.parse(settings.url)
    if address.tls:
        client.tls_set_context(settings.tls_context())
    if settings.username:
        client.username_pw_set(settings.username, settings.password())
    return address


def _nodelay(sock: Any) -> None:
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_UNSUPPORTED_VERSION = (1, 132)
"""CONNACK codes for "unacceptable protocol version": 3.1.1's return code 1, MQTT 5's reason 0x84."""


def _speak_311(client: paho.Client) -> None:
    """Make ``client``'s next CONNECT an MQTT 3.1.1 one. paho fixes the version when a client is
    made and offers no setter; a new client would need this one's network thread stopped, which
    cannot be done from that thread, where a refusal is seen. These two fields are all paho reads
    the version from (paho-mqtt 2.x)."""
    client._protocol = MQTTProtocolVersion.MQTTv311
    client._clean_session = True


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
        packet_bytes: int = PACKET_BYTES,
    ) -> None:
        self.max_packet = packet_bytes
        self._on_message = on_message
        self._on_connect = on_connect
        self._subscriptions: dict[str, int] = {}  # guarded by _lock; re-sent on every reconnect
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._refused: str | None = None
        self._v5 = settings.mqtt_version == "5"  # until a broker refuses 5: then 3.1.1 for good
        self._sent_connect = False  # a CONNECT went out and no CONNACK came back yet
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
        )
        self.broker = _configure(self.client, settings)
        self.keepalive_s = settings.keepalive_s
        self.client.on_socket_open = self._socket_open
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_subscribe = self._subscribed
        self.client.on_connect_fail = self._connect_failed
        self._complaint = ""  # the connection problem last logged: said once, until it changes
        self._up = False  # connected (CONNACK accepted) since the last disconnect
        self._waiting: set[int] = set()  # SUBSCRIBE message ids someone waits on; with _acked,
        self._acked: set[int] = set()  # guarded by _ack (ids are reused: only awaited ones are kept)
        self._ack = threading.Condition()
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)

    def begin(self) -> None:
        """Start connecting in the background; the network thread retries until it succeeds."""
        try:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.keepalive_s)
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {self.broker}: {exc}") from exc
        self.client.loop_start()

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and wait for the first CONNACK (for tools that cannot work without a broker):
        a refused or unreachable broker fails at once, not after the timeout."""
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=self.keepalive_s)
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {self.broker}: {exc}") from exc
        self.client.loop_start()
        if not self.connected.wait(timeout_s) or self._refused:
            self.client.loop_stop()
            reason = self._refused or f"no answer within {timeout_s:g} s (is the broker running?)"
            raise MqttError(f"cannot connect to {self.broker}: {reason}")

    def _complain(self, problem: str) -> None:
        """Log a connection problem once, not at every retry (paho retries every 1-30 s)."""
        if problem != self._complaint:
            self._complaint = problem
            log.warning("%s; retrying", problem)

    @property
    def problem(self) -> str:
        """The connection problem last logged ("" once connected)."""
        return self._complaint

    @property
    def version(self) -> str:
        """The MQTT version spoken: "5", or "3.1.1" (asked for, or fallen back to)."""
        return "5" if self._v5 else "3.1.1"

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        _nodelay(sock)
        self._sent_connect = True  # paho sends CONNECT as soon as the socket is open

    def _fall_back(self, why: str) -> None:
        """The broker would not speak MQTT 5: speak 3.1.1 from the next (automatic) reconnect on."""
        self._v5 = False
        _speak_311(self.client)
        log.warning("%s %s; speaking MQTT 3.1.1 to it (set mqtt_version: 3.1.1 to skip the try)", self.broker, why)

    def _connect_failed(self, client: paho.Client, userdata: Any) -> None:
        self._complain(f"cannot connect to {self.broker} (is the broker running, and reachable from here?)")

    def _connected(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._sent_connect = False
        if reason.is_failure and self._v5 and reason.value in _UNSUPPORTED_VERSION:
            self._fall_back(f"refused MQTT 5 ({reason})")  # paho retries in a second, in 3.1.1
            return
        if reason.is_failure:
            self._refused = str(reason)
            words = str(reason).lower()
            hint = " (check username and password_file)" if "author" in words or "password" in words else ""
            self._complain(f"{self.broker} refused the connection: {reason}{hint}")
            self.connected.set()  # wake start(), which reports the refusal
            return
        self._up = True
        if self._complaint:
            log.info("connected to %s after: %s", self.broker, self._complaint)
            self._complaint = ""
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
        was_up, self._up = self._up, False
        self.connected.clear()
        if self._sent_connect and self._v5:
            # Hung up on our MQTT 5 CONNECT without a CONNACK: what brokers that speak only 3.1.1
            # do (RabbitMQ's MQTT plugin before 3.13), rather than refuse the version.
            self._sent_connect = False
            self._fall_back("closed the connection on an MQTT 5 CONNECT")
            return
        self._sent_connect = False
        if reason.is_failure and was_up:  # after a refusal the broker hangs up too: the refusal said it
            self._complain(f"lost the broker at {self.broker} ({reason})")

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
        """Publish at QoS 1 and wait for the broker's acknowledgement, across a reconnect."""
        info = self.publish(topic, payload, qos=1, retain=retain)
        if info.rc == paho.MQTT_ERR_NO_CONN:
            # Published while the connection is down, paho keeps the message and sends it once it
            # reconnects; its info still says NO_CONN, which wait_for_publish takes for a failure.
            info.rc = paho.MQTT_ERR_SUCCESS
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
    messages: MessageQueue = queue.Queue()
    conn = Connection(broker, f"{role}-{uuid.uuid4().hex[:8]}", lambda t, p: messages.put((t, p)))
    for topic in topics:
        conn.subscribe(topic, qos=1)
    conn.start()
    return conn, messages


def queued(messages: MessageQueue, wait_s: float) -> list[tuple[str, bytes]]:
    """The next message (waiting at most ``wait_s`` for it) and every one already queued behind it:
    a consumer that decides after each batch decides on all it has been told."""
    try:
        batch = [messages.get(timeout=wait_s)]
    except queue.Empty:
        return []
    return batch + [messages.get_nowait() for _ in range(messages.qsize())]  # only this thread takes


def received(messages: MessageQueue, wait_s: float) -> Iterator[tuple[str, bytes]]:
    """The messages that arrive in ``messages`` within ``wait_s`` seconds (stop early by breaking)."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            yield messages.get(timeout=left)
        except queue.Empty:
            return
