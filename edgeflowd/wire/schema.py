"""The one schema mechanism for every JSON document on the wire: a frozen :mod:`msgspec` struct
tagged by its ``schema`` field (``edgeflow.<name>/<version>``), decoded strictly by the fields
it declares (an error names the place at fault: ``$.units[3].rows[1]``) while keys it does not
declare are ignored, so a newer sender stays readable. msgspec validates while it parses, in C:
the frame header is decoded for every slice on the hot path."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from edgeflowd.errors import ProtocolError

__all__ = ["Document", "decode", "decode_foreign", "encode"]


class Document(msgspec.Struct, frozen=True, tag_field="schema"):
    """Base of every wire document; a subclass names its schema with ``tag="edgeflow.x/1"``."""


class _Untagged(Document, frozen=True, tag=""):
    """Never sent. Decoding through a union with it makes ``schema`` a required field (msgspec
    would take a lone tagged type without its tag)."""


D = TypeVar("D", bound=Document)
S = TypeVar("S", bound=msgspec.Struct)

_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_ENCODER = msgspec.json.Encoder()


def encode(document: Document) -> bytes:
    return _ENCODER.encode(document)


def decode(payload: bytes | memoryview, cls: type[D], where: str) -> D:
    """``payload`` as a ``cls``; anything else raises :class:`ProtocolError` naming ``where`` and
    the path of the fault."""
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.json.Decoder(cls | _Untagged)
    document = _decoded(decoder, payload, where)
    if not isinstance(document, cls):
        raise ProtocolError(f"{where}: field 'schema' is empty")
    return document


def decode_foreign(payload: bytes | memoryview, cls: type[S], where: str) -> S:
    """A document in a shape others define, with no ``schema`` field (a dashboard's request):
    decoded as strictly, with the same errors."""
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.json.Decoder(cls)
    document: S = _decoded(decoder, payload, where)
    return document


def _decoded(decoder: msgspec.json.Decoder[Any], payload: bytes | memoryview, where: str) -> Any:
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"{where}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"{where}: not JSON: {exc}") from exc
    except RecursionError as exc:  # msgspec recurses per nesting level, in free-form fields too
        raise ProtocolError(f"{where}: JSON nested too deeply") from exc
