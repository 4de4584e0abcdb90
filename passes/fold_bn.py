"""Fold BatchNormalization, and per-channel constant Mul/Add/Sub/Div, into the preceding linear op.

In inference mode BN is a per-channel affine map of its input z:

    y = k * z + c,   k = gamma / sqrt(var + eps),   c = beta - mean * k

and so are Mul/Add/Sub/Div by a per-channel constant. When z is the output of a Conv,
ConvTranspose, Gemm or MatMul with constant weights, the map folds into them numerically
(Ioffe & Szegedy 2015 describe BN; folding it is standard deployment practice):

    W' = W * k (on the output-channel axis),   b' = b * k + c

computed in float64 and stored in the weights' dtype. No runtime subgraph is ever inserted.

A BN that reads a Conv output through a channel-preserving reshape (Conv -> Squeeze -> BN on
[N, C, T]) folds into that Conv too. The pass declines, with the reason, when the producer's output
has another reader or is a graph output, a weight is not constant or is shared with another node, or
BN is in training mode. A lone BN with nothing to fold into stays (or, with lone-bn=affine, becomes a
Mul and an Add).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from onnxopt.graph.core import Graph, Node
from onnxopt.pipeline.contract import Pass, PassContext, PassResult
from onnxopt.pipeline.options import option
from onnxopt.pipeline.registry import register_pass

_AFFINE_OPS = ("Mul", "Add", "Sub", "Div")
_RESHAPES = ("Squeeze", "Unsqueeze", "Reshape", "Flatten")
_SHAPE_READERS = ("Shape", "Size")


@dataclasses.dataclass
class _Affine:
    """y = scale * z + shift along one channel axis of z."""

    scale: np.ndarray  # float64 [C]
    shift: np.ndarray  # float64 [C]


@dataclasses.dataclass
class _Target:
    """A linear producer whose output channels can absorb a per-channel affine map."""

    node: Node
    channels: int
    channel_axis: int  # of the producer's output, counted from the front (-1 for MatMul's last axis)


def _float_constant(graph: Graph, name: str) -> np.ndarray | None:
    value = graph.constant(name) if name else None
    return value if value is not None and value.dtype.kind == "f" else None


def _bn_affine(graph: Graph, bn: Node) -> _Affine | str:
    if int(bn.attr("training_mode", 0)):
        return "BatchNormalization is in training mode"
    if any(graph.is_used(t) for t in bn.outputs[1:] if t):
        return "BatchNormalization's running-statistics outputs are used"
    params = [_float_constant(graph, bn.input(i)) for i in range(1, 5)]
    if any(p is None for p in params):
        return "BatchNormalization parameters are not constant"
    gamma, beta, mean, var = (p.astype(np.float64).ravel() for p in params)
    if not (gamma.size == beta.size == mean.size == var.size):
        return "BatchNormalization parameters have different lengths"
    k = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return _Affine(k, beta - mean * k)


def _target(graph: Graph, producer: Node | None) -> _Target | str:
    """Can `producer` absorb an affine map on its output channels? Returns the target or why not."""
    if producer is None:
        return "its input is a graph input or constant"
    op = producer.op
    if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return f"its input comes from {producer.label}, which cannot absorb a scale"
    w_name = producer.input(1)
    w = _float_constant(graph, w_name)
    if w is None:
        return f"the weight of {producer.label} is not a float constant"
    if graph.is_graph_output(w_name):
        return f"the weight '{w_name}' of {producer.label} is also a graph output"
    # Readers of the weight's shape alone (exporters emit Shape(weight)) see no change from a fold.
    # A shared bias is no obstacle: the fold gives this node a bias of its own.
    others = [c for c in graph.consumers(w_name) if c is not producer and c.op not in _SHAPE_READERS]
    if others:
        return f"the weight '{w_name}' of {producer.label} is shared with {others[0].label}"
    if producer.input(2) and _float_constant(graph, producer.input(2)) is None:
        return f"the bias of {producer.label} is not a float constant"
    if op == "Conv":
        return _Target(producer, w.shape[0], 1)
    if op == "ConvTranspose":
        return _Target(producer, w.shape[1] * int(producer.attr("group", 1)), 1)
    if op == "Gemm":
        if w.ndim != 2:
            return f"the weight of {producer.label} is not 2-D"
        return _Target(producer, w.shape[0] if producer.attr("transB", 0) else w.shape[1], 1)
    if w.ndim != 2:
        return f"the weight of {producer.label} is not 2-D"
    return _Target(producer, w.shape[1], -1)


def _apply(graph: Graph, target: _Target, affine: _Affine) -> None:
    node, k, c = target.node, affine.scale, affine.shift
    w_name = node.input(1)
    w = graph.constant(w_name)
    dtype = w.dtype
    w64 = w.astype(np.float64)
    if node.op == "Conv":
        w_new = w64 * k.reshape((-1,) + (1,) * (w.ndim - 1))
    elif node.op == "ConvTranspose":  # weight is [Cin, Cout/group, ...]: output channels are per group
        group = int(node.attr("group", 1))
        per = w.shape[1]
        grouped = w64.reshape((group, w.shape[0] // group) + w.shape[1:])
        w_new = (grouped * k.reshape((group, 1, per) + (1,) * (w.ndim - 2))).reshape(w.shape)
    elif node.op == "Gemm":
        w_new = w64 * (k[:, None] if node.attr("transB", 0) else k[None, :])
    else:  # MatMul: output channels are the last axis, i.e. W's columns
        w_new = w64 * k[None, :]
    graph.set_constant(w_name, w_new.astype(dtype))

    if node.op == "Gemm":
        # y = alpha*A*B + beta*C  ->  alpha*A*(B k) + 1*(beta*C*k + c)
        beta = float(node.attr("beta", 1.0))
        old = graph.constant(node.input(2)) if node.input(2) else None
        bias = c if old is None else beta * old.astype(np.float64) * k + c
        _set_bias(graph, node, 2, bias.astype(dtype))
        if beta != 1.0:
            graph.set_attr(node, "beta", 1.0)
        return
    if node.op == "MatMul":
        if np.any(c != 0):  # MatMul has no bias: it becomes the equivalent Gemm (rank 2 checked)
            gemm = graph.add_node("Gemm", [node.input(0), w_name], 1, name=node.name or "Gemm")
            _set_bias(graph, gemm, 2, c.astype(dtype))
            out = node.outputs[0]
            graph.remove(node, safe=False)
            graph.set_output(gemm, 0, out)
        return
    old = graph.constant(node.input(2)) if node.input(2) else None
    bias = c if old is None else old.astype(np.float64) * k + c
    _set_bias(graph, node, 2, bias.astype(dtype))


def _set_bias(graph: Graph, node: Node, index: int, value: np.ndarray) -> None:
    name = node.input(index)
    if name and graph.sole_consumer(name) is node:
        graph.set_constant(name, value)
    else:
        graph.set_input(node, index, graph.add_constant(f"{node.name or node.outputs[0]}.bias", value))


def _per_channel(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """The constant as a [channels] vector if it broadcasts along `axis` only, else None."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    axis = axis % rank
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()


@register_pass
class FoldBatchNorm(Pass):
    name = "fold-bn"
    summary = "fold BatchNormalization and per-channel Mul/Add into the preceding Conv, ConvTranspose, Gemm or MatMul"
    exact = True
    stage = 10

    @dataclasses.dataclass(frozen=True)
    class Options:
        affine: bool = option(True, "also fold per-channel constant Mul/Add/Sub/Div that follow a linear op")
        lone_bn: Literal["keep", "affine"] = option(
            "keep", "a BN with nothing to fold into: keep it, or rewrite it as Mul+Add")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        for node in graph.nodes():
            if not node.alive:
                continue
            if node.op == "BatchNormalization":
                self._fold_bn(graph, node, result, ctx)
            elif node.op in _AFFINE_OPS and self.options.affine:
                self._fold_affine(graph, node, result, ctx)
        result.changed = any(result.stats.values())
        return result

    # -- BatchNormalization ------------------------------------------------------------------
    def _fold_bn(self, graph: Graph, bn: Node, result: PassResult, ctx: PassContext) -> None:
        affine = _bn_affine(graph, bn)
        if isinstance(affine, str):
            result.skip(bn, affine)
            return
        z = bn.input(0)
        producer = graph.producer(z)
        via = None
        if producer is not None and producer.op in _RESHAPES:
            via, producer = producer, graph.producer(producer.input(0))
        target = _target(graph, producer)
        if isinstance(target, str):
            if via is not None:
                target = f"reads {via.label}, whose input cannot absorb a scale"
            self._lone_bn(graph, bn, affine, target, result, ctx)
            return
        reason = self._exclusive(graph, target.node.outputs[0], via or bn)
        if reason is None and via is not None:
            reason = self._exclusive(graph, z, bn) or self._keeps_channels(graph, via, target)
        if reason is None and target.node.op == "MatMul" and len(graph.shape(z) or ()) != 2:
            reason = "BN after a MatMul whose output is not 2-D normalizes another axis"
        if reason is None and target.channels != affine.scale.size:
            reason = f"BN has {affine.scale.size} channels, {target.node.label} produces {target.channels}"
        if reason is not None:
            result.skip(bn, reason)
            return
        if not ctx.region(bn.outputs[0], bn.label):
            return
        _apply(graph, target, affine)
        graph.bypass(bn)
        result.count("bn_folded")
        result.count(f"into_{target.node.op if target.node.alive else 'Gemm'}")

    @staticmethod
    def _exclusive(graph: Graph, tensor: str, reader: Node) -> str | None:
        conflict = graph.reader_conflict(tensor, reader)
        if conflict is None:
            return None
        what = "change it" if "graph output" in conflict else "change what it sees"
        return f"{conflict}; folding would {what}"

    @staticmethod
    def _keeps_channels(graph: Graph, reshape: Node, target: _Target) -> str | None:
        """Does `reshape` keep axes 0 (batch) and 1 (channels) in place for every batch size?
        Shapes are inferred at one batch size, so the op's own arguments must show it too."""
        before, after = graph.static_shape(reshape.input(0)), graph.static_shape(reshape.outputs[0])
        if before is None or after is None:
            return f"shapes around {reshape.label} are unknown"
        moved = f"{reshape.label} does not keep the channel axis in place ({list(before)} -> {list(after)})"
        if len(before) < 2 or len(after) < 2 or before[:2] != after[:2] or target.channel_axis != 1:
            return moved
        if reshape.op in ("Squeeze", "Unsqueeze"):
            axes = graph.constant(reshape.input(1)) if reshape.input(1) else reshape.attr("axes")
            rank = len(before) if reshape.op == "Squeeze" else len(after)
            if axes is None or any(int(a) % rank in (0, 1) for a in np.ravel(axes)):
                return moved
        elif reshape.op == "Flatten":
            if int(reshape.attr("axis", 1)) != 1:
                return moved
        else:  # Reshape: the batch entry must follow the batch (0 copies it, -1 infers it)
            shape = graph.constant(reshape.input(1))
            if shape is None or shape.size < 2 or shape[0] not in (0, -1) or shape[1] not in (0, before[1]) \
                    or (shape[0] == -1 and np.any(shape[1:] < 0)) or int(reshape.attr("allowzero", 0)):
                return f"{moved[:-1]}; its target shape must start with 0 or -1 and keep the channel count)"
        return None

    def _lone_bn(self, graph: Graph, bn: Node, affine: _Affine, why: str, result: PassResult, ctx: PassContext) -> None:
        rank = len(graph.shape(bn.input(0)) or ())
        if self.options.lone_bn != "affine" or rank < 2:
            in_sum = any(c.op in ("Add", "Sum") for c in graph.consumers(bn.outputs[0]))
            hint = "; it is a branch of a sum, which reparam merges" if in_sum else ""
            result.skip(bn, f"nothing to fold into: {why}{hint}")
            return
        if not ctx.region(bn.outputs[0], bn.label):
            return
        dtype = graph.constant(bn.input(1)).dtype
        shape = (-1,) + (1,) * (rank - 2)
        hint = bn.name or "bn"
        scale = graph.add_constant(f"{hint}.scale", affine.scale.reshape(shape).astype(dtype))
        shift = graph.add_constant(f"{hint}.shift", affine.shift.reshape(shape).astype(dtype))
        x, y = bn.input(0), bn.outputs[0]
        graph.remove(bn, safe=False)
        mul = graph.add_node("Mul", [x, scale], 1, name=f"{hint}/Mul")
        graph.add_node("Add", [mul.outputs[0], shift], [y], name=f"{hint}/Add")
        result.count("bn_to_affine")

    # -- per-channel Mul / Add / Sub / Div ---------------------------------------------------
    def _fold_affine(self, graph: Graph, node: Node, result: PassResult, ctx: PassContext) -> None:
        const_at = [i for i in (0, 1) if graph.constant(node.input(i)) is not None]
        if len(const_at) != 1 or (node.op in ("Sub", "Div") and const_at != [1]):
            return
        data = node.input(1 - const_at[0])
        target = _target(graph, graph.producer(data))
        if isinstance(target, str):
            return  # an ordinary elementwise op, not a fold candidate: nothing to report
        w = graph.constant(target.node.input(1))
        rank = w.ndim if target.node.op in ("Conv", "ConvTranspose") else len(graph.shape(data) or ())
        value = graph.constant(node.input(const_at[0]))
        if value.dtype.kind != "f" or rank < 2:
            return
        vector = _per_channel(value, rank, target.channel_axis, target.channels)
        if vector is None:
            return  # not per-channel (e.g. a full tensor): not ours to fold
        reason = self._exclusive(graph, data, node)
        if target.node.op == "MatMul" and node.op in ("Add", "Sub") and rank != 2:
            reason = reason or "MatMul on a rank>2 input has no bias to absorb a shift"
        if node.op == "Div" and np.any(vector == 0):
            reason = reason or "division by zero in the constant"
        if reason is not None:
            result.skip(node, reason)
            return
        ones, zeros = np.ones_like(vector), np.zeros_like(vector)
        affine = {
            "Mul": _Affine(vector, zeros),
            "Div": _Affine(1.0 / np.where(vector == 0, 1, vector), zeros),
            "Add": _Affine(ones, vector),
            "Sub": _Affine(ones, -vector),
        }[node.op]
        if not ctx.region(node.outputs[0], node.label):
            return
        _apply(graph, target, affine)
        graph.bypass(node, 1 - const_at[0])
        result.count(f"{node.op.lower()}_folded")
