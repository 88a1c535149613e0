"""The `edgeflow` command."""

from controller.cli.main import main

__all__ = ["main"]
