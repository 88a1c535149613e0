"""Byte sizes that the daemon, the requester and the cost model must agree on, each said once."""

from __future__ import annotations

__all__ = ["ELEMENT_BYTES", "FRAME_HEADER_BYTES", "FRAME_ROOM_BYTES", "PACKET_BYTES"]

PACKET_BYTES = 1 << 20
"""Frames and weight-blob parts are cut at 1 MiB even where the broker takes more: chunks pipeline
through the broker (the cost model assumes the same), and every broker we know accepts that size.
Under MQTT 5 a smaller limit announced by the broker wins."""

FRAME_HEADER_BYTES = 512
"""Room each message keeps for what is not tensor bytes: the frame's 40-byte prefix (magic, tag,
header length), its JSON header (about 220 bytes for ResNet-50 ids), the topic (about 50) and
the MQTT fixed header. The cost model charges it per
message, the frame encoder and the blob splitter keep it free in every packet."""

FRAME_ROOM_BYTES = PACKET_BYTES - FRAME_HEADER_BYTES
"""Tensor bytes one message of the default packet size carries."""

ELEMENT_BYTES = 4
"""Activations travel, and are counted, as float32."""
