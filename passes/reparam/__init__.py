"""Reparameterize: a sum of linear branches of one tensor becomes one Conv with the same outputs.

Networks that train with parallel branches run with one conv per block once the branches are
summed into one kernel (RepVGG, Ding et al. 2021; MobileOne, Vasu et al. 2023; ACNet, Ding et al.
2019; Diverse Branch Block, Ding et al. 2021). Convolution is linear in its kernel, so

    sum_b conv(x, W_b) + c_b  =  conv(x, sum_b pad(W_b)) + sum_b c_b

where pad() places each branch's taps where its sampling window sits in the largest kernel: a
1x1 at the centre of a 3x3, a 1x3 in its middle row; an identity or a BN of x is a delta kernel
at input channel i % (C / groups); an AveragePool is 1/k^2 on that channel; a BN after a branch
is folded into it first (fold-bn's math); a 1x1 conv feeding a kxk conv composes into one kxk
kernel, exact only when the kxk never pads a non-zero intermediate.

Terms of the sum that are not linear branches of the chosen tensor stay, added to the new conv's
output. Where a group of branches cannot be merged exactly (stride, dilation or group mismatch,
off-centre padding, non-constant weights, a branch output read elsewhere), the region is left
untouched and the reason reported. Outside sums, Conv 1x1 -> (BN) -> Conv chains are merged when
that is exact and does not add multiply-accumulates.
"""
from __future__ import annotations

import dataclasses
import math
import os

from onnx import helper

from onnxopt.graph.core import Graph, Node
from onnxopt.pipeline.contract import Pass, PassContext, PassResult
from onnxopt.pipeline.options import option
from onnxopt.pipeline.registry import register_pass

from ..fold_bn import _bn_affine, _per_channel
from .branches import Branch, SumTree, compose_after, conv_kernel, expand, readings, sum_trees
from .kernels import Decline, Kernel, merge

__all__ = ["Reparameterize"]


@register_pass
class Reparameterize(Pass):
    name = "reparam"
    summary = "merge parallel linear branches (RepVGG, MobileOne, ACNet, DBB) into one Conv"
    exact = True
    needs_static_shapes = True  # branch outputs must be seen to have one shape before they merge
    stage = 20

    @dataclasses.dataclass(frozen=True)
    class Options:
        sequential: bool = option(
            True, "also merge Conv 1x1 -> (BN) -> Conv chains outside sums, when exact and not costlier")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        told: set[int] = set()  # nodes whose decline was already reported
        for root in sum_trees(graph):
            if root.alive:
                self._merge_sum(graph, expand(graph, root), result, told, ctx)
        if self.options.sequential:
            costlier = 0
            # in graph order, so that a conv merged here can merge again with the next one
            for conv in [n for n in graph.topological_nodes() if n.op == "Conv"]:
                if conv.alive and conv.id not in told:
                    costlier += self._merge_pair(graph, conv, result, ctx) == "costlier"
            if costlier:
                result.notes.append(f"left {costlier} Conv 1x1 -> Conv chain(s) as they are: one merged "
                                    "conv would need more multiply-accumulates than the two")
        result.changed = any(result.stats.values())
        return result

    # -- sums of branches ---------------------------------------------------------------------
    def _merge_sum(self, graph: Graph, tree: SumTree, result: PassResult, told: set[int], ctx: PassContext) -> None:
        options = [readings(graph, tree, i) for i in range(len(tree.terms))]
        left = list(range(len(tree.terms)))
        groups: list[tuple[str, list[Branch], Kernel]] = []
        while True:
            choice = _largest_group(options, left)
            if choice is None:
                break
            source, valid, broken = choice
            try:
                if broken:  # a linear branch that cannot be merged: the whole block stays as it is
                    raise Decline(f"its {broken[0].kind} branch cannot be merged: {broken[0].problem}")
                kernel = self._merged_kernel(graph, tree, source, valid)
            except Decline as why:
                result.skip(tree.root, f"branches of '{source}' not merged: {why}")
                told.update(n.id for b in valid + broken for n in b.nodes)
                return  # the region stays untouched
            groups.append((source, valid, kernel))
            left = [i for i in left if i not in {b.term for b in valid}]
        if not groups:
            self._explain(graph, tree, options, result, told)
            return
        if not ctx.region(tree.root.outputs[0], tree.root.label):
            return
        absorbed = self._absorb_constants(graph, tree, left, groups[0][2])
        left = [i for i in left if i not in absorbed]
        self._rewrite(graph, tree, groups, [tree.terms[i][0] for i in left])
        result.count("sums_merged")
        for _, valid, _ in groups:
            result.count("branches_merged", len(valid))
            for b in valid:
                result.count(f"branch_{b.kind}")
        if absorbed:
            result.count("constants_absorbed", len(absorbed))

    @staticmethod
    def _merged_kernel(graph: Graph, tree: SumTree, source: str, branches: list[Branch]) -> Kernel:
        out_shape = graph.static_shape(tree.root.outputs[0])
        for b in branches:
            if graph.static_shape(tree.terms[b.term][0]) != out_shape:
                raise Decline(f"'{tree.terms[b.term][0]}' is broadcast in the sum")
        source_shape = graph.static_shape(source)
        if source_shape is None:
            raise Decline(f"the shape of '{source}' is unknown")
        if graph.is_constant(source):
            raise Decline(f"'{source}' is a constant")
        return merge([b.kernel for b in branches], source_shape[1])

    @staticmethod
    def _absorb_constants(graph: Graph, tree: SumTree, left: list[int], kernel: Kernel) -> list[int]:
        """Terms that are per-channel constants (a bias Add) join the merged conv's bias."""
        rank = len(graph.static_shape(tree.root.outputs[0]) or ())
        absorbed = []
        for i in left:
            value = graph.constant(tree.terms[i][0])
            if value is None or value.dtype.kind != "f" or rank < 3:
                continue
            vector = _per_channel(value, rank, 1, kernel.channels_out)
            if vector is not None:
                kernel.bias = kernel.bias + vector
                absorbed.append(i)
        return absorbed

    def _rewrite(self, graph: Graph, tree: SumTree, groups, kept: list[str]) -> None:
        out = tree.root.outputs[0]
        np_dtype = helper.tensor_dtype_to_np_dtype(graph.dtype(out))
        doomed = {n.id: n for n in tree.inner}
        doomed.update((n.id, n) for _, valid, _ in groups for b in valid for n in b.nodes)
        graph.remove(list(doomed.values()), safe=False)
        summands: list[str] = []
        for source, valid, kernel in groups:
            nodes = [n for b in valid for n in b.nodes]
            scope = _common_scope([n.name for n in nodes if n.name], "/")
            params = _common_scope([n.input(1) for n in nodes if n.op == "Conv"], ".")
            target = [out] if not kept and len(groups) == 1 else 1
            conv = _add_conv(graph, source, kernel, np_dtype, f"{params}reparam", target, f"{scope}reparam/Conv")
            summands.append(conv.outputs[0])
        summands += kept
        if len(summands) == 1:
            return
        if tree.root.op == "Sum":
            graph.add_node("Sum", summands, [out], name=tree.root.name or None)
            return
        acc = summands[0]
        for i, term in enumerate(summands[1:], 1):
            last = i == len(summands) - 1
            acc = graph.add_node("Add", [acc, term], [out] if last else 1, name=tree.root.name or None).outputs[0]

    @staticmethod
    def _explain(graph: Graph, tree: SumTree, options: list[list[Branch]], result: PassResult,
                 told: set[int]) -> None:
        """No group to merge. Say why when the sum looked like a block of branches: a branch with a
        conv that cannot be merged, or conv branches of different tensors. Ordinary joins (a
        residual Add of a conv path and a shortcut) stay silent."""
        by_source: dict[str, list[Branch]] = {}
        for readings_of_term in options:
            for b in readings_of_term:
                by_source.setdefault(b.source, []).append(b)
        for source, branches in by_source.items():
            broken = [b for b in branches if b.problem]
            if len(branches) >= 2 and broken and any(n.op == "Conv" for b in branches for n in b.nodes):
                result.skip(tree.root, f"branches of '{source}' not merged: {broken[0].problem}")
                told.update(n.id for b in branches for n in b.nodes)
                return
        conv_terms = [{b.source for b in r if b.has_conv and b.problem is None} for r in options]
        conv_terms = [s for s in conv_terms if s]
        if len(conv_terms) >= 2:
            sources = sorted({min(s) for s in conv_terms})[:2]
            result.skip(tree.root, "its conv branches read different tensors ("
                        + ", ".join(f"'{s}'" for s in sources) + "), as at a shortcut join: nothing to merge")

    # -- Conv 1x1 -> (BN) -> Conv outside sums --------------------------------------------------
    def _merge_pair(self, graph: Graph, conv: Node, result: PassResult, ctx: PassContext) -> str | None:
        chain: list[Node] = [conv]
        tensor, reader = conv.input(0), conv
        first = graph.producer(tensor)
        if first is not None and first.op == "BatchNormalization":
            if graph.reader_conflict(tensor, reader):
                return None
            chain.append(first)
            tensor, reader = first.input(0), first
            first = graph.producer(tensor)
        if first is None or first.op != "Conv" or graph.reader_conflict(tensor, reader):
            return None
        w = graph.constant(first.input(1))
        if w is None or w.ndim < 3 or set(w.shape[2:]) != {1}:
            return None
        chain.append(first)
        try:
            head = conv_kernel(graph, first)
            tail = conv_kernel(graph, conv)
            kernel = head
            if len(chain) == 3:
                affine = _bn_affine(graph, chain[1])
                if isinstance(affine, str):
                    raise Decline(affine)
                if affine.scale.size != kernel.channels_out:  # a per-activation BN (opset < 9)
                    return None
                kernel = kernel.then_affine(affine.scale, affine.shift)
            kernel = compose_after(kernel, tail)
        except Decline as why:
            result.skip(conv, f"Conv 1x1 -> Conv not merged: {why}")
            return "declined"
        before = [_macs(graph, first.outputs[0], head), _macs(graph, conv.outputs[0], tail)]
        after = _macs(graph, conv.outputs[0], kernel)
        if None in before or after is None:
            return None
        if after > sum(before):
            return "costlier"
        if not ctx.region(conv.outputs[0], conv.label):
            return None
        out = conv.outputs[0]
        np_dtype = helper.tensor_dtype_to_np_dtype(graph.dtype(out))
        source, name = first.input(0), conv.name
        params = conv.input(1).rsplit(".weight", 1)[0] if conv.input(1).endswith(".weight") else conv.input(1)
        graph.remove(chain, safe=False)
        _add_conv(graph, source, kernel, np_dtype, f"{params}.merged", [out], name or None)
        result.count("sequential_merged")
        return "merged"


def _add_conv(graph: Graph, source: str, kernel: Kernel, dtype, params: str, outputs, name: str | None) -> Node:
    """A Conv computing `kernel` on `source`, its weight and bias stored as `params`.weight/.bias."""
    weight = graph.add_constant(f"{params}.weight", kernel.weight.astype(dtype))
    bias = graph.add_constant(f"{params}.bias", kernel.bias.astype(dtype))
    return graph.add_node("Conv", [source, weight, bias], outputs, name=name,
                          kernel_shape=list(kernel.size), pads=list(kernel.pads), strides=list(kernel.strides),
                          dilations=list(kernel.dilations), group=kernel.group)


def _macs(graph: Graph, output: str, kernel: Kernel) -> int | None:
    """Multiply-accumulates of `kernel` producing `output` (from the kernel, not the graph: a conv
    merged in this run has weights the shape cache has not seen)."""
    shape = graph.static_shape(output)
    return None if shape is None else math.prod(shape) * kernel.weight.shape[1] * math.prod(kernel.size)


def _largest_group(options: list[list[Branch]], left: list[int]):
    """The tensor with the most mergeable branches among the terms `left` (at least two, one of
    them with a Conv): (source, mergeable branches, branches of it that cannot be merged)."""
    by_source: dict[str, list[Branch]] = {}
    for i in left:
        for b in options[i]:
            by_source.setdefault(b.source, []).append(b)
    best, best_key = None, None
    for source, branches in by_source.items():
        valid = [b for b in branches if b.problem is None and b.kernel is not None]
        if len(valid) < 2 or not any(b.has_conv for b in valid):
            continue
        key = (len(valid), sum(b.has_conv for b in valid))
        if best_key is None or key > best_key:
            best_key = key
            best = (source, valid, [b for b in branches if b.problem is not None])
    return best


def _common_scope(names: list[str], sep: str) -> str:
    """The shared leading path of names, up to and including the last separator ('' if none)."""
    if not names:
        return ""
    prefix = os.path.commonprefix(names)
    cut = prefix.rfind(sep)
    return prefix[:cut + 1] if cut >= 0 else ""
