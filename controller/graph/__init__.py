"""Layer graph of a traced model: layers, row maps, FLOPs."""

from controller.graph.layers import Layer, LayerGraph
from controller.graph.trace import trace_model

__all__ = ["Layer", "LayerGraph", "trace_model"]
