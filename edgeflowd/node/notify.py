"""systemd's notify protocol (``Type=notify``): READY, STATUS, WATCHDOG, STOPPING.

Uses systemd-python's ``daemon.notify`` when it is installed; otherwise sends the same datagram
itself, so the daemon behaves identically under systemd without the optional package. Without
``NOTIFY_SOCKET`` (a foreground run) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


def _library_notify() -> Callable[[str], object] | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - optional
    except ImportError:
        return None
    notify: Callable[[str], object] = daemon.notify
    return notify


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None, use_library: bool = True) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and owned else None
        self._last_watchdog = float("-inf")
        self._library = _library_notify() if use_library and self.socket_path else None
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def send(self, message: str) -> None:
        if not self.socket_path:
            return
        if self._library is not None:
            self._library(message)
            return
        address = "\0" + self.socket_path[1:] if self.socket_path.startswith("@") else self.socket_path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), address)
        except OSError as exc:  # systemd went away: nothing to tell, nothing to stop for
            log.debug("notify %s failed: %s", self.socket_path, exc)

    def ready(self, status: str) -> None:
        """READY=1 once; later calls only update STATUS."""
        if self.ready_sent:
            self.status(status)
            return
        self.ready_sent = True
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog_due(self, now: float) -> None:
        """Ping the watchdog at half its interval (call it every loop; it keeps its own time)."""
        if self.watchdog_s and now - self._last_watchdog >= self.watchdog_s / 2:
            self._last_watchdog = now
            self.watchdog()

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self.send(f"STOPPING=1\nSTATUS={status}")
