"""A node's Home Assistant discovery (``homeassistant_discovery``): what it publishes, when, and
what it removes. The config itself is built in :mod:`edgeflowd.wire.discovery`.

- at every connect, the retained config (the broker may have lost it) and a subscription to
  ``<prefix>/status``, whose ``online`` (Home Assistant restarted) announces the node again;
- at start, when the node's name changed since the last run (remembered in ``cache_dir``), the
  old name's config is cleared, so that a renamed board does not leave a dead device behind;
- ``edgeflowd --forget`` (the package's prerm, when it is removed) clears the config and the
  node's own retained topics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from edgeflowd import __version__
from edgeflowd.node.config import DaemonConfig
from edgeflowd.wire.discovery import HA_STATUS_ONLINE, discovery_topic, ha_status_topic, node_config, object_id
from edgeflowd.wire.topics import Topics

__all__ = ["Announcer", "Publisher"]

log = logging.getLogger(__name__)

_REMEMBERED = "homeassistant-device"  # in cache_dir: the device id announced last


class Publisher(Protocol):
    """What the announcer needs of a broker connection."""

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> object: ...

    def subscribe(self, topic: str, qos: int = 0) -> None: ...


class Announcer:
    def __init__(
        self, conn: Publisher, topics: Topics, cluster: str, node: str, prefix: str, cache_dir: str | None
    ) -> None:
        self.conn = conn
        self.topics = topics
        self.prefix = prefix
        self.node = node
        self.device = object_id(cluster, node)
        self.topic, self.config = node_config(topics, cluster, node, __version__, prefix)
        self.status_topic = ha_status_topic(prefix)
        self._memory = Path(cache_dir) / _REMEMBERED if cache_dir else None

    @classmethod
    def configured(cls, conn: Publisher, topics: Topics, config: DaemonConfig) -> Announcer | None:
        """The announcer a daemon's settings ask for, if any."""
        if not config.homeassistant_discovery:
            return None
        return cls(conn, topics, config.cluster, config.node_id, config.homeassistant_prefix, config.cache_dir)

    def connected(self) -> None:
        """Announce the node (retained) and listen for Home Assistant's restarts."""
        self.conn.subscribe(self.status_topic, qos=1)
        self._forget_old_name()
        self.announce()

    def announce(self) -> None:
        self.conn.publish(self.topic, self.config, qos=1, retain=True)
        log.info("announced to Home Assistant as %s on %s", self.device, self.topic)

    def heard(self, topic: str, payload: bytes) -> bool:
        """Whether ``topic`` was Home Assistant's status (announcing again when it came online)."""
        if topic != self.status_topic:
            return False
        if payload.strip() == HA_STATUS_ONLINE:
            self.announce()
        return True

    def _forget_old_name(self) -> None:
        if self._memory is None:
            return
        try:
            old = self._memory.read_text().strip() if self._memory.exists() else ""
            if old and old != self.device:
                self.conn.publish(discovery_topic(self.prefix, old), b"", qos=1, retain=True)
                log.info("renamed from %s: its Home Assistant device is removed", old)
            if old != self.device:
                self._memory.write_text(f"{self.device}\n")
        except OSError as exc:  # a read-only or missing cache: the node serves all the same
            log.warning("cannot remember the Home Assistant device in %s: %s", self._memory, exc)
