"""An operator plugin, as an administrator installs one on a board: a module whose functions
become ops there (``edgeflowd --plugins tests.plugin_ops``)."""

from __future__ import annotations

import torch
import torch.fx


@torch.fx.wrap
def soft_clip(x: torch.Tensor, limit: float) -> torch.Tensor:
    """``limit * tanh(x / limit)``: a user's own op, which torch.fx records as one call."""
    return limit * torch.tanh(x / limit)


def rows_reversed(x: torch.Tensor) -> torch.Tensor:
    """Reverses the rows: an op that mixes them (kept whole even where the plugin is)."""
    return torch.flip(x, dims=[2])
