"""What dashboards see of the controller and may ask of it, beside the topics it publishes anyway:

- its Home Assistant discovery config (retained; again whenever Home Assistant comes online);
- requests in zigbee2mqtt's style: a JSON object on ``controller/request/<op>``, answered on
  ``controller/response/<op>`` with ``status`` (``ok`` or ``error``), ``data`` or ``error``, and
  the request's ``transaction`` echoed, so that a dashboard can match answers to questions. Who may
  ask is the broker's ACL (``edgeflow acl`` gives it to the operator users only).

The operations themselves are the controller's (:class:`~controller.control.service.ControllerService`
hands them in); this module decodes, dispatches and answers, and no bad request costs more than
an error answer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from edgeflowd import __version__
from edgeflowd.errors import EdgeFlowError
from edgeflowd.net.mqtt import Connection
from edgeflowd.wire.discovery import HA_STATUS_ONLINE, controller_config, ha_status_topic
from edgeflowd.wire.schema import decode_foreign
from edgeflowd.wire.topics import Topics

__all__ = ["Dashboard", "Operation", "Request", "Response"]

log = logging.getLogger(__name__)


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A dashboard's request. ``transaction``: any string or number, echoed in the answer;
    ``method``: for ``set_method``."""

    transaction: str | int | None = None
    method: str | None = None


class Response(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str  # ok | error
    data: dict[str, Any] | None = None
    error: str | None = None
    transaction: str | int | None = None


class _Transaction(msgspec.Struct, frozen=True):
    """Only the transaction of a request that is otherwise wrong, to echo with the error."""

    transaction: str | int | None = None


Operation = Callable[[Request], dict[str, Any]]
"""Carries out a request and returns its ``data``; raises :class:`EdgeFlowError` to refuse it."""


class Dashboard:
    def __init__(
        self,
        conn: Connection,
        topics: Topics,
        operations: Mapping[str, Operation],
        homeassistant_prefix: str | None,
        models: Sequence[str],
    ) -> None:
        self.conn = conn
        self.topics = topics
        self.operations = dict(operations)
        prefix = homeassistant_prefix
        self.ha_status = ha_status_topic(prefix) if prefix else ""
        self.ha_config = controller_config(topics, topics.cluster, __version__, prefix, models) if prefix else None
        self._requests = topics.requests[:-1]  # the filter's topics start so

    def subscriptions(self) -> list[str]:
        return [self.topics.requests, *([self.ha_status] if self.ha_status else [])]

    def heard(self, topic: str, payload: bytes) -> bool:
        """Whether ``topic`` was one of the dashboard's (answered, or announced again)."""
        if self.ha_status and topic == self.ha_status:
            if self.ha_config is not None and payload.strip() == HA_STATUS_ONLINE:
                self.conn.publish(*self.ha_config, qos=1, retain=True)
            return True
        if not topic.startswith(self._requests):
            return False
        op = topic[len(self._requests) :]
        self.conn.publish(self.topics.response(op), self.answer(op, payload, topic), qos=1)
        return True

    def answer(self, op: str, payload: bytes, topic: str) -> bytes:
        """The answer to one request, as the payload to publish."""
        try:
            transaction = decode_foreign(payload or b"{}", _Transaction, topic).transaction
        except EdgeFlowError:
            transaction = None
        try:
            request = decode_foreign(payload or b"{}", Request, topic)
            transaction = request.transaction
            operation = self.operations.get(op)
            if operation is None:
                known = ", ".join(sorted(self.operations))
                raise EdgeFlowError(f"{topic}: unknown operation {op!r} (known: {known})")
            response = Response("ok", data=operation(request), transaction=transaction)
        except EdgeFlowError as exc:  # ProtocolError too: a bad request gets its answer, not a crash
            log.warning("request refused: %s", exc)
            response = Response("error", error=str(exc), transaction=transaction)
        return msgspec.json.encode(response)
