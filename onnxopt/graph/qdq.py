"""QuantizeLinear / DequantizeLinear surgery: the graph edits behind the quantize pass.

Passes decide ranges and parameters; these functions put them into the graph: a Q/DQ pair on an
activation (its readers then read the dequantized value), and a constant weight or bias replaced
by its integer form behind a DequantizeLinear.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .core import Graph, Node


def depthwise(group: int, weight_shape: Sequence[int]) -> bool:
    """One input and one output channel per group: onnxruntime's depthwise kernels widen u8 and s8 to
    int32 before multiplying, so they never saturate (measured: a depthwise 3x3 of 255s by 127s is
    exact on AVX2; with a channel multiplier of 2 the conv takes the GEMM path and saturates)."""
    return group > 1 and len(weight_shape) > 1 and weight_shape[1] == 1 and weight_shape[0] == group


def worst_same_sign_pair(rows: np.ndarray) -> np.ndarray:
    """Per row (one output channel's weights): the largest |w1| + |w2| over two weights of the same
    sign. x86 without VNNI adds the products of two weights of a channel with u8 activations (never
    negative) in int16 (VPMADDUBSW): only a same-sign pair can leave it, which pair depends on the
    kernel's packing, so the worst one counts. Rows of one weight: that weight."""
    rows = np.asarray(rows)
    if rows.shape[1] < 2:
        return np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(rows.shape[0], rows.dtype)
    return np.maximum(*[(-np.partition(-np.maximum(sign * rows, 0), 1, axis=1)[:, :2]).sum(axis=1) for sign in (1, -1)])


def _params(graph: Graph, hint: str, scale: np.ndarray, zero_point: np.ndarray) -> tuple[str, str]:
    return (graph.add_constant(f"{hint}_scale", np.asarray(scale, np.float32)),
            graph.add_constant(f"{hint}_zero_point", np.asarray(zero_point)))


def insert_qdq(graph: Graph, tensor: str, scale: np.ndarray, zero_point: np.ndarray) -> str:
    """Quantize and dequantize `tensor` once; every reader reads the dequantized tensor. A graph
    output keeps its name and becomes the dequantized value, so the op that produced it is followed
    by its Q alone (what onnxruntime needs to fuse it). Returns the dequantized tensor's name."""
    scale_name, zp_name = _params(graph, tensor, scale, zero_point)
    if graph.is_graph_output(tensor) and graph.producer(tensor) is not None:
        prod = graph.producer(tensor)
        source = graph.unique_name(f"{tensor}_float")
        graph.set_output(prod, list(prod.outputs).index(tensor), source)
        q = graph.add_node("QuantizeLinear", [source, scale_name, zp_name], 1, name=f"{tensor}_QuantizeLinear")
        graph.add_node("DequantizeLinear", [q.outputs[0], scale_name, zp_name], [tensor],
                       name=f"{tensor}_DequantizeLinear")
        return tensor  # its readers in the graph now read the dequantized value too
    readers = list(graph.consumers(tensor))
    q = graph.add_node("QuantizeLinear", [tensor, scale_name, zp_name], 1, name=f"{tensor}_QuantizeLinear")
    dq = graph.add_node("DequantizeLinear", [q.outputs[0], scale_name, zp_name], 1,
                        name=f"{tensor}_DequantizeLinear")
    out = dq.outputs[0]
    for n in readers:
        for i, t in enumerate(n.inputs):
            if t == tensor:
                graph.set_input(n, i, out)
    return out


def dequantized_constant(graph: Graph, node: Node, index: int, values: np.ndarray, scale: np.ndarray,
                         zero_point: np.ndarray, axis: int | None = None) -> None:
    """Input `index` of `node` becomes DequantizeLinear(values) (int8 weights, int32 bias), per
    channel along `axis` when `scale` is a vector. Other readers of the old constant keep it."""
    hint = node.input(index) or f"{node.name or node.op}_input{index}"
    data = graph.add_constant(f"{hint}_quantized", values)
    scale_name, zp_name = _params(graph, hint, scale, zero_point)
    attrs = {"axis": axis} if axis is not None and np.ndim(scale) == 1 else {}
    dq = graph.add_node("DequantizeLinear", [data, scale_name, zp_name], 1, name=f"{hint}_DequantizeLinear", **attrs)
    old = node.input(index)
    graph.set_input(node, index, dq.outputs[0])
    if graph.is_constant(old) and not graph.is_used(old) and not graph.is_graph_input(old):
        graph.remove_constant(old)  # the float weights are gone from the file, not just unused
