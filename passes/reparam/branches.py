"""Find sums of linear branches in a graph: the Add/Sum tree, its terms, and what each term computes.

A term of a sum can often be read several ways: `BN(Conv(x))` is a conv branch of `x`, and also an
identity-BN branch of `Conv(x)`'s output, and the term itself is the identity branch of itself.
`readings()` lists every reading; the pass groups the terms by the tensor they read and merges the
largest group.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from onnxopt.graph.core import Graph, Node

from ..fold_bn import _bn_affine, _per_channel
from .kernels import Decline, Kernel, average, compose, diagonal

SUM_OPS = ("Add", "Sum")


@dataclasses.dataclass
class SumTree:
    root: Node
    inner: list[Node]                # every Add/Sum of the tree, root included
    terms: list[tuple[str, Node]]    # (tensor, the tree node that adds it), in graph order


@dataclasses.dataclass
class Branch:
    """One reading of a term: `kernel` applied to `source`, computed by `nodes`."""

    term: int                        # index into SumTree.terms
    source: str
    kind: str                        # identity | bn | scale | conv | avgpool | 1x1-kxk
    kernel: Kernel | None
    nodes: tuple[Node, ...] = ()     # removed when the branch is merged
    problem: str | None = None       # why this reading cannot be merged (None: it can)

    @property
    def has_conv(self) -> bool:
        return any(n.op == "Conv" for n in self.nodes)


def _inner_input(graph: Graph, node: Node, tensor: str) -> Node | None:
    """The Add/Sum producing `tensor` if it belongs to `node`'s tree (read only by `node`, once)."""
    producer = graph.producer(tensor)
    if producer is None or producer.op not in SUM_OPS or producer.domain not in ("", "ai.onnx"):
        return None
    if graph.sole_consumer(tensor) is not node or node.inputs.count(tensor) != 1:
        return None
    return producer


def sum_trees(graph: Graph) -> list[Node]:
    """The roots of maximal Add/Sum trees, in topological order."""
    roots = []
    for node in graph.topological_nodes():
        if node.op not in SUM_OPS or node.domain not in ("", "ai.onnx"):
            continue
        reader = graph.sole_consumer(node.outputs[0])
        if reader is not None and reader.op in SUM_OPS and _inner_input(graph, reader, node.outputs[0]):
            continue
        roots.append(node)
    return roots


def expand(graph: Graph, root: Node) -> SumTree:
    inner, terms = [], []

    def visit(node: Node) -> None:
        inner.append(node)
        for t in node.inputs:
            child = _inner_input(graph, node, t) if t else None
            if child is not None:
                visit(child)
            elif t:
                terms.append((t, node))

    visit(root)
    return SumTree(root, inner, terms)


# -- readings of one term ------------------------------------------------------------------------
def _ints(node: Node, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = node.attr(key)
    return tuple(int(v) for v in value) if value else default


def _pads(graph: Graph, node: Node, size: tuple[int, ...], strides, dilations) -> tuple[int, ...]:
    """Explicit pads of a Conv/AveragePool, resolving auto_pad with the static input shape."""
    rank = len(size)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return _ints(node, "pads", (0,) * (2 * rank))
    if auto == "VALID":
        return (0,) * (2 * rank)
    shape = graph.static_shape(node.input(0))
    if shape is None:
        raise Decline(f"{node.label} uses auto_pad={auto} on an input of unknown shape")
    begins, ends = [], []
    for n, k, s, d in zip(shape[2:], size, strides, dilations):
        total = (-(-n // s) - 1) * s + d * (k - 1) + 1 - n
        if total < 0:  # the spec clamps this to 0, onnxruntime shifts the window: they disagree
            raise Decline(f"{node.label} uses auto_pad={auto} with a stride larger than its window; "
                          "write explicit pads")
        small = total // 2
        begins.append(total - small if auto == "SAME_LOWER" else small)
        ends.append(small if auto == "SAME_LOWER" else total - small)
    return tuple(begins + ends)


def conv_kernel(graph: Graph, conv: Node) -> Kernel:
    """A Conv node as a Kernel; Decline when its weight or bias is not a constant."""
    w = graph.constant(conv.input(1))
    if w is None or w.dtype.kind != "f":
        raise Decline(f"the weight of {conv.label} is not a float constant")
    b = graph.constant(conv.input(2)) if conv.input(2) else np.zeros(w.shape[0], w.dtype)
    if b is None:
        raise Decline(f"the bias of {conv.label} is not a constant")
    rank = w.ndim - 2
    strides = _ints(conv, "strides", (1,) * rank)
    dilations = _ints(conv, "dilations", (1,) * rank)
    pads = _pads(graph, conv, tuple(w.shape[2:]), strides, dilations)
    return Kernel(w.astype(np.float64), b.astype(np.float64).ravel(), int(conv.attr("group", 1)),
                  strides, dilations, pads)


def _pool_kernel(graph: Graph, pool: Node, channels: int) -> Kernel:
    size = _ints(pool, "kernel_shape", ())
    rank = len(size)
    strides = _ints(pool, "strides", (1,) * rank)
    dilations = _ints(pool, "dilations", (1,) * rank)
    pads = _pads(graph, pool, size, strides, dilations)
    if int(pool.attr("ceil_mode", 0)):
        raise Decline(f"{pool.label} uses ceil_mode, whose last windows are partial")
    if any(pads) and not int(pool.attr("count_include_pad", 0)):
        raise Decline(f"{pool.label} pads without count_include_pad: its border windows average "
                      "fewer values, which no convolution does")
    return average(channels, size, strides, pads, dilations)


def _scale_vector(graph: Graph, mul: Node, channels: int, rank: int) -> tuple[str, np.ndarray] | None:
    """(data input, per-channel factors) of a Mul by a per-channel constant, else None."""
    for data, const in ((0, 1), (1, 0)):
        value = graph.constant(mul.input(const))
        if value is not None and value.dtype.kind == "f" and graph.constant(mul.input(data)) is None:
            vector = _per_channel(value, rank, 1, channels)
            if vector is not None:
                return mul.input(data), vector
    return None


def _rank(graph: Graph, tensor: str) -> int | None:
    shape = graph.shape(tensor)
    return len(shape) if shape is not None else None


def _stage(graph: Graph, node: Node, channels: int, rank: int) -> tuple[str, Kernel] | None:
    """(source, kernel) if `node` is a linear stage on one tensor: Conv, AveragePool, a
    per-channel Mul, or a BN of its input. Raises Decline when it is one that cannot be merged."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op == "Conv":
        return node.input(0), conv_kernel(graph, node)
    if node.op == "AveragePool":
        return node.input(0), _pool_kernel(graph, node, channels)
    if node.op == "Mul":
        found = _scale_vector(graph, node, channels, rank + 2)
        if found is not None:
            return found[0], diagonal(found[1], rank)
    if node.op == "BatchNormalization":
        affine = _bn_affine(graph, node)
        if isinstance(affine, str):
            raise Decline(f"{node.label}: {affine}")
        if affine.scale.size != channels:
            return None
        return node.input(0), diagonal(affine.scale, rank, affine.shift)
    return None


def readings(graph: Graph, tree: SumTree, index: int) -> list[Branch]:
    """Every way term `index` of `tree` is a linear branch of some tensor."""
    term, reader = tree.terms[index]
    shape = graph.static_shape(term)
    found = [Branch(index, term, "identity", None)]
    if shape is None or len(shape) < 3 or graph.dtype(term) not in _FLOAT_TYPES:
        return found
    channels, rank = shape[1], len(shape) - 2
    identity = diagonal(np.ones(channels), rank)
    found[0].kernel = identity
    leaf_problem = graph.reader_conflict(term, reader)

    # Walk up from the term: each linear stage gives one more reading, of the stage's input.
    # Stages are BN-after-something (affine) or a Conv/AveragePool/Mul, optionally with a BN on
    # top, optionally fed by a 1x1 Conv (+BN) whose output goes nowhere else (DBB's 1x1 -> kxk).
    chain: list[Node] = []
    kernel, tensor, below = identity, term, reader
    problem = leaf_problem
    for _depth in range(4):
        node = graph.producer(tensor)
        if node is None or graph.static_shape(tensor) is None:
            break
        if tensor != term:
            problem = problem or graph.reader_conflict(tensor, below)
        try:
            stage = _stage(graph, node, graph.static_shape(tensor)[1], rank)
        except Decline as why:
            if node.op in _KIND:
                found.append(Branch(index, node.input(0), _kind([n.op for n in chain] + [node.op]), None,
                                    tuple(chain) + (node,), problem or str(why)))
            break
        if stage is None:
            break
        source, step = stage
        chain.append(node)
        kinds = [n.op for n in chain]
        try:
            kernel = step if kernel is identity else compose_after(step, kernel)
        except Decline as why:
            found.append(Branch(index, source, _kind(kinds), None, tuple(chain), problem or str(why)))
            break
        found.append(Branch(index, source, _kind(kinds), kernel, tuple(chain), problem))
        tensor, below = source, node
        if sum(op in ("Conv", "AveragePool") for op in kinds) >= 2:
            break  # two spatial stages: DBB's 1x1 -> kxk is as deep as it goes
    return found


def compose_after(first: Kernel, then: Kernel) -> Kernel:
    """`then` applied after `first`. A per-channel affine `then` (a BN) folds into anything; a
    spatial `then` composes only with a 1x1 first stage (kernels.compose)."""
    if then.group is None and set(then.size) == {1} and set(then.strides) == {1} and not any(then.pads):
        scale = then.weight.reshape(-1)
        return first.then_affine(scale, then.bias)
    return compose(first, then)


def _kind(ops: list[str]) -> str:
    """Name a chain read from the term upward, e.g. [BN, Conv, BN, Conv] -> '1x1-kxk'."""
    spatial = [op for op in ops if op in ("Conv", "AveragePool")]
    if len(spatial) >= 2:
        return "1x1-kxk" if spatial[0] == "Conv" else "1x1-avgpool"
    if spatial:
        return _KIND[spatial[0]]
    if "Mul" in ops:
        return "scale"
    return "bn"


_FLOAT_TYPES = (1, 10, 11, 16)  # float, float16, double, bfloat16
_KIND = {"Conv": "conv", "AveragePool": "avgpool", "BatchNormalization": "bn"}
