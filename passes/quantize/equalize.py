"""Cross-layer equalization: Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction".

For two convs in a row with only a positively homogeneous activation between them (Relu, LeakyRelu,
or none), f(s x) = s f(x) for s > 0: dividing output channel i of the first by s_i and multiplying
input channel i of the second by s_i changes nothing. Choosing s_i = sqrt(r1_i / r2_i), with r1_i
the range of the first layer's channel-i filter and r2_i that of the second layer's channel-i
column, gives both the same range sqrt(r1_i r2_i): a depthwise filter with a tiny range no longer
shares a per-tensor scale with one a hundred times larger, and per-channel scales waste less.
Relu6 (Clip 0..6) is not homogeneous, so pairs across it are left alone and reported.
"""
from __future__ import annotations

import numpy as np

from onnxopt.graph.core import Graph, Node
from onnxopt.pipeline.contract import PassResult

HOMOGENEOUS = {"Relu", "LeakyRelu"}
_ROUNDS = 20


def _conv_kind(graph: Graph, node: Node) -> str | None:
    """'dense' or 'depthwise' for a Conv whose weights and bias are constants, else None."""
    if node.op != "Conv" or len(node.inputs) < 2 or not graph.is_constant(node.input(1)):
        return None
    if any(t and graph.reader_conflict(t, node) is not None for t in node.inputs[1:3]):
        return None  # weights shared with another layer: scaling them here would change that one
    if len(node.inputs) > 2 and node.input(2) and not graph.is_constant(node.input(2)):
        return None
    w = graph.constant_spec(node.input(1))
    group = int(node.attr("group", 1))
    if group == 1:
        return "dense"
    if w is not None and group == w[0][0] and w[0][1] == 1:
        return "depthwise"
    return None


def find_pairs(graph: Graph) -> tuple[list[tuple[Node, Node]], list[str]]:
    """(first, second) conv pairs joined by a private tensor through at most one homogeneous
    activation; and the pairs declined because a non-homogeneous activation sits between them."""
    pairs, declined = [], []
    for first in graph.topological_nodes():
        if _conv_kind(graph, first) is None:
            continue
        t = first.outputs[0]
        readers = graph.consumers(t)
        if graph.is_graph_output(t) or len(readers) != 1:
            continue
        mid = readers[0]
        if mid.op in HOMOGENEOUS or mid.op == "Clip":
            out = mid.outputs[0]
            if graph.is_graph_output(out) or len(graph.consumers(out)) != 1:
                continue
            second = graph.consumers(out)[0]
            if _conv_kind(graph, second) is None or second.input(0) != out:
                continue
            if mid.op == "Clip":
                declined.append(f"{first.label} -> {second.label}: Clip (Relu6) between them is not scale-invariant")
                continue
        else:
            second = mid
            if _conv_kind(graph, second) is None or second.input(0) != t:
                continue
        pairs.append((first, second))
    return pairs, declined


def _ranges(w: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1).max(axis=1)


def equalize(graph: Graph, result: PassResult) -> int:
    """Equalize every pair in place (a few rounds, since a layer may sit in two pairs); returns the
    number of pairs."""
    pairs, declined = find_pairs(graph)
    for why in declined:
        result.notes.append(f"cle: {why}")
    if not pairs:
        result.notes.append("cle: no conv pair with only Relu (or nothing) between them")
        return 0
    weights = {n.input(1): np.asarray(graph.constant(n.input(1)), np.float64) for p in pairs for n in p}
    biases = {n.input(2): np.asarray(graph.constant(n.input(2)), np.float64)
              for p in pairs for n in p if len(n.inputs) > 2 and n.input(2)}
    before = _spread(pairs, weights)
    for _ in range(_ROUNDS):
        for first, second in pairs:
            w1, w2 = weights[first.input(1)], weights[second.input(1)]
            depthwise = _conv_kind(graph, second) == "depthwise"
            r1 = _ranges(w1, 0)
            r2 = _ranges(w2, 0 if depthwise else 1)
            if r1.shape != r2.shape:
                continue
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1)), 1.0)
            s = np.clip(s, 1e-4, 1e4)
            shape1 = (-1,) + (1,) * (w1.ndim - 1)
            weights[first.input(1)] = w1 / s.reshape(shape1)
            if len(first.inputs) > 2 and first.input(2):
                biases[first.input(2)] = biases[first.input(2)] / s
            if depthwise:
                weights[second.input(1)] = w2 * s.reshape(shape1)
            else:
                weights[second.input(1)] = w2 * s.reshape((1, -1) + (1,) * (w2.ndim - 2))
    nodes = {n.id: n for p in pairs for n in p}
    for node in nodes.values():
        w_name, b_name = node.input(1), node.input(2) if len(node.inputs) > 2 else ""
        graph.set_input_constant(node, 1, weights[w_name].astype(np.float32))
        if b_name and b_name in biases:
            graph.set_input_constant(node, 2, biases[b_name].astype(np.float32))
    after = _spread(pairs, weights)
    result.count("conv pairs equalized", len(pairs))
    result.notes.append(f"cle: {len(pairs)} conv pairs equalized; median ratio of largest to smallest channel "
                        f"range per layer {before:.1f} -> {after:.1f}")
    return len(pairs)


def _spread(pairs, weights) -> float:
    """Median over layers of max/min channel range: what per-tensor quantization suffers from."""
    ratios = []
    for name in {n.input(1) for p in pairs for n in p}:
        r = _ranges(weights[name], 0)
        r = r[r > 0]
        if r.size:
            ratios.append(float(r.max() / r.min()))
    return float(np.median(ratios)) if ratios else 1.0
