"""The one small exception hierarchy shared by the daemon and the controller.

Catch only where you can act: the CLI prints one line and exits non-zero, the daemon logs, counts
and goes on.
"""

from __future__ import annotations

__all__ = ["EdgeFlowError", "GraphError", "MqttError", "PlanError", "ProfileError", "ProtocolError"]


class EdgeFlowError(Exception):
    """Base of every error EdgeFlow raises on purpose."""


class GraphError(EdgeFlowError):
    """A model cannot be traced or turned into a layer graph; the message names the fx node."""


class PlanError(EdgeFlowError):
    """A partition or plan is inconsistent (rows not covered, unsplittable layer split, ...)."""


class ProfileError(EdgeFlowError):
    """A device or cluster profile is invalid; the message names file, line and field."""


class ProtocolError(EdgeFlowError):
    """A message or serialised unit is malformed; the message names the topic or field."""


class MqttError(EdgeFlowError):
    """The broker cannot be reached, refused us, or dropped a publish."""
