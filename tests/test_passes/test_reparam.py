"""reparam: every linear branch kind merges into one exact Conv, whatever the Add/Sum tree looks
like; other terms of a sum stay; Conv 1x1 -> Conv chains merge when exact and not costlier; every
decline leaves the model untouched and says why; RepVGG / MobileOne reach their deploy form exactly
and other zoo models come back byte-identical. Exactness is checked in ORT with optimizations off."""
from __future__ import annotations

import collections
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import models
from onnxopt.passes import Reparameterize
from onnxopt.pipeline.run import Pipeline
from onnxopt.testing import apply, assert_exact, count_ops, fidelity

# ---------------------------------------------------------------------------------------------
# Graph building


class Block:
    """A tiny graph builder around one input `x` of shape [n, c, *spatial]. Every method adds
    nodes (and seeded random constants) and returns the name of its output tensor."""

    def __init__(self, c=4, spatial=(8, 8), *, n=1, dtype=np.float32, seed=0):
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.rank = len(spatial)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.inputs: list[tuple[str, list[int]]] = [("x", [n, c, *spatial])]
        self.channels = {"x": c}
        self.x = "x"
        self.extra: list[str] = []  # more graph outputs, for builders that need them
        self._k = 0

    # -- names and constants
    def fresh(self, prefix):
        self._k += 1
        return f"{prefix}{self._k}"

    def arr(self, *shape, lo=None, hi=None):
        if lo is not None:
            return self.rng.uniform(lo, hi, shape).astype(self.dtype)
        return self.rng.standard_normal(shape).astype(self.dtype)

    def const(self, value, prefix="k"):
        name = self.fresh(prefix)
        self.inits[name] = np.asarray(value, self.dtype)
        return name

    def node(self, op, inputs, channels, **attrs):
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{out}/{op}", **attrs))
        self.channels[out] = channels
        return out

    # -- linear stages
    def conv(self, x, cout, k=3, *, pads=None, strides=1, dilations=1, group=1, bias=False, weight=None):
        k = (k,) * self.rank if isinstance(k, int) else tuple(k)
        d = (dilations,) * self.rank if isinstance(dilations, int) else tuple(dilations)
        if pads is None:
            pads = [di * (ki - 1) // 2 for ki, di in zip(k, d)] * 2
        elif isinstance(pads, int):
            pads = [pads] * (2 * self.rank)
        if weight is None:
            weight = self.const(self.arr(cout, self.channels[x] // group, *k) * 0.5, "w")
        ins = [x, weight] + ([self.const(self.arr(cout), "b")] if bias else [])
        return self.node("Conv", ins, cout, kernel_shape=list(k), pads=list(pads), group=group,
                         strides=[strides] * self.rank if isinstance(strides, int) else list(strides),
                         dilations=list(d))

    def bn(self, x, *, epsilon=1e-5):
        c = self.channels[x]
        params = [self.const(self.arr(c, lo=0.5, hi=1.5), "gamma"), self.const(self.arr(c), "beta"),
                  self.const(self.arr(c) * 0.5, "mean"), self.const(self.arr(c, lo=0.5, hi=1.5), "var")]
        return self.node("BatchNormalization", [x, *params], c, epsilon=epsilon)

    def conv_bn(self, x, cout, k=3, **kw):
        return self.bn(self.conv(x, cout, k, **kw))

    def avgpool(self, x, k=3, *, pads=1, strides=1, count_include_pad=1):
        return self.node("AveragePool", [x], self.channels[x], kernel_shape=[k] * self.rank,
                         pads=[pads] * (2 * self.rank), strides=[strides] * self.rank,
                         count_include_pad=count_include_pad)

    def mul(self, x, shape, *, const_first=False):
        k = self.const(self.arr(*shape, lo=0.5, hi=1.5), "s")
        return self.node("Mul", [k, x] if const_first else [x, k], self.channels[x])

    # -- joins and others
    def relu(self, x):
        return self.node("Relu", [x], self.channels[x])

    def add(self, a, b):
        return self.node("Add", [a, b], self.channels.get(a, self.channels.get(b)))

    def sum(self, *terms):
        return self.node("Sum", list(terms), self.channels.get(terms[0]))

    def add_all(self, terms):
        """Left to right, as torch writes a + b + c."""
        acc = terms[0]
        for t in terms[1:]:
            acc = self.add(acc, t)
        return acc

    def input(self, name, shape):
        self.inputs.append((name, list(shape)))
        self.channels[name] = shape[1] if len(shape) > 1 else None
        return name

    def model(self, *outputs, rename=True):
        """The model with `outputs` as graph outputs; the first is renamed "y" (the name that must
        survive), shapes of outputs come from ONNX shape inference."""
        nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in self.nodes]
        outputs = list(outputs)
        if rename and outputs[0] != "y" and outputs[0] not in dict(self.inputs):
            for n in nodes:
                n.output[:] = ["y" if o == outputs[0] else o for o in n.output]
                n.input[:] = ["y" if i == outputs[0] else i for i in n.input]
            outputs[0] = "y"
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info(n, elem, s) for n, s in self.inputs],
            [helper.make_tensor_value_info(o, elem, None) for o in outputs],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
        for o in model.graph.output:
            o.CopyFrom(known[o.name])
            assert o.type.tensor_type.HasField("shape"), o.name
        onnx.checker.check_model(model, full_check=True)
        return model


def conv_attrs(node: onnx.NodeProto) -> dict:
    attrs = {}
    for a in node.attribute:
        attrs[a.name] = list(a.ints) if a.type == onnx.AttributeProto.INTS else a.i
    rank = len(attrs["kernel_shape"])
    attrs.setdefault("strides", [1] * rank)
    attrs.setdefault("dilations", [1] * rank)
    attrs.setdefault("pads", [0] * 2 * rank)
    attrs.setdefault("group", 1)
    return {k: attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations", "group")}


def convs(model) -> list[dict]:
    return [conv_attrs(n) for n in model.graph.node if n.op_type == "Conv"]


def assert_merges(model, *, ops, stats, conv=None, rtol=1e-5, **options):
    """Run reparam and check everything a merge must satisfy: op counts, exact stats, a clean
    checker, exact outputs, unchanged output names, no skips, and a second run changing nothing."""
    out, result = apply(Reparameterize(**options), model)
    assert result.changed
    assert count_ops(out) == ops
    assert result.stats == stats
    assert result.skipped == []
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    if conv is not None:  # attributes of the (first) Conv of the result
        merged = convs(out)
        assert merged and all(merged[0][k] == v for k, v in conv.items()), (merged, conv)
    assert_exact(model, out, rtol=rtol)
    again, second = apply(Reparameterize(**options), out)
    assert not second.changed and again is out
    assert second.stats == {}
    return out, result


def assert_declines(model, reason, **options):
    """reparam leaves the model alone and reports a skip whose reason contains `reason`."""
    data = model.SerializeToString()
    out, result = apply(Reparameterize(**options), model)
    assert model.SerializeToString() == data
    assert not result.changed
    assert out is model
    assert result.stats == {}
    assert count_ops(out) == count_ops(model)
    reasons = [s.reason for s in result.skipped]
    assert any(reason in r for r in reasons), reasons
    return result


def merged_stats(**kinds):
    stats = {"sums_merged": 1, "branches_merged": sum(kinds.values())}
    stats.update({f"branch_{k.replace('_', '-')}": v for k, v in kinds.items()})
    return stats


# ---------------------------------------------------------------------------------------------
# 1. Every branch kind merges exactly into one Conv


def _k3_k1(b, bias):
    return b.add(b.conv(b.x, 8, 3, bias=bias), b.conv(b.x, 8, 1, bias=bias))


def _k3_k1_bn(b):
    return b.add(b.conv_bn(b.x, 8, 3), b.conv_bn(b.x, 8, 1, bias=True))


def _repvgg(b):
    c = b.channels["x"]
    return b.add_all([b.conv_bn(b.x, c, 3), b.conv_bn(b.x, c, 1), b.bn(b.x)])


def _plain_identity(b):
    c = b.channels["x"]
    return b.add_all([b.conv(b.x, c, 3, bias=True), b.conv(b.x, c, 1), b.x])


def _scale(shape, const_first):
    def build(b):
        c = b.channels["x"]
        shape_c = [c if d == "C" else d for d in shape]
        return b.add(b.conv_bn(b.x, c, 3), b.mul(b.x, shape_c, const_first=const_first))
    return build


def _avgpool_padded(b):
    c = b.channels["x"]
    return b.add_all([b.conv_bn(b.x, c, 3), b.avgpool(b.x, 3, pads=1), b.conv(b.x, c, 1)])


def _avgpool_unpadded(b):
    c = b.channels["x"]
    return b.add(b.conv(b.x, c, 3, pads=0, bias=True), b.avgpool(b.x, 3, pads=0))


def _acnet(b):
    return b.add_all([b.conv_bn(b.x, 6, 3), b.conv_bn(b.x, 6, (1, 3), pads=[0, 1, 0, 1]),
                      b.conv_bn(b.x, 6, (3, 1), pads=[1, 0, 1, 0])])


def _k5_k3_k1(b):
    return b.add_all([b.conv(b.x, 6, 5, pads=2), b.conv(b.x, 6, 3, pads=1, bias=True), b.conv(b.x, 6, 1)])


def _dilated(b):
    return b.add(b.conv_bn(b.x, 6, 3, dilations=2, pads=2), b.conv_bn(b.x, 6, 1))


def _mobileone_k4(b):
    c = b.channels["x"]
    out = b.add(b.conv_bn(b.x, c, 1, pads=0), b.bn(b.x))  # (scale + skip) + conv0 + ... as torch
    for _ in range(4):
        out = b.add(out, b.conv_bn(b.x, c, 3))
    return out


def _stride2(b):
    return b.add(b.conv_bn(b.x, 8, 3, strides=2), b.conv_bn(b.x, 8, 1, strides=2, pads=0))


def _avgpool_stride2(b):
    c = b.channels["x"]
    return b.add(b.conv_bn(b.x, c, 3, strides=2), b.avgpool(b.x, 3, pads=1, strides=2))


def _conv_then_scale(b):  # a per-channel Mul after a conv is part of the conv branch
    c = b.channels["x"]
    return b.add(b.mul(b.conv(b.x, c, 3), (c, 1, 1)), b.bn(b.bn(b.conv(b.x, c, 1))))


P3 = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1)

BRANCH_KINDS = [
    # id, channels, spatial, build, stats, attributes of the merged conv
    ("3x3+1x1", 4, (7, 7), lambda b: _k3_k1(b, False), merged_stats(conv=2), P3),
    ("3x3+1x1-bias", 5, (8, 8), lambda b: _k3_k1(b, True), merged_stats(conv=2), P3),
    ("3x3bn+1x1bn", 4, (7, 7), _k3_k1_bn, merged_stats(conv=2), P3),
    ("repvgg-bn-identity", 6, (7, 7), _repvgg, merged_stats(conv=2, bn=1), P3),
    ("plain-identity", 5, (8, 8), _plain_identity, merged_stats(conv=2, identity=1), P3),
    ("scale-C11", 4, (7, 7), _scale(("C", 1, 1), False), merged_stats(conv=1, scale=1), P3),
    ("scale-1C11-const-first", 4, (8, 8), _scale((1, "C", 1, 1), True), merged_stats(conv=1, scale=1), P3),
    ("avgpool-pads1", 6, (7, 7), _avgpool_padded, merged_stats(conv=2, avgpool=1), P3),
    ("avgpool-pads0", 4, (8, 8), _avgpool_unpadded, merged_stats(conv=1, avgpool=1),
     dict(P3, pads=[0, 0, 0, 0])),
    ("acnet-3x3+1x3+3x1", 4, (7, 7), _acnet, merged_stats(conv=3), P3),
    ("5x5+3x3+1x1", 4, (9, 9), _k5_k3_k1, merged_stats(conv=3), dict(P3, kernel_shape=[5, 5], pads=[2] * 4)),
    ("dilation2", 4, (9, 9), _dilated, merged_stats(conv=2), dict(P3, dilations=[2, 2], pads=[2] * 4)),
    ("mobileone-k4", 6, (7, 7), _mobileone_k4, merged_stats(conv=5, bn=1), P3),
    ("stride2-odd", 4, (7, 7), _stride2, merged_stats(conv=2), dict(P3, strides=[2, 2])),
    ("stride2-even", 4, (8, 8), _stride2, merged_stats(conv=2), dict(P3, strides=[2, 2])),
    ("avgpool-stride2", 4, (7, 7), _avgpool_stride2, merged_stats(conv=1, avgpool=1), dict(P3, strides=[2, 2])),
    ("conv-mul+conv-bn-bn", 4, (7, 7), _conv_then_scale, merged_stats(conv=2), P3),
]


@pytest.mark.parametrize("c,spatial,build,stats,attrs", [case[1:] for case in BRANCH_KINDS],
                         ids=[case[0] for case in BRANCH_KINDS])
def test_branch_kind_merges_into_one_exact_conv(c, spatial, build, stats, attrs):
    b = Block(c, spatial, seed=len(stats) + c)
    model = b.model(build(b))
    out, _ = assert_merges(model, ops={"Conv": 1}, stats=stats, conv=attrs)
    (conv,) = out.graph.node
    assert conv.input[0] == "x" and conv.output[0] == "y"
    assert len(conv.input) == 3  # the summed bias


@pytest.mark.parametrize("group", [1, 2, 3])
def test_identity_merge_places_a_delta_at_the_centre(group):
    """x + 0 * conv3x3(x) + 0 * conv1x1(x): the merged kernel is exactly the identity delta, at
    input channel i % (C / group) of output channel i's group."""
    c = 6
    b = Block(c, (5, 5))
    w3, w1 = b.const(np.zeros((c, c // group, 3, 3))), b.const(np.zeros((c, c // group, 1, 1)))
    model = b.model(b.add_all([b.conv(b.x, c, 3, weight=w3, group=group),
                               b.conv(b.x, c, 1, weight=w1, group=group), b.x]))
    out, _ = assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=2, identity=1),
                           conv=dict(P3, group=group))
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    expected = np.zeros((c, c // group, 3, 3), np.float32)
    expected[np.arange(c), np.arange(c) % (c // group), 1, 1] = 1
    np.testing.assert_array_equal(inits[out.graph.node[0].input[1]], expected)
    np.testing.assert_array_equal(inits[out.graph.node[0].input[2]], np.zeros(c, np.float32))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("stride,side", [(1, 7), (2, 7), (2, 8)])
def test_auto_pad_and_even_kernels_merge(auto_pad, k, stride, side):
    """auto_pad SAME_* (asymmetric for even kernels and strided even inputs) + a VALID 1x1."""
    b = Block(4, (side, side), seed=k * 10 + stride)
    w, w1 = b.const(b.arr(4, 4, k, k)), b.const(b.arr(4, 4, 1, 1))
    same = b.node("Conv", [b.x, w], 4, kernel_shape=[k, k], auto_pad=auto_pad, strides=[stride] * 2)
    one = b.node("Conv", [b.x, w1], 4, kernel_shape=[1, 1], auto_pad="VALID", strides=[stride] * 2)
    model = b.model(b.add(same, one))
    out, _ = assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=2))
    (attrs,) = convs(out)
    assert attrs["kernel_shape"] == [k, k] and attrs["strides"] == [stride] * 2


# ---------------------------------------------------------------------------------------------
# 2. Grouped and depthwise convolutions


def test_mobileone_depthwise_block_merges():
    b = Block(6, (7, 7), seed=11)
    x = b.x
    model = b.model(b.add_all([b.conv_bn(x, 6, 1, pads=0, group=6), b.bn(x),
                               b.conv_bn(x, 6, 3, group=6), b.conv_bn(x, 6, 3, group=6)]))
    assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=3, bn=1), conv=dict(P3, group=6))


@pytest.mark.parametrize("group", [2, 4])
@pytest.mark.parametrize("identity", ["x", "bn"])
def test_grouped_convs_with_identity_merge(group, identity):
    """Identity of a grouped conv: output channel i reads input channel i % (C / group) of its group."""
    b = Block(8, (7, 7), seed=group)
    x = b.x
    skip = x if identity == "x" else b.bn(x)
    model = b.model(b.add_all([b.conv_bn(x, 8, 3, group=group), b.conv(x, 8, 1, group=group, bias=True), skip]))
    kind = {"x": "identity", "bn": "bn"}[identity]
    assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=2, **{kind: 1}), conv=dict(P3, group=group))


def test_mobileone_pointwise_block_merges():
    b = Block(8, (7, 7), seed=5)
    x = b.x
    model = b.model(b.add_all([b.bn(x)] + [b.conv_bn(x, 8, 1, pads=0) for _ in range(4)]))
    assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=4, bn=1),
                  conv=dict(P3, kernel_shape=[1, 1], pads=[0, 0, 0, 0]))


# ---------------------------------------------------------------------------------------------
# 3. A stride-2 block


@pytest.mark.parametrize("side", [7, 8])
def test_stride2_block_becomes_one_strided_conv(side):
    b = Block(4, (side, side), seed=side)
    model = b.model(b.relu(b.add(b.conv_bn(b.x, 8, 3, strides=2, pads=1),
                                 b.conv_bn(b.x, 8, 1, strides=2, pads=0))))
    out, _ = assert_merges(model, ops={"Conv": 1, "Relu": 1}, stats=merged_stats(conv=2))
    (attrs,) = convs(out)
    assert attrs["strides"] == [2, 2]
    assert attrs["pads"] == [1, 1, 1, 1]
    assert attrs["kernel_shape"] == [3, 3]
    assert attrs["group"] == 1


# ---------------------------------------------------------------------------------------------
# 4. Add / Sum trees of any shape, terms in any order

TREES = {
    "((a+b)+c)": lambda b, t: b.add(b.add(t[0], t[1]), t[2]),
    "(a+(b+c))": lambda b, t: b.add(t[0], b.add(t[1], t[2])),
    "((a+b)+(c+d))": lambda b, t: b.add(b.add(t[0], t[1]), b.add(t[2], t[3])),
    "(a+((b+c)+d))": lambda b, t: b.add(t[0], b.add(b.add(t[1], t[2]), t[3])),
    "Sum(a,b,c)": lambda b, t: b.sum(t[0], t[1], t[2]),
    "Sum(a,b,c,d)": lambda b, t: b.sum(*t[:4]),
    "Add(Sum(a,b),c)": lambda b, t: b.add(b.sum(t[0], t[1]), t[2]),
    "Sum(Add(a,b),c,d)": lambda b, t: b.sum(b.add(t[0], t[1]), t[2], t[3]),
}
TREE_TERMS = {name: len(set(re.findall(r"\b[abcd]\b", name))) for name in TREES}  # a, b, c (, d)
ORDERS = {"conv-first": [0, 1, 2, 3], "identity-first": [2, 0, 3, 1], "reversed": [3, 2, 1, 0]}


@pytest.mark.parametrize("identity", ["bn", "identity"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("tree", TREES)
def test_any_add_tree_merges(tree, order, identity):
    """Terms: a = 3x3+BN, b = 1x1+BN, c = BN(x) or x itself, d = 3x3 with bias; placed in the
    tree in the given order."""
    b = Block(6, (7, 7), seed=3)
    x = b.x
    makers = [lambda: b.conv_bn(x, 6, 3), lambda: b.conv_bn(x, 6, 1),
              (lambda: b.bn(x)) if identity == "bn" else (lambda: x), lambda: b.conv(x, 6, 3, bias=True)]
    n = TREE_TERMS[tree]
    used = [i for i in ORDERS[order] if i < n]
    model = b.model(TREES[tree](b, [makers[i]() for i in used]))
    kinds = collections.Counter(identity if i == 2 else "conv" for i in used)
    assert_merges(model, ops={"Conv": 1}, stats=merged_stats(**kinds), conv=P3)


# ---------------------------------------------------------------------------------------------
# 5. Terms that are not branches of x stay; constants join the bias; names survive


@pytest.mark.parametrize("constant", ["full", "per-channel"])
@pytest.mark.parametrize("root", ["Add", "Sum"])
def test_nonlinear_term_is_kept_next_to_the_merged_conv(root, constant):
    """3x3 + Relu(Conv(x)) + 1x1 + a constant: the Relu branch stays, added to the merged conv; a
    full [1,C,H,W] constant stays too, a per-channel [1,C,1,1] one joins the merged bias."""
    b = Block(4, (7, 7), seed=8)
    x = b.x
    c3, c1 = b.conv_bn(x, 4, 3), b.conv(x, 4, 1)
    nonlinear = b.relu(b.conv(x, 4, 3, bias=True))
    k = b.const(b.arr(1, 4, 7, 7) if constant == "full" else b.arr(1, 4, 1, 1), "k")
    terms = [c3, nonlinear, c1, k]
    model = b.model(b.add_all(terms) if root == "Add" else b.sum(*terms))
    summands = 3 if constant == "full" else 2
    joins = {"Add": summands - 1} if root == "Add" else {"Sum": 1}
    stats = merged_stats(conv=2) | ({} if constant == "full" else {"constants_absorbed": 1})
    out, _ = assert_merges(model, ops={"Conv": 2, "Relu": 1, **joins}, stats=stats)
    (relu,) = [n for n in out.graph.node if n.op_type == "Relu"]
    (kept_conv,) = [n for n in out.graph.node if n.op_type == "Conv" and relu.input[0] in n.output]
    (merged,) = [n for n in out.graph.node if n.op_type == "Conv" and n is not kept_conv]
    assert merged.input[0] == "x" and kept_conv.input[0] == "x"
    assert conv_attrs(kept_conv)["kernel_shape"] == [3, 3] and conv_attrs(merged) == P3
    added = [i for n in out.graph.node if n.op_type in joins for i in n.input]
    assert {merged.output[0], relu.output[0]} <= set(added)
    assert (k in added) == (constant == "full")
    (last,) = [n for n in out.graph.node if "y" in n.output]
    assert last.op_type in joins


@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (6, 1, 1), (1,), ()], ids=str)
@pytest.mark.parametrize("const_first", [False, True])
def test_per_channel_constant_term_is_absorbed_into_the_bias(shape, const_first):
    b = Block(6, (7, 7), seed=9)
    k = b.const(b.arr(*shape), "bias_term")
    branches = b.add(b.conv_bn(b.x, 6, 3), b.conv(b.x, 6, 1))
    model = b.model(b.add(k, branches) if const_first else b.add(branches, k))
    stats = dict(merged_stats(conv=2), constants_absorbed=1)
    assert_merges(model, ops={"Conv": 1}, stats=stats, conv=P3)


def test_two_groups_of_branches_in_one_sum_each_merge():
    b = Block(4, (7, 7), seed=12)
    z = b.input("z", [1, 4, 7, 7])
    model = b.model(b.add_all([b.conv(b.x, 4, 3), b.conv(z, 4, 3), b.conv(b.x, 4, 1), b.conv_bn(z, 4, 1), z]))
    out, _ = assert_merges(model, ops={"Conv": 2, "Add": 1},
                           stats=merged_stats(conv=4, identity=1))
    assert sorted(n.input[0] for n in out.graph.node if n.op_type == "Conv") == ["x", "z"]


def test_consecutive_blocks_get_distinct_conv_and_weight_names():
    b = Block(4, (7, 7), seed=16)
    first = b.relu(_repvgg(b))
    b.x = first
    model = b.model(b.relu(_repvgg(b)))
    out, _ = assert_merges(model, ops={"Conv": 2, "Relu": 2}, stats={**merged_stats(conv=4, bn=2), "sums_merged": 2})
    merged = [n for n in out.graph.node if n.op_type == "Conv"]
    assert len({n.name for n in merged}) == 2
    assert len({n.input[1] for n in merged}) == 2 and len({n.input[2] for n in merged}) == 2


def test_activation_after_the_sum_reads_the_new_conv():
    b = Block(6, (8, 8), seed=13)
    model = b.model(b.relu(_repvgg(b)))
    out, _ = assert_merges(model, ops={"Conv": 1, "Relu": 1}, stats=merged_stats(conv=2, bn=1), conv=P3)
    conv, relu = out.graph.node
    assert conv.op_type == "Conv" and relu.op_type == "Relu"
    assert relu.input[0] == conv.output[0]
    assert relu.output[0] == "y" and out.graph.output[0].name == "y"


def test_sum_read_by_two_consumers_keeps_both_readers():
    b = Block(4, (7, 7), seed=14)
    s = _repvgg(b)
    model = b.model(b.relu(s), b.node("Sigmoid", [s], 4))
    out, _ = assert_merges(model, ops={"Conv": 1, "Relu": 1, "Sigmoid": 1}, stats=merged_stats(conv=2, bn=1))
    conv = out.graph.node[[n.op_type for n in out.graph.node].index("Conv")]
    assert [n.input[0] for n in out.graph.node if n.op_type != "Conv"] == [conv.output[0]] * 2


@pytest.mark.parametrize("broken", ["avgpool-count-include-pad-0", "weight-is-input"])
def test_one_unmergeable_branch_leaves_the_whole_block_untouched(broken):
    """3x3 + 1x1 + identity would merge, but a fourth linear branch of x cannot: the block stays as
    it is (a partial merge would still be exact, but the block would not reach its deploy form)."""
    b = Block(4, (7, 7), seed=15)
    x = b.x
    if broken == "weight-is-input":
        bad, reason = b.conv(x, 4, 3, weight=b.input("w", [4, 4, 3, 3])), "not a float constant"
    else:
        bad, reason = b.avgpool(x, 3, pads=1, count_include_pad=0), "count_include_pad"
    model = b.model(b.add_all([b.conv(x, 4, 3), b.conv(x, 4, 1), x, bad]))
    result = assert_declines(model, reason)
    assert len(result.skipped) == 1


# ---------------------------------------------------------------------------------------------
# 6. Conv 1x1 -> (BN) -> Conv chains


def _chain(b, *, bias, bn, pads, k=3, mid=6, cout=8):
    h = b.conv(b.x, mid, 1, bias=bias)
    if bn:
        h = b.bn(h)
    return b.conv(h, cout, k, pads=pads, bias=True)


@pytest.mark.parametrize("bias,bn,pads", [(False, False, 1), (True, False, 0), (False, False, 0),
                                          (True, True, 0), (False, True, 0)],
                         ids=["nobias-pads1", "bias-pads0", "nobias-pads0", "bias-bn-pads0", "bn-pads0"])
def test_sequential_1x1_then_3x3_merges(bias, bn, pads):
    b = Block(4, (7, 7), seed=16)
    model = b.model(_chain(b, bias=bias, bn=bn, pads=pads))
    out, _ = assert_merges(model, ops={"Conv": 1}, stats={"sequential_merged": 1},
                           conv=dict(P3, pads=[pads] * 4))
    assert out.graph.node[0].input[0] == "x"


@pytest.mark.parametrize("bias,bn", [(True, False), (False, True), (True, True)],
                         ids=["1x1-bias", "1x1-bn", "1x1-bias-bn"])
def test_sequential_with_nonzero_intermediate_bias_and_padding_declines(bias, bn):
    b = Block(4, (7, 7), seed=18)
    model = b.model(_chain(b, bias=bias, bn=bn, pads=1))
    assert_declines(model, "bias is non-zero and the next conv pads")


@pytest.mark.parametrize("g1,g2,cin,mid", [(2, 1, 8, 16), (1, 2, 8, 16), (2, 4, 4, 16), (8, 8, 8, 8)])
def test_sequential_with_group_counts_merges(g1, g2, cin, mid):
    """Groupings compose (block-diagonally when they differ) where that is not costlier."""
    b = Block(cin, (7, 7), seed=g1 * 10 + g2)
    model = b.model(b.conv(b.conv(b.x, mid, 1, group=g1), 8, 3, group=g2))
    assert_merges(model, ops={"Conv": 1}, stats={"sequential_merged": 1}, conv={"kernel_shape": [3, 3]})


def test_sequential_into_strided_conv_merges():
    b = Block(4, (8, 8), seed=31)
    model = b.model(b.conv(b.conv(b.x, 6, 1), 8, 3, strides=2))
    assert_merges(model, ops={"Conv": 1}, stats={"sequential_merged": 1}, conv=dict(P3, strides=[2, 2]))


def test_sequential_conv1d_merges():
    b = Block(4, (9,), seed=32)
    model = b.model(b.conv(b.conv(b.x, 6, 1), 8, 3))
    assert_merges(model, ops={"Conv": 1}, stats={"sequential_merged": 1},
                  conv=dict(kernel_shape=[3], pads=[1, 1], strides=[1]))


@pytest.mark.parametrize("shared", ["read-by-another-node", "graph-output"])
def test_sequential_with_shared_intermediate_is_left_alone(shared):
    b = Block(4, (7, 7), seed=33)
    h = b.conv(b.x, 6, 1)
    y = b.conv(h, 8, 3)
    model = b.model(y, b.relu(h) if shared == "read-by-another-node" else h)
    out, result = apply(Reparameterize(), model)
    assert not result.changed and out is model and result.stats == {}


def test_sequential_chain_of_three_merges_in_one_run():
    """Conv1x1 -> Conv1x1 -> Conv3x3: the conv merged from the first pair merges again with the
    3x3 in the same run (else a second run would change the model: not idempotent)."""
    b = Block(4, (7, 7), seed=34)
    model = b.model(b.conv(b.conv(b.conv(b.x, 6, 1), 6, 1), 8, 3))
    assert_merges(model, ops={"Conv": 1}, stats={"sequential_merged": 2}, conv=P3)


def test_sum_then_chain_merge_in_one_run():
    """A 1x1 conv feeding a block: after the block is one conv, the 1x1 folds into it."""
    b = Block(4, (7, 7), seed=35)
    h = b.conv(b.x, 8, 1)
    model = b.model(b.relu(b.add(b.conv(h, 8, 3), b.conv(h, 8, 1))))
    out, _ = assert_merges(model, ops={"Conv": 1, "Relu": 1},
                           stats={**merged_stats(conv=2), "sequential_merged": 1}, conv=P3)
    assert out.graph.node[0].input[0] == "x"


def test_sequential_costlier_chain_is_left_with_a_note():
    b = Block(96, (4, 4), seed=19)
    h = b.conv(b.x, 24, 1)
    model = b.model(b.conv(h, 144, 1))
    out, result = apply(Reparameterize(), model)
    assert not result.changed and out is model and result.stats == {}
    assert len(result.notes) == 1 and "multiply-accumulates" in result.notes[0], result.notes


def test_sequential_off_leaves_mergeable_chain_alone():
    b = Block(4, (7, 7), seed=20)
    model = b.model(_chain(b, bias=False, bn=False, pads=1))
    out, result = apply(Reparameterize(sequential=False), model)
    assert not result.changed and out is model and result.stats == {}
    assert apply(Reparameterize(), model)[1].stats == {"sequential_merged": 1}  # it was mergeable


def test_dbb_block_with_padding_merges():
    """DBB: 3x3 + 1x1 + (1x1 -> 3x3, zero intermediate bias) + (1x1 -> AvgPool pads 1 -> BN)."""
    b = Block(6, (7, 7), seed=21)
    x = b.x
    seq_conv = b.bn(b.conv(b.conv(x, 6, 1), 6, 3, pads=1))
    seq_avg = b.bn(b.avgpool(b.conv(x, 6, 1), 3, pads=1))
    model = b.model(b.add_all([b.conv_bn(x, 6, 3), b.conv_bn(x, 6, 1), seq_conv, seq_avg]))
    assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=2, **{"1x1_kxk": 1, "1x1_avgpool": 1}),
                  conv=P3)


def test_dbb_block_without_padding_merges():
    """Every branch unpadded: 1x1 -> BN -> 3x3 and 1x1 -> BN -> AvgPool are exact with BN shifts."""
    b = Block(4, (8, 8), seed=22)
    x = b.x
    seq_conv = b.bn(b.conv(b.bn(b.conv(x, 6, 1, bias=True)), 4, 3, pads=0))
    seq_avg = b.bn(b.avgpool(b.bn(b.conv(x, 4, 1, bias=True)), 3, pads=0))
    model = b.model(b.add_all([b.conv_bn(x, 4, 3, pads=0), seq_conv, seq_avg, b.avgpool(x, 3, pads=0)]))
    assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=1, avgpool=1, **{"1x1_kxk": 1, "1x1_avgpool": 1}),
                  conv=dict(P3, pads=[0] * 4))


@pytest.mark.parametrize("g1,g2,g3", [(2, 2, 2), (4, 4, 4), (2, 1, 1), (1, 4, 1), (2, 4, 1)])
def test_dbb_branch_with_grouped_convs_merges(g1, g2, g3):
    """3x3 (group g3) + (1x1 group g1 -> 3x3 group g2): DBB's transform III across groupings."""
    b = Block(4, (7, 7), seed=g1 + 3 * g2 + 7 * g3)
    model = b.model(b.add(b.conv(b.x, 4, 3, group=g3), b.conv(b.conv(b.x, 8, 1, group=g1), 4, 3, group=g2)))
    assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=1, **{"1x1_kxk": 1}), conv=dict(P3, group=g3))


@pytest.mark.parametrize("group", [1, 2])
def test_branch_of_kxk_then_1x1_merges(group):
    """The mirror of DBB's transform III: a strided, biased 3x3 followed by a 1x1 is one 3x3 (no
    padding of an intermediate is involved, so the bias is no obstacle)."""
    b = Block(8, (7, 7), seed=40 + group)
    x = b.x
    chain = b.conv(b.conv(x, 8, 3, strides=2, group=group, bias=True), 8, 1, group=group)
    model = b.model(b.add(chain, b.conv(x, 8, 3, strides=2, group=group)))
    assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=1, **{"1x1_kxk": 1}),
                  conv=dict(P3, strides=[2, 2], group=group))


def test_bn_then_padded_conv_names_the_bn_stage():
    """BN(x) -> padded 3x3 beside a 3x3: the BN's shift would pad wrongly; the reason must not
    blame a 1x1 conv that is not there."""
    b = Block(4, (7, 7), seed=44)
    model = b.model(b.add(b.conv(b.x, 4, 3), b.conv(b.bn(b.x), 4, 3)))
    result = assert_declines(model, "first stage's bias is non-zero and the next conv pads")
    assert not any("1x1 conv" in s.reason for s in result.skipped)


def test_dbb_branch_with_nonzero_bias_and_padding_declines_the_sum():
    b = Block(4, (7, 7), seed=23)
    model = b.model(b.add(b.conv_bn(b.x, 4, 3), _chain(b, bias=True, bn=False, pads=1, mid=6, cout=4)))
    result = assert_declines(model, "bias is non-zero and the next conv pads")
    # reported once, for the sum (the chain is not examined again on its own)
    assert sum("bias is non-zero" in s.reason for s in result.skipped) == 1


# ---------------------------------------------------------------------------------------------
# 7. Every decline leaves the model untouched and says why


def _strides(b):  # 5x5 input: 3x3 s1 p0 and 3x3 s2 p1 both give 3x3
    return b.add(b.conv(b.x, 4, 3, pads=0), b.conv(b.x, 4, 3, pads=1, strides=2))


def _dilations(b):
    return b.add(b.conv(b.x, 4, 3, pads=1), b.conv(b.x, 4, 3, pads=2, dilations=2))


def _groups(b):
    return b.add(b.conv(b.x, 4, 3), b.conv(b.x, 4, 3, group=2))


def _off_centre(b):  # both 3x3 outputs are HxW, but the windows sit one row/column apart
    return b.add(b.conv(b.x, 4, 3, pads=1), b.conv(b.x, 4, 3, pads=[2, 2, 0, 0]))


def _weight_input(b):
    w = b.input("w", [4, 4, 3, 3])
    return b.add(b.conv(b.x, 4, 3, weight=w), b.conv(b.x, 4, 1))


def _read_elsewhere(b):
    c = b.conv(b.x, 4, 3)
    b.extra = [b.relu(c)]
    return b.add(c, b.conv(b.x, 4, 1))


def _inner_read_elsewhere(b):  # the Conv under a branch's BN feeds another node too
    c = b.conv(b.x, 4, 3)
    b.extra = [b.relu(c)]
    return b.add(b.bn(c), b.conv_bn(b.x, 4, 1))


def _graph_output(b):
    c = b.conv(b.x, 4, 3)
    b.extra = [c]
    return b.add(c, b.conv(b.x, 4, 1))


def _different_inputs(b):
    z = b.input("z", [1, 4, 7, 7])
    return b.add(b.conv_bn(b.x, 4, 3), b.conv_bn(z, 4, 1))


def _avgpool_excluding_pad(b):
    return b.add(b.conv(b.x, 4, 3), b.avgpool(b.x, 3, pads=1, count_include_pad=0))


def _avgpool_ceil_mode(b):
    """8x8: the pool's ceil_mode gives 4x4 with a partial last window; the conv pads its end."""
    pool = b.node("AveragePool", [b.x], 4, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    return b.add(b.conv(b.x, 4, 3, strides=2, pads=[0, 0, 1, 1]), pool)


def _read_twice(b):
    c = b.conv(b.x, 4, 3)
    return b.add(b.add(c, c), b.conv(b.x, 4, 1))


def _broadcast(b):  # 3x3 input: a 3x3 p1 gives [1,4,3,3], a 3x3 p0 gives [1,4,1,1]
    return b.add(b.conv(b.x, 4, 3, pads=1), b.conv(b.x, 4, 3, pads=0))


def _strided_1x1_pool_after_conv(b):  # 5x5: AvgPool(1x1, s2)(Conv3x3 p0) and Conv4x4 p0 are both 2x2
    pooled = b.node("AveragePool", [b.conv(b.x, 4, 3, pads=0)], 4, kernel_shape=[1, 1], strides=[2, 2])
    return b.add(pooled, b.conv(b.x, 4, 4, pads=0))


def _same_with_stride_over_window(b):  # 8x8, stride 4: SAME would need negative padding
    same = b.node("Conv", [b.x, b.const(b.arr(4, 4, 2, 2))], 4, kernel_shape=[2, 2], auto_pad="SAME_UPPER",
                  strides=[4, 4])
    one = b.node("Conv", [b.x, b.const(b.arr(4, 4, 1, 1))], 4, kernel_shape=[1, 1], auto_pad="SAME_UPPER",
                 strides=[4, 4])
    return b.add(same, one)


DECLINES = [
    ("strided-1x1-pool-after-conv", (5, 5), _strided_1x1_pool_after_conv, "one must be 1x1, stride 1"),
    ("same-stride-over-window", (8, 8), _same_with_stride_over_window, "stride larger than its window"),
    ("strides", (5, 5), _strides, "different strides"),
    ("dilations", (7, 7), _dilations, "different dilations"),
    ("groups", (7, 7), _groups, "different group counts"),
    ("off-centre", (7, 7), _off_centre, "off-centre padding"),
    ("weight-is-input", (7, 7), _weight_input, "not a float constant"),
    ("branch-read-elsewhere", (7, 7), _read_elsewhere, "is also read by"),
    ("inner-read-elsewhere", (7, 7), _inner_read_elsewhere, "is also read by"),
    ("branch-is-graph-output", (7, 7), _graph_output, "is a graph output"),
    ("different-inputs", (7, 7), _different_inputs, "read different tensors"),
    ("avgpool-count-include-pad-0", (7, 7), _avgpool_excluding_pad, "count_include_pad"),
    ("broadcast", (3, 3), _broadcast, "broadcast"),
    ("avgpool-ceil-mode", (8, 8), _avgpool_ceil_mode, "ceil_mode"),
    ("branch-read-twice", (7, 7), _read_twice, "read twice"),
    ("sequential-bias-pads", (7, 7), lambda b: _chain(b, bias=True, bn=False, pads=1),
     "bias is non-zero and the next conv pads"),
]


@pytest.mark.parametrize("spatial,build,reason", [d[1:] for d in DECLINES], ids=[d[0] for d in DECLINES])
def test_decline_leaves_model_untouched_and_says_why(spatial, build, reason):
    b = Block(4, spatial, seed=24)
    y = build(b)
    model = b.model(y, *b.extra)
    assert_declines(model, reason)


def test_per_activation_bn_between_convs_is_left_alone():
    """Opset 7 BN with spatial=0 has [C, H, W] parameters: not a per-channel map, no crash."""
    c, h = 4, 6
    rng = np.random.default_rng(26)
    inits = {"w1": rng.standard_normal((c, c, 1, 1)), "w2": rng.standard_normal((c, c, 3, 3)),
             "g": rng.uniform(0.5, 1.5, (c, h, h)), "b": rng.standard_normal((c, h, h)),
             "m": rng.standard_normal((c, h, h)), "v": rng.uniform(0.5, 1.5, (c, h, h))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["n"], spatial=0),
             helper.make_node("Conv", ["n", "w2"], ["y"], kernel_shape=[3, 3])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, h - 2, h - 2])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=4)
    out, result = apply(Reparameterize(), model)
    assert out is model and not result.changed and result.stats == {}


def test_decline_in_one_block_does_not_stop_the_next():
    b = Block(4, (7, 7), seed=25)
    bad = _groups(b)
    model = b.model(b.relu(b.add_all([b.conv_bn(bad, 4, 3), b.conv_bn(bad, 4, 1), b.bn(bad)])))
    out, result = apply(Reparameterize(), model)
    assert result.changed and result.stats == merged_stats(conv=2, bn=1)
    assert count_ops(out) == {"Conv": 3, "Add": 1, "Relu": 1}
    assert any("different group counts" in s.reason for s in result.skipped), result.skipped
    # the declined region is exactly as it was
    before = [n for n in model.graph.node][:3]
    assert [n.SerializeToString() for n in out.graph.node[:3]] == [n.SerializeToString() for n in before]
    onnx.checker.check_model(out, full_check=True)
    assert_exact(model, out)


# ---------------------------------------------------------------------------------------------
# 8. The zoo: RepVGG / MobileOne reach their deploy form; other models come back byte-identical

REPARAMETERIZABLE = ["repvgg_a0-tiny", "mobileone_s0-tiny"]


@pytest.mark.parametrize("spec", ["reparam", "fold-bn,reparam"])
@pytest.mark.parametrize("name", REPARAMETERIZABLE)
def test_zoo_model_reaches_its_deploy_form(name, spec):
    model, deploy = models.build(name), models.build(f"{name}-deploy")
    run = Pipeline.parse(spec, rtol=1e-5).run(model, serialized=model.SerializeToString())
    assert [p.status for p in run.report.passes] == ["applied"] * len(spec.split(","))
    rep = run.report.passes[-1]
    assert rep.name == "reparam" and rep.skipped == []
    assert rep.stats["sums_merged"] == count_ops(deploy)["Conv"]  # every block is one sum
    out = run.model
    assert count_ops(out) == count_ops(deploy)
    assert convs(out) == convs(deploy)
    onnx.checker.check_model(out, full_check=True)
    assert_exact(model, out, rtol=1e-5)
    again, second = apply(Reparameterize(), out)
    assert not second.changed and again is out


@pytest.mark.parametrize("name", REPARAMETERIZABLE)
def test_zoo_model_with_weights_in_constant_nodes_reaches_its_deploy_form(name):
    """Some exports hold weights in Constant nodes: the result is the same deploy structure."""
    model = models.build(name, constant_weights=True)
    deploy = models.build(f"{name}-deploy", constant_weights=True)
    out, result = apply(Reparameterize(), model)
    assert result.changed and result.skipped == []
    without_constants = lambda m: {k: v for k, v in count_ops(m).items() if k != "Constant"}  # noqa: E731
    assert without_constants(out) == without_constants(deploy)
    assert convs(out) == convs(deploy)
    assert_exact(model, out, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0"])
def test_full_size_zoo_model_reaches_its_deploy_form(name):
    model, deploy = models.build(name), models.build(f"{name}-deploy")
    out, result = apply(Reparameterize(), model)
    assert result.changed and result.skipped == []
    assert count_ops(out) == count_ops(deploy)
    assert convs(out) == convs(deploy)
    assert_exact(model, out, rtol=1e-5)


@pytest.mark.parametrize("name", ["resnet18-tiny", "resnet50-tiny", "mobilenetv2-tiny", "vgg16_bn-tiny",
                                  "repvgg_a0-tiny-deploy", "mobileone_s0-tiny-deploy"])
def test_zoo_model_without_branches_is_byte_identical(name):
    model = models.build(name)
    data = model.SerializeToString()
    run = Pipeline.parse("reparam").run(model, serialized=data)
    assert run.report.passes[0].status == "unchanged"
    assert run.model.SerializeToString() == data


# ---------------------------------------------------------------------------------------------
# 9. Other ranks and types


def test_conv1d_repvgg_block_merges():
    b = Block(6, (11,), seed=26)
    x = b.x
    model = b.model(b.relu(b.add_all([b.conv_bn(x, 6, 3), b.conv_bn(x, 6, 1), x])))
    out, _ = assert_merges(model, ops={"Conv": 1, "Relu": 1}, stats=merged_stats(conv=2, identity=1))
    assert convs(out) == [dict(kernel_shape=[3], strides=[1], pads=[1, 1], dilations=[1], group=1)]


def test_conv3d_block_merges():
    b = Block(4, (5, 5, 5), seed=27)
    x = b.x
    model = b.model(b.add_all([b.conv(x, 4, 3), b.conv(x, 4, 1, bias=True), b.bn(x)]))
    out, _ = assert_merges(model, ops={"Conv": 1}, stats=merged_stats(conv=2, bn=1))
    assert convs(out)[0]["kernel_shape"] == [3, 3, 3] and convs(out)[0]["pads"] == [1] * 6


def test_float16_repvgg_block_merges_in_float16():
    b = Block(4, (7, 7), dtype=np.float16, seed=28)
    model = b.model(_repvgg(b))
    out, result = apply(Reparameterize(), model)
    assert result.changed and result.stats == merged_stats(conv=2, bn=1)
    assert count_ops(out) == {"Conv": 1}
    onnx.checker.check_model(out, full_check=True)
    assert all(t.data_type == TensorProto.FLOAT16 for t in out.graph.initializer)
    fid = fidelity(model, out)
    assert fid.max_rel <= 8 * float(np.finfo(np.float16).eps), fid
    assert not apply(Reparameterize(), out)[1].changed


def test_dynamic_batch_merges_without_verification_and_stays_dynamic():
    """reparam needs static shapes: the pipeline resolves the batch for its analysis even with
    verification off, and the written model keeps its symbolic batch dimension."""
    model = models.build("repvgg_a0-tiny")
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    run = Pipeline.parse("reparam", verify=False).run(model)
    assert run.report.passes[0].status == "applied"
    assert count_ops(run.model)["Conv"] == 8
    assert run.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert_exact(model, run.model, input_shapes={"input": (3, 3, 32, 32)})
