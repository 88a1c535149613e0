"""Trace a model with torch.fx into a :class:`LayerGraph`.

Each fx node is one of: a **data** node (a tensor computed from the input: becomes an op),
a **constant** (weights, buffers, anything computed without the input), or a **shape** value
(``x.shape``, ``x.size(2)``...), which is specialised to the traced input shape. A node whose
non-tensor value depends on the input's data cannot be planned and gets a :class:`GraphError`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from controller.graph.convert import canonical_window, function_name, method_name, module_call
from controller.graph.epilogue import split_epilogue
from controller.graph.flops import op_flops
from controller.graph.fold import fold_batch_norm
from controller.graph.fxrun import Recorder, is_tensors, shape_query, symbolic_trace
from controller.graph.identities import eval_identity
from controller.graph.layers import Layer, LayerGraph
from controller.graph.layout import free_rows, pixel_axis, whole_consts
from controller.graph.rowmap import IDENTITY, WHOLE, Classified, classify
from edgeflowd.core.ops import Const, In, OpCall, Prev, method_caller
from edgeflowd.core.slicing import WINDOW_TARGETS
from edgeflowd.errors import GraphError

__all__ = ["trace_model"]

_CANONICAL = frozenset({"F.interpolate", "F.conv_transpose2d", "F.adaptive_avg_pool2d", "F.adaptive_max_pool2d"})
"""Ops besides windows whose calls are rewritten to keywords (rules and slices read them)."""


@dataclass
class _Builder:
    gm: torch.fx.GraphModule
    values: dict[torch.fx.Node, Any]
    data: set[torch.fx.Node] = field(default_factory=set)  # tensor or tuple-of-tensor from input
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    local_ops: dict[str, Callable[..., Any]] = field(default_factory=dict)
    layer_of: dict[torch.fx.Node, str] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    alias: dict[torch.fx.Node, torch.fx.Node] = field(default_factory=dict)  # eval identities

    def real(self, node: torch.fx.Node) -> torch.fx.Node:
        """The node whose value ``node`` is (itself, unless it is an eval-mode identity)."""
        return self.alias.get(node, node)

    def users(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        """Who reads ``node``'s value, looking through the identities that pass it on (a shape
        query reads no value: the shape is specialised)."""
        out: list[torch.fx.Node] = []
        for user in node.users:
            if not shape_query(user):
                out += self.users(user) if user in self.alias else [user]
        return out

    # -- constants -------------------------------------------------------------------------
    def literal(self, node: torch.fx.Node) -> Any:
        value = self.values[node]
        base = str(node.target) if node.op == "get_attr" else node.name
        return self._constify(value, base)

    def _constify(self, value: Any, base: str) -> Any:
        if isinstance(value, torch.Tensor):
            self.tensors.setdefault(base, value.detach())
            return Const(base)
        if isinstance(value, torch.Size):
            return tuple(value)
        if isinstance(value, (tuple, list)):
            items = [self._constify(v, f"{base}.{i}") for i, v in enumerate(value)]
            return tuple(items) if isinstance(value, tuple) else items
        return value

    def map_args(self, value: Any, inputs: list[torch.fx.Node], prev: torch.fx.Node | None) -> Any:
        if isinstance(value, torch.fx.Node):
            value = self.real(value)
            if value in self.data:
                if value is prev:
                    return Prev()
                if value not in inputs:
                    inputs.append(value)
                return In(inputs.index(value))
            return self.literal(value)
        if isinstance(value, (tuple, list)):
            mapped = [self.map_args(v, inputs, prev) for v in value]
            return tuple(mapped) if isinstance(value, tuple) else mapped
        if isinstance(value, dict):
            return {k: self.map_args(v, inputs, prev) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(*(self.map_args(v, inputs, prev) for v in (value.start, value.stop, value.step)))
        return value

    # -- ops ---------------------------------------------------------------------------------
    def op_call(self, node: torch.fx.Node, inputs: list[torch.fx.Node], prev: torch.fx.Node | None = None) -> OpCall:
        args = self.map_args(node.args, inputs, prev)
        kwargs = self.map_args(dict(node.kwargs), inputs, prev)
        if kwargs.get("inplace") is True:
            kwargs["inplace"] = False
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            converted = module_call(module, str(node.target), args[0]) if len(args) == 1 and not kwargs else None
            if converted is None:
                target = f"local.module.{node.target}"
                self.local_ops[target] = module
                return OpCall(target, args, kwargs, node.name)
            self.tensors.update(converted.consts)
            target, args, kwargs = converted.target, converted.args, converted.kwargs
        elif node.op == "call_method":
            name = method_name(str(node.target))
            target = name or f"local.method.{node.target}"
            if name is None:
                self.local_ops[target] = method_caller(str(node.target))
        else:
            fn = node.target
            assert callable(fn)
            name = function_name(fn)
            target = name or f"local.{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn)}"
            if name is None:
                self.local_ops[target] = fn
        if target in WINDOW_TARGETS or target in _CANONICAL:
            convolution = target in ("F.conv2d", "F.conv_transpose2d")
            weight = kwargs.get("weight", args[1] if convolution and len(args) > 1 else None)
            shape = tuple(self.tensors[weight.name].shape) if isinstance(weight, Const) else None
            canonical = canonical_window(target, args, kwargs, shape)
            if canonical is not None:
                return OpCall(target, (), canonical, node.name)
        return OpCall(target, tuple(args), kwargs, node.name)

    def add_layer(self, name: str, first: OpCall, inputs: list[torch.fx.Node], out_value: torch.Tensor) -> None:
        in_shapes = [tuple(self.values[i].shape) if isinstance(self.values[i], torch.Tensor) else () for i in inputs]
        out_shape = tuple(out_value.shape)
        c = classify(first, in_shapes, out_shape, self.tensors)
        axis = 2
        if not c.splittable and len(in_shapes) == 1 and len(in_shapes[0]) >= 4:
            moved = pixel_axis(first, in_shapes[0], 2, out_shape, self.tensors)
            if moved is not None:  # a layout change that keeps rows apart: followed by the ops after it
                first = free_rows(first, out_shape, moved, self.tensors)
                c, axis = Classified(c.kind, (IDENTITY,), True), moved
        for producer in dict.fromkeys(self.layer_of[i] for i in inputs):
            self.settle(producer)
        flops = op_flops(first, in_shapes, out_shape, self.tensors)
        self.layers[name] = {
            "name": name,
            "kind": c.kind,
            "ops": [first],
            "inputs": [self.layer_of[i] for i in inputs],
            "rules": c.rules,
            "out_shape": out_shape,
            "splittable": c.splittable,
            "note": c.note,
            "flops": flops,
            "axis": axis,  # where the rows are in the output of the layer's last op (layout)
            "history": [(out_shape, flops)],  # each op's output shape and flops
            "clean": int(len(out_shape) >= 4 and axis == 2),  # ops up to the last result with rows at dim 2
        }

    def settle(self, name: str) -> None:
        """Before anything reads layer ``name``: if its per-pixel ops left the NCHW layout and did
        not come back, those after its last NCHW result become a layer of their own, run whole."""
        layer = self.layers[name]
        clean, ops = layer.get("clean", len(layer["ops"])), layer["ops"]
        if not layer["splittable"] or clean == len(ops):
            return
        if clean == 0:  # no op of it gives an NCHW map: the layer runs whole
            note = "per-pixel ops that do not return to the NCHW layout"
            layer.update(splittable=False, rules=(WHOLE,) * len(layer["inputs"]), note=note, ops=whole_consts(ops))
            return
        tail, history = ops[clean:], layer["history"]
        first = OpCall(tail[0].target, _reads_input(tail[0].args), _reads_input(tail[0].kwargs), tail[0].node)
        in_shape = history[clean - 1][0]
        self.layers[first.node] = {
            "name": first.node,
            "kind": classify(first, [in_shape], history[clean][0], self.tensors).kind,
            "ops": whole_consts([first, *tail[1:]]),
            "inputs": [name],
            "rules": (WHOLE,),
            "out_shape": layer["out_shape"],
            "splittable": False,
            "note": "per-pixel ops that do not return to the NCHW layout",
            "flops": sum(f for _, f in history[clean:]),
            "history": history[clean:],
        }
        layer.update(ops=ops[:clean], out_shape=in_shape, axis=2, history=history[:clean])
        layer["flops"] = sum(f for _, f in history[:clean])
        moved = {call.node for call in tail}
        for node, owner in self.layer_of.items():
            if owner == name and node.name in moved:
                self.layer_of[node] = first.node

    def try_fuse(self, node: torch.fx.Node, producers: list[torch.fx.Node]) -> bool:
        """Append a row-local, single-input op to its producer's layer when nothing else reads
        the producer: saves a message round per fused op without changing any result."""
        if len(producers) != 1:
            return False
        (u,) = producers
        if u.op == "placeholder" or len(self.users(u)) != 1 or u not in self.layer_of:
            return False
        layer = self.layers[self.layer_of[u]]
        if layer["ops"][-1].node != u.name:
            return False
        call = self.op_call(node, [], prev=u)
        value = self.values[node]
        if not isinstance(value, torch.Tensor):
            return False
        shape = tuple(value.shape)
        axis = layer.get("axis", 2)
        if layer["splittable"]:
            axis = pixel_axis(call, layer["out_shape"], axis, shape, self.tensors)
            if axis is None:
                return False
            call = free_rows(call, shape, axis, self.tensors)
        else:  # the producer runs whole anyway: fuse any op that would run whole on its own
            standalone: list[torch.fx.Node] = []
            alone = classify(self.op_call(node, standalone), [layer["out_shape"]], tuple(value.shape), self.tensors)
            if alone.splittable:
                return False
        folded = fold_batch_norm(layer["ops"][-1], call, self.tensors) if len(layer["ops"]) == 1 else None
        if folded is not None:  # the normalisation costs nothing any more
            layer["ops"][-1] = folded
        else:
            flops = op_flops(call, [layer["out_shape"]], shape, self.tensors)
            layer["ops"].append(call)
            layer["flops"] += flops
            layer["history"].append((shape, flops))
        layer.update(out_shape=shape, axis=axis)
        if len(shape) >= 4 and axis == 2:
            layer["clean"] = len(layer["ops"])
        self.layer_of[node] = layer["name"]
        return True

    def freeze(self) -> dict[str, Layer]:
        for name in list(self.layers):
            self.settle(name)
        out: dict[str, Layer] = {}
        for spec in self.layers.values():
            names = {n for call in spec["ops"] for n in call.const_names()}
            params = sum(self.tensors[n].nbytes for n in names)
            for call in spec["ops"]:
                module = self.local_ops.get(call.target)
                if isinstance(module, nn.Module):
                    params += sum(p.nbytes for p in module.parameters())
            out[spec["name"]] = Layer(
                name=spec["name"],
                kind=spec["kind"],
                ops=tuple(spec["ops"]),
                inputs=tuple(spec["inputs"]),
                rules=tuple(spec["rules"]),
                out_shape=spec["out_shape"],
                flops=spec["flops"],
                param_bytes=params,
                splittable=spec["splittable"],
                note=spec["note"],
            )
        return out


def _reads_input(value: Any) -> Any:
    """``value`` with the previous op's result read as the layer's input instead."""
    if isinstance(value, Prev):
        return In(0)
    if isinstance(value, (tuple, list)):
        items = [_reads_input(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {k: _reads_input(v) for k, v in value.items()}
    return value


def trace_model(model: nn.Module, example: torch.Tensor, name: str = "model") -> LayerGraph:
    """Layer graph of ``model`` for inputs shaped like ``example`` (shapes are specialised)."""
    model.eval()
    gm = symbolic_trace(model, name)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise GraphError(
            f"model {name!r} takes {len(placeholders)} inputs; EdgeFlow plans models with one input tensor"
        )
    recorder = Recorder(gm)
    with torch.no_grad():
        recorder.run(example)
    b = _Builder(gm, recorder.values)
    outputs: list[torch.fx.Node] = []
    output_is_tuple = False
    for node in gm.graph.nodes:
        value = b.values[node] if node.op != "output" else None
        if node.op == "placeholder":
            assert isinstance(value, torch.Tensor)
            b.data.add(node)
            b.layer_of[node] = node.name
            b.layers[node.name] = {
                "name": node.name,
                "kind": "input",
                "ops": [],
                "inputs": [],
                "rules": (),
                "out_shape": tuple(value.shape),
                "splittable": True,
                "note": "",
                "flops": 0.0,
            }
            continue
        if node.op == "output":
            result = node.args[0]
            output_is_tuple = isinstance(result, (tuple, list))
            outputs = list(result) if output_is_tuple else [result]
            continue
        producers = list(dict.fromkeys(b.real(a) for a in node.all_input_nodes if b.real(a) in b.data))
        given = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if given is not None and b.real(given) in b.data and eval_identity(node, b.gm):
            b.alias[node] = b.real(given)
            continue
        if node.op == "get_attr" or not producers:
            continue  # a constant: materialised where it is used
        if isinstance(value, torch.Tensor):
            b.data.add(node)
        elif is_tensors(value):
            b.data.add(node)
            if any(u.target is not operator.getitem for u in node.users):
                raise GraphError(
                    f"node {node.name} ({node.target}) returns several tensors and is used other than by indexing"
                )
            continue  # each getitem user becomes a layer that recomputes this op
        elif shape_query(node):
            continue  # specialised to the traced shape
        else:
            raise GraphError(
                f"node {node.name} ({node.op} {node.target}) computes a {type(value).__name__} from tensor data; "
                "EdgeFlow can specialise only shape queries (x.shape, x.size())"
            )
        if node.target is operator.getitem and producers[0] in b.data and is_tensors(b.values[producers[0]]):
            source = producers[0]
            inputs: list[torch.fx.Node] = []
            first = b.op_call(source, inputs)
            second = OpCall("operator.getitem", (Prev(), node.args[1]), {}, node.name)
            b.add_layer(node.name, first, inputs, value)
            layer = b.layers[node.name]
            layer["ops"].append(second)
            layer["history"].append((tuple(value.shape), 0.0))
            layer["clean"] = len(layer["ops"])  # the item is the layer's output, as classified
            b.layer_of[node] = node.name
            continue
        if b.try_fuse(node, producers):
            continue
        inputs = []
        first = b.op_call(node, inputs)
        b.layer_of[node] = node.name
        b.add_layer(node.name, first, inputs, value)
    for returned in outputs:  # a model output is read by the requester: its layer is settled too
        out = b.real(returned) if isinstance(returned, torch.fx.Node) else returned
        if not isinstance(out, torch.fx.Node) or out not in b.layer_of:
            raise GraphError(f"model {name!r} returns {out!r}, which is not a tensor computed from the input")
    layers = b.freeze()  # settles every layer first: layer_of is final only then
    results = tuple(b.layer_of[b.real(o)] for o in outputs)
    epilogue, delivered = split_epilogue(layers, results)
    moved = {layer.name for layer in epilogue}
    return LayerGraph(
        model=name,
        input_shape=tuple(example.shape),
        layers={n: layer for n, layer in layers.items() if n not in moved},
        outputs=delivered,
        output_is_tuple=output_is_tuple,
        tensors=b.tensors,
        local_ops=b.local_ops,
        epilogue=tuple(epilogue),
        results=results if epilogue or delivered != results else (),  # a repeated output too
    )
