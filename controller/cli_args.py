"""Argument types shared by the ``edgeflow`` subcommands."""

from __future__ import annotations

import argparse

from controller.zoo import parse_shape

__all__ = ["input_shape", "positive_int"]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def input_shape(text: str) -> tuple[int, ...]:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
