"""EdgeFlow device side: protocol-level data (rows, ops, units, codec) shared with the
controller, and the daemon. Nothing here imports the controller."""

__version__ = "0.1.0"
