"""The link probe: what a node's link to the broker carries, measured through the broker itself
(its own ``node/<id>/echo`` topic, never any other address). Runs on the daemon's engine thread
while the node is idle; the echoes reach it from paho's network thread through :meth:`LinkProbe.heard`.
The phases and the fit: :data:`~edgeflowd.node.benchmark.LINK_SIZES`, :func:`~edgeflowd.node.benchmark.fit_link`."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections.abc import Callable

from edgeflowd.errors import EdgeFlowError
from edgeflowd.net.mqtt import Connection
from edgeflowd.node.benchmark import LINK_CHUNK, LINK_PING_BYTES, LINK_SIZES, fit_link

__all__ = ["LinkProbe"]

log = logging.getLogger(__name__)

_ECHO_WAIT_S = 5.0


class LinkProbe:
    def __init__(self, conn: Connection, topic: str, node: str) -> None:
        self.conn = conn
        self.topic = topic
        self.node = node
        self._echoes: queue.Queue[bytes] = queue.Queue(maxsize=64)

    def heard(self, payload: bytes) -> None:
        """An echo arrived (network thread); never blocks it."""
        with contextlib.suppress(queue.Full):
            self._echoes.put_nowait(payload)

    def _echo(self, payload: bytes, send: Callable[[], object] | None = None) -> float | None:
        """Seconds until ``payload`` arrives on the echo topic after ``send`` (default: publishing
        it there); None when it did not, in time."""
        start = time.perf_counter()
        if send is None:
            self.conn.publish(self.topic, payload)
        else:
            send()
        deadline = start + _ECHO_WAIT_S + len(payload) * 8 / 1e6  # 1 Mbit/s at worst
        while (left := deadline - time.perf_counter()) > 0:
            try:
                if self._echoes.get(timeout=left) == payload:
                    return time.perf_counter() - start
            except queue.Empty:
                break
        return None

    def _upload_s(self, count: int, chunk: int) -> float:
        """Seconds to publish ``count`` chunks at QoS 1, to the broker's last acknowledgement
        (nobody subscribed: nothing comes back down meanwhile); 0 when one was not acknowledged."""
        start = time.perf_counter()
        sent = [self.conn.publish(self.topic, os.urandom(chunk), qos=1) for _ in range(count)]
        for info in sent:
            info.wait_for_publish(_ECHO_WAIT_S)
            if not info.is_published():
                return 0.0
        return time.perf_counter() - start

    def _download_s(self, size: int) -> float:
        """Seconds from subscribing to the arrival of a retained message of ``size`` bytes (the
        upload of it done before); 0 when it did not come."""
        payload = os.urandom(size)
        self.conn.publish_wait(self.topic, payload, timeout_s=_ECHO_WAIT_S + size * 8 / 1e6, retain=True)
        time.sleep(0.2)  # let a shaper's bucket fill again, as before the smaller transfer
        took = self._echo(payload, lambda: self.conn.subscribe(self.topic, qos=0))
        self.conn.unsubscribe(self.topic)
        return took or 0.0

    def measure(self) -> dict[str, float]:
        """Echoes through the broker (its own ``echo`` topic, never any other address), in the
        phases of :data:`~edgeflowd.node.benchmark.LINK_SIZES`. Empty when the broker did not echo
        (not connected, or an ACL that forbids it)."""
        while not self._echoes.empty():
            self._echoes.get_nowait()
        try:
            if not self.conn.subscribe_wait([self.topic], qos=0):
                return {}
            pings: list[float] = []
            for i in range(5):  # one lost echo ends it: an ACL may refuse the topic without a word
                took = self._echo(i.to_bytes(4, "big") * (LINK_PING_BYTES // 4))
                if took is None:
                    break
                pings.append(took)
        finally:
            self.conn.unsubscribe(self.topic)  # the uploads below must not come back down
        if not pings:
            log.warning("node=%s: no echo from the broker on %s; link not measured", self.node, self.topic)
            return {}
        chunk = min(LINK_CHUNK, self.conn.max_packet - 1024)  # the broker may take less than we would send
        small, large = LINK_SIZES
        up = down = (0.0, 0.0, 0.0, 0.0)
        try:
            up = (
                float(small * chunk),
                self._upload_s(small, chunk),
                float(large * chunk),
                self._upload_s(large, chunk),
            )
            size = min(4 * chunk, self.conn.max_packet - 1024)
            # Best of three each: on a fast link a download takes about what the subscription's
            # round trip does, and one slow subscription made the larger look no slower.
            down = (
                float(chunk),
                min(self._download_s(chunk) for _ in range(3)),
                float(size),
                min(self._download_s(size) for _ in range(3)) if size > chunk else 0.0,
            )
        except (EdgeFlowError, RuntimeError, ValueError) as exc:  # not acknowledged, disconnected
            log.warning("node=%s: link measurement failed: %s", self.node, exc)
        finally:
            self.conn.unsubscribe(self.topic)
            self.conn.publish(self.topic, b"", qos=1, retain=True)  # clear the retained probe
        figures = fit_link(pings, up, down)
        log.info("node=%s link: %s", self.node, figures)
        return figures
