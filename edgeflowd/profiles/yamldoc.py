"""YAML documents that remember where each value came from, so that every validation error can
name the file, the line and the field (``pi4.yaml:12: link.up_mbps: expected a positive number``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from edgeflowd.errors import ProfileError

__all__ = ["YamlDoc", "check_keys", "number", "read_text", "require"]


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


def require(doc: YamlDoc, data: Any, path: tuple[str | int, ...], key: str, default: Any = ...) -> Any:
    if not isinstance(data, dict):
        raise doc.error(path, f"expected a mapping, got {type(data).__name__}")
    if key not in data:
        if default is ...:
            raise doc.error(path, f"missing required field {key!r}")
        return default
    return data[key]


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
