"""Where every benchmark leaves its results: ``<out>/<name>.json`` and, when matplotlib is
installed, ``<out>/<name>.png`` drawn by the benchmark's own ``plot``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["save_report"]


def save_report(report: dict[str, Any], out: Path, name: str, plot: Callable[[dict[str, Any], Path], None]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    try:
        plot(report, out / f"{name}.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'edgeflow[plot]')")
    print(f"wrote {out}/{name}.json")
