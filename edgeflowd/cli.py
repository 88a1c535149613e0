"""``edgeflowd`` entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgeflowd import __version__

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgeflowd",
        description="EdgeFlow device daemon. This release ships the execution-unit runtime it "
        "is built on (see `edgeflow verify`); the MQTT service mode is not in this release yet.",
    )
    parser.add_argument("--version", action="version", version=f"edgeflowd {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
