"""Operator plugins: Python modules an administrator installed on the board and listed in the
daemon's ``plugins`` setting. Each function a plugin module defines (those its ``__all__`` names,
if it has one; not one it imports) becomes
an op this node runs, named as the controller's tracer names a model's own function:
``local.<module>.<function>``. The node reports them in its ``info``; the controller places a
unit that uses one only on nodes that have it. Nothing executable crosses the wire: the code is
installed here, an assignment only names it.

A model's own ``nn.Module`` subclasses need no plugin: torch.fx traces through them to the
functions they call. What a plugin provides is a function fx cannot trace into (one wrapped with
``torch.fx.wrap``, or one that calls compiled code).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from edgeflowd.errors import ProfileError

__all__ = ["load_plugins", "plugin_ops"]


def plugin_ops(module_name: str, module: object) -> dict[str, Callable[..., Any]]:
    """The ops module ``module_name`` defines: the functions its ``__all__`` names, or without
    one its public functions (not those it imports), by their traced names."""
    names = getattr(module, "__all__", None)
    public = [n for n in vars(module) if not n.startswith("_")] if names is None else list(names)
    ops: dict[str, Callable[..., Any]] = {}
    for attr in public:
        value = getattr(module, attr, None)
        if inspect.isfunction(value) and value.__module__ == module_name:
            ops[f"local.{module_name}.{value.__qualname__}"] = value
    return ops


def load_plugins(names: Sequence[str], where: str = "plugins") -> dict[str, dict[str, Callable[..., Any]]]:
    """Import each plugin module; its ops by module. A module that fails to import, or defines no
    function, is an error naming ``where`` (the setting's source) and the module."""
    loaded: dict[str, dict[str, Callable[..., Any]]] = {}
    for name in names:
        if name == "torch" or name.startswith("torch."):
            raise ProfileError(f"{where}: plugin {name!r}: torch's own modules are not plugins")
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a plugin's import can fail in any way: report it, do not crash
            raise ProfileError(f"{where}: plugin {name!r} does not import: {type(exc).__name__}: {exc}") from exc
        ops = plugin_ops(name, module)
        if not ops:
            raise ProfileError(f"{where}: plugin {name!r} defines no function to run as an op")
        loaded[name] = ops
    return loaded
