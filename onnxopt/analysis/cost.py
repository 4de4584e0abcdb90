"""Static cost of a model: parameter count, multiply-accumulates, op histogram, weight bytes.

MACs are counted for the ops that dominate CNN inference (Conv, ConvTranspose, Gemm, MatMul) from
shapes inferred with the model's static input shapes. They are a size measure, not a latency
prediction: measure latency with `onnxopt bench`.
"""
from __future__ import annotations

import collections
import dataclasses
import math

import onnx

from ..graph.core import Graph, Node

_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class ModelStats:
    nodes: int
    ops: dict[str, int]
    params: int
    weight_bytes: int
    macs: int | None  # None when shapes are unknown for some MAC op
    opset: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def node_macs(graph: Graph, node: Node) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul node, None if shapes are unknown."""
    if node.op in ("Conv", "ConvTranspose"):
        w = graph.static_shape(node.input(1))
        x = graph.static_shape(node.input(0))
        y = graph.static_shape(node.outputs[0])
        if w is None or y is None or x is None:
            return None
        kernel = math.prod(w[2:])
        if node.op == "Conv":  # each output element sums Cin/group * kernel products
            return math.prod(y) * w[1] * kernel
        # ConvTranspose: each input element scatters into Cout/group * kernel outputs
        return math.prod(x) * w[1] * kernel
    if node.op == "Gemm":
        a = graph.static_shape(node.input(0))
        y = graph.static_shape(node.outputs[0])
        if a is None or y is None or len(a) != 2:
            return None
        k = a[0] if node.attr("transA", 0) else a[1]
        return math.prod(y) * k
    if node.op == "MatMul":
        a = graph.static_shape(node.input(0))
        y = graph.static_shape(node.outputs[0])
        if a is None or y is None:
            return None
        return math.prod(y) * a[-1]
    return 0


def model_stats(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
                graph: Graph | None = None) -> ModelStats:
    graph = graph or Graph(model, input_shapes=input_shapes)
    ops = collections.Counter(n.op for n in graph.nodes())
    read = {t for n in graph.nodes() for t in n.inputs if t}
    params = weight_bytes = 0
    for name in graph.constant_names():
        if name not in read:
            continue
        shape, dtype = graph.constant_spec(name)
        size = math.prod(shape)
        weight_bytes += size * dtype.itemsize
        # integer constants count as parameters only when they look like weights (quantized), not
        # like shapes or axes
        if dtype.kind == "f" or dtype.kind in "iu" and size > 16:
            params += size
    macs: int | None = 0
    for n in graph.nodes():
        if n.op in _MAC_OPS:
            m = node_macs(graph, n)
            macs = None if m is None or macs is None else macs + m
    return ModelStats(nodes=len(graph), ops=dict(sorted(ops.items())), params=params,
                      weight_bytes=weight_bytes, macs=macs, opset=graph.opset)
