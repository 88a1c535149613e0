"""A terminal progress bar for people; silent when stderr is not a terminal (logs, CI)."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["progress_bar"]


def progress_bar(total: int, label: str = "") -> Callable[..., None]:
    """Returns a function to call once per finished item (its arguments are ignored, so it can be
    a result callback as it is)."""
    done = 0

    def tick(*_: object) -> None:
        nonlocal done
        done += 1
        if sys.stderr.isatty():
            bar = "#" * (30 * done // max(1, total))
            end = "\n" if done >= total else ""
            print(f"\r{label}[{bar:<30}] {done}/{total}", end=end, file=sys.stderr, flush=True)

    return tick
