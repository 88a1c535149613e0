"""YAML documents that remember where each value came from, so that every validation error can
name the file, the line and the field (``pi4.yaml:12: link.up_mbps: expected a positive number``)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from edgeflowd.errors import ProfileError

__all__ = ["YamlDoc", "check_keys", "convert", "number", "read_text"]

T = TypeVar("T")


class YamlDoc:
    """Parsed YAML plus the line of every node, so errors can point at it."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ProfileError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
        self._no_duplicate_keys(self.root)

    def _no_duplicate_keys(self, node: yaml.Node | None) -> None:
        """YAML lets a repeated key silently win; in a profile that hides a typo's twin."""
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if key.value in seen:
                    raise ProfileError(
                        f"{self.source}:{line}: {key.value}: repeated key (first at line {seen[key.value]})"
                    )
                seen[key.value] = line
                self._no_duplicate_keys(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._no_duplicate_keys(item)

    def line(self, path: tuple[str | int, ...]) -> int:
        node = self.root
        for key in path:
            if isinstance(node, yaml.MappingNode):
                match = [v for k, v in node.value if k.value == key]
                if not match:
                    break
                node = match[0]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
            else:
                break
        return (node.start_mark.line + 1) if node is not None else 1

    def error(self, path: tuple[str | int, ...], message: str) -> ProfileError:
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
        return ProfileError(f"{self.source}:{self.line(path)}: {dotted or '(top)'}: {message}")


def number(doc: YamlDoc, value: Any, path: tuple[str | int, ...], minimum: float = 0.0, strict: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        kind = "a positive number" if strict and minimum == 0 else f"a number >= {minimum}"
        raise doc.error(path, f"expected {kind}, got {value!r}")
    return float(value)


def check_keys(doc: YamlDoc, data: dict[str, Any], path: tuple[str | int, ...], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise doc.error((*path, key), f"unknown field (expected one of {', '.join(sorted(allowed))})")


_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?:key` in `)?\$(?P<path>[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|\[\.\.\.\]")
_PLAIN = (  # msgspec's words -> the ones a person editing YAML reads more easily
    (re.compile(r"^Expected `float` > 0\.0$"), "expected a positive number"),
    (re.compile(r"^Expected `float` >= 0\.0$"), "expected a number >= 0.0"),
    (re.compile(r"^Expected `float` < 1000000000000\.0$"), "expected a finite number"),
    (re.compile(r"^Expected `int` >= 1$"), "expected a positive integer"),
    (re.compile(r"^Expected `float` < 1\.0$"), "expected a CPU fraction in [0, 1)"),
    (re.compile(r"^Expected `str` matching regex .*$"), "expected a name without '/', '#', '+'"),
    (re.compile(r"^Expected `(float|int)`, got `\w+`$"), "expected a number"),
    (re.compile(r"^Object missing required field `(\w+)`$"), "missing required field '\\1'"),
    (re.compile(r"^Expected `object`, got `\w+`$"), "expected a mapping"),
    (re.compile(r"^Expected `array` of length >= 1$"), "expected a non-empty list"),
)


def convert(doc: YamlDoc, data: Any, path: tuple[str | int, ...], cls: type[T]) -> T:
    """``data`` (found at ``path`` in ``doc``) as a ``cls``, one of the formats declared in
    :mod:`edgeflowd.profiles.formats`; raises :class:`ProfileError` naming the file, the line,
    the field and the value at fault."""
    try:
        return msgspec.convert(data, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise _refusal(doc, data, path, str(exc)) from exc


def _refusal(doc: YamlDoc, data: Any, path: tuple[str | int, ...], text: str) -> ProfileError:
    match = _AT.match(text)
    message, at = (match["message"], match["path"] or "") if match else (text, "")
    steps: list[str | int] = [int(m[2]) if m[2] else m[1] for m in _STEP.finditer(at) if m[1] or m[2]]
    unknown = re.match(r"Object contains unknown field `(\w+)`", message)
    kind = re.match(r"Invalid enum value '(.*)'$", message)
    if unknown:
        steps.append(unknown[1])
        message = "unknown field"
    elif kind and "key` in" in text:
        steps.append(kind[1])
        message = "unknown op kind"
    for pattern, plain in _PLAIN:
        message = pattern.sub(plain, message)
    value: Any = data
    for step in steps:  # the value at fault, when the error is about one
        held = isinstance(value, dict) and step in value
        listed = isinstance(value, list) and isinstance(step, int) and step < len(value)
        value = value[step] if held or listed else ...
    shown = f", got {value!r}" if value is not ... and not isinstance(value, (dict, list)) and not unknown else ""
    return doc.error((*path, *steps), f"{message[:1].lower()}{message[1:]}{shown}")


def read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ProfileError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8") from exc
