"""In-process executor: runs a plan's units in dependency order, moving between them only the
rows their forwarding tables name, exactly as the daemons do over the broker."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from controller.plan import Plan
from edgeflowd.inbox import assemble
from edgeflowd.rows import RowRange
from edgeflowd.slicing import take_rows
from edgeflowd.units import CLIENT, SINK, run_unit

__all__ = ["RunStats", "execute"]


@dataclass
class RunStats:
    messages: int = 0
    bytes: int = 0
    remote_messages: int = 0
    remote_bytes: int = 0


def execute(
    plan: Plan,
    x: torch.Tensor,
    tensors: Mapping[str, torch.Tensor],
    resolve: Callable[[str], Callable[..., Any]],
) -> tuple[list[torch.Tensor], RunStats]:
    """The model's outputs for input ``x`` computed unit by unit, and the traffic it took."""
    inbox: dict[tuple[str, str], list[tuple[RowRange, torch.Tensor]]] = defaultdict(list)
    device_of = {u.uid: u.device for u in plan.units}
    stats = RunStats()
    with torch.no_grad():
        for unit in plan.units:
            if unit.device == CLIENT:
                out = x
            else:
                inputs = []
                for inp in unit.inputs:
                    pieces = inbox.pop((unit.uid, inp.producer), [])
                    if inp.rows.empty:  # the op's window lies wholly in padding
                        inputs.append(torch.zeros(inp.slice_shape()))
                    else:
                        inputs.append(assemble(pieces, inp.rows, f"unit {unit.uid} input {inp.producer}"))
                out = run_unit(unit, inputs, tensors, resolve)
            for fwd in unit.forwards:
                piece = take_rows(out, fwd.rows, unit.rows)
                inbox[(fwd.consumer, unit.layer)].append((fwd.rows, piece))
                nbytes = piece.numel() * piece.element_size()
                stats.messages += 1
                stats.bytes += nbytes
                if device_of.get(fwd.consumer, CLIENT) != unit.device:
                    stats.remote_messages += 1
                    stats.remote_bytes += nbytes
    outputs = []
    for layer in plan.outputs:
        height = next(u.out_shape for u in plan.units if u.layer == layer)
        rows = RowRange(0, height[2] if len(height) == 4 else 1)
        outputs.append(assemble(list(inbox.get((SINK, layer), [])), rows, f"output {layer}"))
    return outputs, stats
