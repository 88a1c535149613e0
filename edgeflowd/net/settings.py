"""Where the broker is and how to log in: parsed and checked without touching the network, so
configuration (``edgeflowd --check-config``) can report problems without importing paho."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgeflowd.errors import MqttError

__all__ = ["BrokerSettings", "BrokerURL"]


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
    keepalive_s: int = 5
    """MQTT keepalive: a client silent for 1.5x this is dropped by the broker, which publishes its
    last will (a node's "offline"), so a frozen node is noticed in seconds, not the 45 s of the
    usual 30 s keepalive."""

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
        if not 1 <= self.keepalive_s <= 65535:
            found.append(("keepalive_s", f"keepalive_s must be 1-65535 seconds, got {self.keepalive_s}"))
        if self.password_file and not self.username:
            found.append(("password_file", "password_file needs a username"))
        return found

    def password(self) -> str | None:
        if not self.password_file:
            return None
        try:
            lines = Path(self.password_file).read_text().splitlines()
        except OSError as exc:
            raise MqttError(f"password_file {self.password_file}: cannot read: {exc.strerror}") from exc
        if not lines or not lines[0]:
            raise MqttError(f"password_file {self.password_file}: the first line (the password) is empty")
        return lines[0]

    def tls_context(self) -> ssl.SSLContext:
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
