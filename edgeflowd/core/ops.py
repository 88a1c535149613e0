"""Operators as data: an allow-listed callable plus arguments that reference layer inputs,
the previous op's result, or named constant tensors.

Only names in :data:`ALLOWED` can be rebuilt from the wire, so nothing executable crosses it.
Ops the graph does not know (a user's own function or module) get a ``local.`` name: a
function's is ``local.<its module>.<its name>``. They run in-process through a resolver the
controller supplies, and on a node whose administrator installed that module and listed it among
the daemon's ``plugins`` (:mod:`edgeflowd.node.plugins`); any other node refuses them with a
clear error. The wire only ever names them.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from edgeflowd.core.pooling import max_pool2d
from edgeflowd.core.rows import RowRange
from edgeflowd.errors import ProtocolError

__all__ = [
    "ALLOWED",
    "ELEMENTWISE",
    "Const",
    "In",
    "OpCall",
    "Prev",
    "Resolver",
    "RowConst",
    "check_call",
    "method_caller",
    "plugin_resolver",
    "row_consts",
    "run_call",
]


@dataclass(frozen=True)
class In:
    """The k-th input of the layer (a row slice of a producer's output)."""

    index: int


@dataclass(frozen=True)
class Prev:
    """The result of the previous op of the same (fused) layer."""


@dataclass(frozen=True)
class Const:
    """A named constant tensor (weights, buffers, folded shape-only values)."""

    name: str


@dataclass(frozen=True)
class RowConst(Const):
    """A constant that goes with the rows of the op's result along its dimension ``dim`` (a
    detection head's grid of cell offsets, a positional table): a unit reads only its own rows
    of it, the rows it computes."""

    dim: int


def method_caller(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)

    call.__name__ = name
    return call


def _identity(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x


def _words(text: str) -> list[str]:
    return text.split()


# Row-local ops: output row r depends on input row r only (per-channel or per-element math).
_ELEMENTWISE_F = _words(
    "relu relu6 silu sigmoid tanh hardswish hardsigmoid hardtanh leaky_relu gelu elu selu celu mish softplus "
    "softsign logsigmoid dropout dropout2d batch_norm"
)
_ELEMENTWISE_TORCH = _words("relu sigmoid tanh add mul sub div neg exp log abs sqrt rsqrt clamp maximum minimum pow")
_ELEMENTWISE_OPERATOR = _words("add mul sub truediv neg pow")
_ELEMENTWISE_METHODS = _words("relu sigmoid tanh add mul sub div neg exp log abs sqrt clamp pow contiguous float")
# Ops with their own row rules (controller.graph.rowmap).
_ROWS_F = _words("conv2d conv_transpose2d max_pool2d avg_pool2d interpolate pixel_shuffle pixel_unshuffle")
# Known ops that mix rows: they run whole, on one device.
_WHOLE_F = _words(
    "linear adaptive_avg_pool2d adaptive_max_pool2d softmax log_softmax pad normalize layer_norm group_norm "
    "instance_norm"
)
_WHOLE_TORCH = _words(
    "flatten cat stack split chunk matmul bmm mean sum amax softmax reshape permute transpose unsqueeze squeeze"
)
_WHOLE_METHODS = _words(
    "view reshape permute transpose flatten mean sum amax softmax unsqueeze squeeze expand split chunk repeat"
)


def _build_allowed() -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {}
    for name in (*_ELEMENTWISE_F, *_WHOLE_F, *_ROWS_F):
        table[f"F.{name}"] = getattr(F, name)
    for name in (*_ELEMENTWISE_TORCH, *_WHOLE_TORCH):
        table[f"torch.{name}"] = getattr(torch, name)
    for name in (*_ELEMENTWISE_OPERATOR, "getitem"):
        table[f"operator.{name}"] = getattr(operator, name)
    for name in (*_ELEMENTWISE_METHODS, *_WHOLE_METHODS):
        table[f"method.{name}"] = method_caller(name)
    table["F.max_pool2d"] = max_pool2d  # the same result, several times faster (core.pooling)
    table["identity"] = _identity
    return table


ALLOWED: dict[str, Callable[..., Any]] = _build_allowed()
ELEMENTWISE: frozenset[str] = frozenset(
    [f"F.{n}" for n in _ELEMENTWISE_F]
    + [f"torch.{n}" for n in _ELEMENTWISE_TORCH]
    + [f"operator.{n}" for n in _ELEMENTWISE_OPERATOR]
    + [f"method.{n}" for n in _ELEMENTWISE_METHODS]
    + ["identity"]
)

Resolver = Callable[[str], Callable[..., Any]]


@dataclass(frozen=True)
class OpCall:
    """One call: ``ALLOWED[target](*args, **kwargs)`` with :class:`In`/:class:`Prev`/
    :class:`Const` placeholders resolved at run time. ``node`` is the fx node it came from."""

    target: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    node: str = ""
    # Worked out once per call object, not on every run (a unit runs its ops per request): the
    # constants it names, and which arguments hold placeholders at all (strides, paddings and
    # other plain values are passed as they are, not walked).
    _consts: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _placed_args: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _placed_kwargs: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        _walk_consts((self.args, dict(self.kwargs)), names)
        object.__setattr__(self, "_consts", tuple(names))
        object.__setattr__(self, "_placed_args", tuple(i for i, a in enumerate(self.args) if _placed(a)))
        object.__setattr__(self, "_placed_kwargs", tuple(k for k, v in self.kwargs.items() if _placed(v)))

    @property
    def portable(self) -> bool:
        return self.target in ALLOWED

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        """The argument given at ``position`` or by ``name`` (a traced call may use either)."""
        return self.args[position] if len(self.args) > position else self.kwargs.get(name, default)

    def const_names(self) -> list[str]:
        return list(self._consts)


def _placed(value: Any) -> bool:
    """Whether ``value`` holds a placeholder (an input, the previous result, a constant)."""
    if isinstance(value, (In, Prev, Const)):
        return True
    if isinstance(value, (tuple, list)):
        return any(_placed(v) for v in value)
    return False


def row_consts(call: OpCall) -> list[RowConst]:
    """The constants ``call`` reads by rows."""
    found: list[RowConst] = []

    def walk(value: Any) -> None:
        if isinstance(value, RowConst):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk((call.args, dict(call.kwargs)))
    return found


def _walk_consts(value: Any, out: list[str]) -> None:
    if isinstance(value, Const):
        out.append(value.name)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _walk_consts(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _walk_consts(item, out)


_WRITES = ("inplace", "out")
"""Arguments with which a call writes into a tensor it was given."""
_UPDATES_STATS = frozenset({"F.batch_norm", "F.instance_norm"})
"""Ops that, with ``training`` true, update the running statistics they are given (weights)."""


def check_call(call: OpCall, where: str, plugins: Mapping[str, Callable[..., Any]] | None = None) -> None:
    """Refuse, when an assignment arrives, a call a node will not run: an op outside the
    allow-list and the node's ``plugins`` (op name to the function its installed code defines),
    or one that writes in place. Nothing from the wire may write: an input slice may
    be another unit's too, and a weight is shared by every later request (and by any later
    assignment naming the same blob), so one such op would corrupt answers still reported right.
    The runtime's own in-place activations write only results it has just made."""
    known = ALLOWED if not plugins else {**ALLOWED, **plugins}
    if call.target not in known:
        local = call.target.startswith("local.")
        raise ProtocolError(
            f"{where}: op {call.target!r} is not allow-listed on this node"
            + (" and no plugin of it defines it (edgeflowd's `plugins` setting)" if local else "")
        )
    try:  # positional or keyword alike: ``F.relu(x, True)`` writes in place too
        bound = inspect.signature(known[call.target]).bind_partial(*call.args, **call.kwargs).arguments
    except (TypeError, ValueError):  # builtins without a signature have no such parameter
        bound = dict(call.kwargs)
    writes = [*_WRITES, *(("training",) if call.target in _UPDATES_STATS else ())]
    for name in writes:
        if bound.get(name) not in (None, False):
            raise ProtocolError(
                f"{where}: op {call.target} writes in place ({name}={bound[name]!r}): "
                "a unit may not write to its inputs or weights"
            )


def plugin_resolver(plugins: Mapping[str, Callable[..., Any]]) -> Resolver:
    """The allow-list, and the ops the node's plugins define."""

    def resolve(name: str) -> Callable[..., Any]:
        return plugins[name] if name in plugins else allowed_resolver(name)

    return resolve


def allowed_resolver(name: str) -> Callable[..., Any]:
    try:
        return ALLOWED[name]
    except KeyError:
        raise ProtocolError(
            f"op {name!r} is not allow-listed on this node (a model-local op runs only where the "
            "model itself is loaded)"
        ) from None


def substitute(
    value: Any,
    inputs: Sequence[torch.Tensor],
    prev: torch.Tensor | None,
    tensors: Mapping[str, torch.Tensor],
    rows: RowRange | None = None,
) -> Any:
    if isinstance(value, In):
        return inputs[value.index]
    if isinstance(value, Prev):
        return prev
    if isinstance(value, RowConst) and rows is not None:
        return tensors[value.name].narrow(value.dim, rows.start, len(rows))
    if isinstance(value, Const):
        return tensors[value.name]
    if isinstance(value, tuple):
        return tuple(substitute(v, inputs, prev, tensors, rows) for v in value)
    if isinstance(value, list):
        return [substitute(v, inputs, prev, tensors, rows) for v in value]
    return value


def run_call(
    call: OpCall,
    inputs: Sequence[torch.Tensor],
    prev: torch.Tensor | None,
    tensors: Mapping[str, torch.Tensor],
    resolve: Resolver = allowed_resolver,
    rows: RowRange | None = None,
    **overrides: Any,
) -> Any:
    """Run ``call`` as written; ``overrides`` replace keyword arguments (used by row slicing).
    ``rows``: the rows the call computes, of which it reads each :class:`RowConst` (None: all)."""
    fn = resolve(call.target)
    args = list(call.args)
    for i in call._placed_args:
        args[i] = substitute(args[i], inputs, prev, tensors, rows)
    kwargs = dict(call.kwargs)
    for k in call._placed_kwargs:
        kwargs[k] = substitute(kwargs[k], inputs, prev, tensors, rows)
    kwargs.update(overrides)
    return fn(*args, **kwargs)
