"""Channel-coupling analysis and channel surgery, one small hand-built graph per coupling kind.

For every kind: (a) the analysis finds the groups it should (sizes, producers, frozen or not),
(b) an empty keep-set and the Prune pass at ratio 0 change nothing, bit for bit, and (c) removing
filters that were made all-zero (weights and bias) is exact: only ops that map 0 to 0 sit between
them and their readers, so the pruned model must reproduce the original's outputs, both through
`shrink` with an explicit keep-set and through the Prune pass (criterion l1 ranks the zero filters
lowest) at the ratio that removes exactly them. Where an op does not map 0 to 0 (Sigmoid, BN with a
shift, HardSigmoid), the reference is the original model with the *readers'* input columns of the
removed channels zeroed instead: what the pruned model computes, exactly.

Models run in onnxruntime with graph optimizations disabled."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import models
from onnxopt.analysis.channels import ChannelAnalysis
from onnxopt.graph.core import Graph
from onnxopt.graph.shrink import shrink
from onnxopt.passes.prune import Prune
from onnxopt.pipeline.run import Pipeline
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
from onnxopt.testing import apply

RTOL, ATOL = 1e-5, 1e-6
F32 = np.float32


# ---------------------------------------------------------------------------------------------
# building graphs


class Builder:
    """Nodes and seeded float32 initializers; a conv named N produces tensor N and holds N.w, N.b."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def rand(self, *shape, lo=None, hi=None) -> np.ndarray:
        if lo is not None:
            return self.rng.uniform(lo, hi, shape).astype(F32)
        return (0.5 * self.rng.standard_normal(shape)).astype(F32)

    def const(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs, output: str | list[str], *, name: str | None = None, domain: str = "",
             **attrs) -> str:
        outputs = [output] if isinstance(output, str) else output
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name or outputs[0], domain=domain,
                                           **attrs))
        return outputs[0]

    def conv(self, name: str, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True,
             **attrs) -> str:
        self.inits[f"{name}.w"] = self.rand(cout, cin // group, k, k)
        ins = [x, f"{name}.w"]
        if bias:
            self.inits[f"{name}.b"] = self.rand(cout)
            ins.append(f"{name}.b")
        if k > 1 and "pads" not in attrs and "strides" not in attrs:
            attrs["pads"] = [k // 2] * 4
        return self.node("Conv", ins, name, kernel_shape=[k, k], group=group, **attrs)

    def zero(self, name: str, channels, axis: int = 0) -> None:
        """Make filters `channels` of layer `name` all-zero: weight slices along `axis` and bias."""
        w = self.inits[f"{name}.w"]
        index = [slice(None)] * w.ndim
        index[axis] = list(channels)
        w[tuple(index)] = 0
        if f"{name}.b" in self.inits:
            self.inits[f"{name}.b"][list(channels)] = 0

    def model(self, inputs, outputs, domains=()) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
        onnx.checker.check_model(model, full_check=True)
        return model


# ---------------------------------------------------------------------------------------------
# helpers


def analyze(model):
    graph = Graph(model, input_shapes=resolve_input_shapes(model))
    return graph, ChannelAnalysis(graph)


def group_of(analysis, node_name: str):
    """The group of layer `node_name`'s channels; `name@k` for the part starting at channel k of
    a layer whose channels the analysis cut into parts."""
    name, _, offset = node_name.partition("@")
    found = [g for g in analysis.groups if any(
        s.producer is not None and s.producer.name == name and (not offset or s.offset == int(offset))
        for s in g.spaces)]
    assert len(found) == 1, f"{node_name}: {len(found)} groups"
    return found[0]


def inits(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def attr(model, node_name: str, key: str):
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == key)


def feeds_for(model, count=2):
    return random_feeds(model, resolve_input_shapes(model), seed=7, count=count)


def outputs(model, feeds):
    return run_model(model, feeds)


def assert_close(reference, candidate):
    for ref, got in zip(reference, candidate):
        assert ref.keys() == got.keys()
        for k in ref:
            assert ref[k].shape == got[k].shape, k
            np.testing.assert_allclose(got[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=k)


def shrunk(model, remove: dict[str, list[int]]):
    """`model` with channels `remove[name]` of the group that layer `name` produces removed."""
    graph, analysis = analyze(model)
    keep = {}
    for name, channels in remove.items():
        grp = group_of(analysis, name)
        assert grp.frozen is None, grp.frozen
        keep[grp.id] = np.setdiff1d(np.arange(grp.size), channels)
    edited = shrink(graph, analysis, keep)
    assert edited > 0
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    return out


def assert_unchanged_at_ratio_zero(model):
    feeds = feeds_for(model)
    reference = outputs(model, feeds)
    graph, analysis = analyze(model)
    assert shrink(graph, analysis, {}) == 0
    assert graph.mutations == 0
    same = graph.to_model()
    assert {k: v.tobytes() for k, v in inits(same).items()} == {k: v.tobytes() for k, v in inits(model).items()}
    assert [n.SerializeToString() for n in same.graph.node] == [n.SerializeToString() for n in model.graph.node]
    for ref, got in zip(reference, outputs(same, feeds)):
        for k in ref:
            assert np.array_equal(ref[k], got[k])
    out, result = apply(Prune(round_to=1, ratio=0.0), model)
    assert not result.changed and out is model


def check_pruning(model, remove: dict[str, list[int]], shapes: dict[str, tuple], *, ratio: float,
                  reference_model=None, values: dict[str, np.ndarray] | None = None):
    """Prune `remove` by shrink and by the Prune pass (l1, `ratio`); both must give `shapes`
    (initializer name -> shape), `values` where given, and the outputs of `reference_model`
    (default: `model`). Returns the shrunk model."""
    feeds = feeds_for(model)
    reference = outputs(reference_model or model, feeds)
    before = inits(model)
    values = dict(values or {})
    _, analysis = analyze(model)
    gone: dict[str, list[int]] = {}  # every producer of a pruned group loses those filters' bias entries
    for name, channels in remove.items():
        for space in group_of(analysis, name).spaces:
            if space.producer is not None:
                gone.setdefault(space.producer.name, []).extend(space.offset + c for c in channels)
    for producer, channels in gone.items():
        bias = f"{producer}.b"
        if bias in before:
            values.setdefault(bias, np.delete(before[bias], channels))
            shapes = {**shapes, bias: (before[bias].size - len(channels),)}
    by_shrink = shrunk(model, remove)
    by_pass, result = apply(Prune(round_to=1, ratio=ratio, criterion="l1"), model)
    assert result.changed
    assert result.stats["channels removed"] == sum(len(v) for v in remove.values())
    assert result.stats["groups pruned"] == len(remove)
    onnx.checker.check_model(by_pass, full_check=True)
    for candidate in (by_shrink, by_pass):
        got = inits(candidate)
        for name, shape in shapes.items():
            assert got[name].shape == tuple(shape), (name, got[name].shape, shape)
        for name, value in values.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        # everything not listed keeps its value
        for name, value in before.items():
            if name not in shapes and name in got:
                assert np.array_equal(got[name], value), f"{name} changed"
        assert_close(reference, outputs(candidate, feeds))
    return by_shrink


def zero_columns(model, reader: str, columns, axis: int = 1):
    """`model` with the input columns `columns` of layer `reader` zeroed (the exact oracle of a
    pruned model whose removed channels pass through ops that do not map 0 to 0)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for t in m.graph.initializer:
        if t.name == f"{reader}.w":
            w = numpy_helper.to_array(t).copy()
            index = [slice(None)] * w.ndim
            index[axis] = list(columns)
            w[tuple(index)] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return m


def summary(analysis):
    """{first producer name: (size, number of producers, frozen?)} of groups with producers."""
    return {g.producers[0].name: (g.size, len(g.producers), g.frozen is not None)
            for g in analysis.groups if g.producers}


X = ("x", [1, 3, 8, 8])


# ---------------------------------------------------------------------------------------------
# 1. Conv -> Relu -> Conv


def chain_model():
    b = Builder(1)
    b.conv("conv1", "x", 3, 8)
    b.node("Relu", ["conv1"], "r")
    b.conv("conv2", "r", 8, 6)
    b.zero("conv1", [1, 5])
    return b.model([X], [("conv2", [1, 6, 8, 8])]), b


def test_chain_groups():
    model, _ = chain_model()
    _, a = analyze(model)
    assert summary(a) == {"conv1": (8, 1, False), "conv2": (6, 1, True)}
    g1 = group_of(a, "conv1")
    assert [r.name for r in g1.readers] == ["conv2"] and g1.blocks == 1
    assert "graph output 'conv2'" in group_of(a, "conv2").frozen
    assert [g.producers[0].name for g in a.prunable] == ["conv1"]
    source = [g for g in a.groups if not g.producers]
    assert len(source) == 1 and source[0].size == 3 and "graph input" in source[0].frozen
    assert a.unknown == []
    assert len(a.maps["r"]) == 8 and np.array_equal(a.maps["r"].index, np.arange(8))


def test_chain_ratio_zero_is_identity():
    assert_unchanged_at_ratio_zero(chain_model()[0])


def test_chain_prunes_exactly():
    model, b = chain_model()
    check_pruning(model, {"conv1": [1, 5]}, {"conv1.w": (6, 3, 3, 3), "conv1.b": (6,), "conv2.w": (6, 6, 3, 3)},
                  ratio=0.25, values={"conv2.w": np.delete(b.inits["conv2.w"], [1, 5], axis=1)})


# ---------------------------------------------------------------------------------------------
# 2. heads: GAP -> Flatten -> Gemm, Flatten of CxHxW -> Gemm, Reshape -> MatMul, Gemm/MatMul producers


def head_model(kind):
    b = Builder(2)
    if kind in ("gemm_producer", "matmul_producer"):
        if kind == "gemm_producer":
            b.inits["fc1.w"], b.inits["fc1.b"] = b.rand(10, 8), b.rand(8)
            b.node("Gemm", ["x", "fc1.w", "fc1.b"], "fc1")
            b.zero("fc1", [0, 6], axis=1)
        else:
            b.inits["fc1.w"] = b.rand(10, 8)
            b.node("MatMul", ["x", "fc1.w"], "fc1")
            b.zero("fc1", [0, 6], axis=1)
        b.node("Relu", ["fc1"], "r")
        b.inits["fc2.w"], b.inits["fc2.b"] = b.rand(4, 8), b.rand(4)
        b.node("Gemm", ["r", "fc2.w", "fc2.b"], "fc2", transB=1)
        model = b.model([("x", [2, 10])], [("fc2", [2, 4])])
        return model, b, {"fc1": [0, 6]}, {"fc1.w": (10, 6), "fc2.w": (4, 6)} | (
            {"fc1.b": (6,)} if kind == "gemm_producer" else {}), {
            "fc2.w": np.delete(b.inits["fc2.w"], [0, 6], axis=1)}
    if kind == "matmul_add":  # torch's Linear without Gemm: MatMul + Add of a [F] bias
        b.inits["fc1.w"] = b.rand(10, 8)
        b.node("MatMul", ["x", "fc1.w"], "fc1")
        b.const("fc1.bias", b.rand(8))
        b.inits["fc1.bias"][[0, 6]] = 0
        b.node("Add", ["fc1", "fc1.bias"], "a1")
        b.node("Relu", ["a1"], "r")
        b.inits["fc2.w"] = b.rand(8, 4)
        b.node("MatMul", ["r", "fc2.w"], "fc2")
        b.zero("fc1", [0, 6], axis=1)
        model = b.model([("x", [2, 10])], [("fc2", [2, 4])])
        return model, b, {"fc1": [0, 6]}, {"fc1.w": (10, 6), "fc1.bias": (6,), "fc2.w": (6, 4)}, {
            "fc1.bias": np.delete(b.inits["fc1.bias"], [0, 6]), "fc2.w": np.delete(b.inits["fc2.w"], [0, 6], axis=0)}
    if kind in ("gap", "reducemean", "squeeze"):
        b.conv("conv1", "x", 3, 8)
        b.node("Relu", ["conv1"], "r")
        if kind == "gap":
            b.node("GlobalAveragePool", ["r"], "gap")
            b.node("Flatten", ["gap"], "flat")
        elif kind == "reducemean":
            b.node("ReduceMean", ["r"], "flat", axes=[2, 3], keepdims=0)
        else:
            b.node("GlobalAveragePool", ["r"], "gap")
            b.const("sq_axes", np.array([2, 3], np.int64))
            b.node("Squeeze", ["gap", "sq_axes"], "flat")
        b.inits["fc.w"], b.inits["fc.b"] = b.rand(5, 8), b.rand(1, 5)  # a [1, M] bias
        b.node("Gemm", ["flat", "fc.w", "fc.b"], "fc", transB=1)
        b.zero("conv1", [2, 7])
        model = b.model([X], [("fc", [1, 5])])
        return model, b, {"conv1": [2, 7]}, {"conv1.w": (6, 3, 3, 3), "conv1.b": (6,), "fc.w": (5, 6)}, {
            "fc.w": np.delete(b.inits["fc.w"], [2, 7], axis=1)}
    # conv 3->4, stride 2: [1, 4, 3, 3] flattened to 36 columns; channel 1 owns columns 9..17
    b.conv("conv1", "x", 3, 4, strides=[2, 2], pads=[1, 1, 1, 1])
    b.node("Relu", ["conv1"], "r")
    cols = list(range(9, 18))
    if kind == "flatten":
        b.node("Flatten", ["r"], "flat")
        b.inits["fc.w"], b.inits["fc.b"] = b.rand(5, 36), b.rand(5)
        b.node("Gemm", ["flat", "fc.w", "fc.b"], "fc", transB=1)
        expected = {"conv1.w": (3, 3, 3, 3), "fc.w": (5, 27)}
        values = {"fc.w": np.delete(b.inits["fc.w"], cols, axis=1)}
    else:  # reshape + matmul with a [K, M] constant
        b.const("shape", np.array([1, 36], np.int64))
        b.node("Reshape", ["r", "shape"], "flat")
        b.inits["fc.w"] = b.rand(36, 5)
        b.node("MatMul", ["flat", "fc.w"], "fc")
        expected = {"conv1.w": (3, 3, 3, 3), "fc.w": (27, 5), "shape": (2,)}
        values = {"fc.w": np.delete(b.inits["fc.w"], cols, axis=0), "shape": np.array([1, 27])}
    b.zero("conv1", [1])
    model = b.model([("x", [1, 3, 6, 6])], [("fc", [1, 5])])
    return model, b, {"conv1": [1]}, expected | {"conv1.b": (3,)}, values


HEADS = ["gap", "reducemean", "squeeze", "flatten", "reshape_matmul", "gemm_producer", "matmul_producer", "matmul_add"]


@pytest.mark.parametrize("kind", HEADS)
def test_head_groups(kind):
    model, _, remove, _, _ = head_model(kind)
    _, a = analyze(model)
    (name,) = remove
    grp = group_of(a, name)
    assert grp.frozen is None and [g.id for g in a.prunable] == [grp.id]
    assert grp.size == (4 if kind in ("flatten", "reshape_matmul") else 8)
    assert [r.op for r in grp.readers] == [{"reshape_matmul": "MatMul", "matmul_add": "MatMul"}.get(kind, "Gemm")]
    if kind in ("flatten", "reshape_matmul"):
        m = a.maps["flat"]
        assert len(m) == 36 and np.array_equal(m.index, np.repeat(np.arange(4), 9))


@pytest.mark.parametrize("kind", HEADS)
def test_head_ratio_zero_is_identity(kind):
    assert_unchanged_at_ratio_zero(head_model(kind)[0])


@pytest.mark.parametrize("kind", HEADS)
def test_head_prunes_exactly(kind):
    model, _, remove, shapes, values = head_model(kind)
    check_pruning(model, remove, shapes, ratio=0.25, values=values)


# ---------------------------------------------------------------------------------------------
# 3. residual Add


def residual_model():
    """conv0 -> relu -> r0 -> conv1 -> relu -> conv2; Add(conv2, r0) -> relu -> conv3."""
    b = Builder(3)
    b.conv("conv0", "x", 3, 8)
    b.node("Relu", ["conv0"], "r0")
    b.conv("conv1", "r0", 8, 8)
    b.node("Relu", ["conv1"], "r1")
    b.conv("conv2", "r1", 8, 8)
    b.node("Add", ["conv2", "r0"], "sum")
    b.node("Relu", ["sum"], "r2")
    b.conv("conv3", "r2", 8, 6)
    b.zero("conv0", [0, 3])
    b.zero("conv2", [0, 3])
    b.zero("conv1", [2, 5])
    return b.model([X], [("conv3", [1, 6, 8, 8])]), b


def test_residual_groups():
    model, _ = residual_model()
    _, a = analyze(model)
    assert summary(a) == {"conv0": (8, 2, False), "conv1": (8, 1, False), "conv3": (6, 1, True)}
    g = group_of(a, "conv0")
    assert g is group_of(a, "conv2")
    assert sorted(p.name for p in g.producers) == ["conv0", "conv2"]
    assert sorted(r.name for r in g.readers) == ["conv1", "conv3"]
    assert len(a.prunable) == 2


def test_residual_ratio_zero_is_identity():
    assert_unchanged_at_ratio_zero(residual_model()[0])


def test_residual_prunes_one_keep_set_exactly():
    model, b = residual_model()
    check_pruning(model, {"conv0": [0, 3], "conv1": [2, 5]},
                  {"conv0.w": (6, 3, 3, 3), "conv0.b": (6,), "conv1.w": (6, 6, 3, 3), "conv1.b": (6,),
                   "conv2.w": (6, 6, 3, 3), "conv2.b": (6,), "conv3.w": (6, 6, 3, 3)},
                  ratio=0.25, values={"conv2.w": np.delete(np.delete(b.inits["conv2.w"], [0, 3], 0), [2, 5], 1),
                                      "conv3.w": np.delete(b.inits["conv3.w"], [0, 3], 1)})


def test_add_with_graph_input_is_frozen():
    b = Builder(4)
    b.conv("conv1", "x", 4, 4)
    b.node("Add", ["conv1", "x"], "sum")
    b.node("Relu", ["sum"], "r")
    b.conv("conv2", "r", 4, 6)
    model = b.model([("x", [1, 4, 8, 8])], [("conv2", [1, 6, 8, 8])])
    _, a = analyze(model)
    g = group_of(a, "conv1")
    assert g.size == 4 and "graph input" in g.frozen
    assert a.prunable == []
    out, result = apply(Prune(round_to=1, ratio=0.5), model)
    assert not result.changed and out is model
    assert "no prunable channel group" in result.notes
    assert any(s.where == "Conv 'conv1'" and "graph input" in s.reason for s in result.skipped)


# ---------------------------------------------------------------------------------------------
# 4. element-wise ops


def two_conv_model(op):
    b = Builder(5)
    b.conv("convA", "x", 3, 8)
    b.conv("convB", "x", 3, 8)
    b.node(op, ["convA", "convB"], "ew")
    b.node("Relu", ["ew"], "r")
    b.conv("convC", "r", 8, 6)
    b.zero("convA", [1, 6])
    b.zero("convB", [1, 6])
    return b.model([X], [("convC", [1, 6, 8, 8])]), b


@pytest.mark.parametrize("op", ["Mul", "Sub", "Add", "Max"])
def test_elementwise_two_convs_share_a_group(op):
    model, b = two_conv_model(op)
    _, a = analyze(model)
    assert summary(a) == {"convA": (8, 2, False), "convC": (6, 1, True)}
    assert_unchanged_at_ratio_zero(model)
    check_pruning(model, {"convA": [1, 6]}, {"convA.w": (6, 3, 3, 3), "convB.w": (6, 3, 3, 3), "convB.b": (6,),
                                             "convA.b": (6,), "convC.w": (6, 6, 3, 3)}, ratio=0.25)


def per_channel_const_model():
    b = Builder(6)
    b.conv("conv1", "x", 3, 8)
    gone = [2, 5]
    k_add, k_sub = b.rand(1, 8, 1, 1), b.rand(8, 1, 1)
    k_add[0, gone] = 0  # shifts of removed channels are 0: removal stays exact
    k_sub[gone] = 0
    b.const("k_mul", b.rand(8, 1, 1, lo=0.5, hi=2))
    b.const("k_add", k_add)
    b.const("k_sub", k_sub)
    b.const("k_div", b.rand(1, 8, 1, 1, lo=0.5, hi=2))
    b.const("s_mul", np.array([2.0], F32))
    b.const("s_div", np.array(4.0, F32))
    b.const("k_rev", np.zeros((8, 1, 1), F32) + b.rand(8, 1, 1) * np.isin(np.arange(8), gone, invert=True)[:, None, None])
    b.node("Mul", ["conv1", "k_mul"], "m1")
    b.node("Add", ["k_add", "m1"], "m2")          # constant first
    b.node("Sub", ["m2", "k_sub"], "m3")
    b.node("Div", ["m3", "k_div"], "m4")
    b.node("Mul", ["m4", "s_mul"], "m5")
    b.node("Div", ["m5", "s_div"], "m6")
    b.node("Add", ["m6", "k_rev"], "m7")
    b.node("Relu", ["m7"], "r")
    b.conv("conv2", "r", 8, 6)
    b.zero("conv1", gone)
    return b.model([X], [("conv2", [1, 6, 8, 8])]), b, gone


def test_per_channel_constants_are_sliced_scalars_untouched():
    model, b, gone = per_channel_const_model()
    _, a = analyze(model)
    assert summary(a) == {"conv1": (8, 1, False), "conv2": (6, 1, True)}
    assert_unchanged_at_ratio_zero(model)
    pruned = check_pruning(
        model, {"conv1": gone},
        {"conv1.w": (6, 3, 3, 3), "k_mul": (6, 1, 1), "k_add": (1, 6, 1, 1), "k_sub": (6, 1, 1),
         "k_div": (1, 6, 1, 1), "k_rev": (6, 1, 1), "s_mul": (1,), "s_div": (), "conv2.w": (6, 6, 3, 3)},
        ratio=0.25, values={"k_mul": np.delete(b.inits["k_mul"], gone, 0),
                            "k_div": np.delete(b.inits["k_div"], gone, 1)})
    got = inits(pruned)
    assert got["s_mul"].tolist() == [2.0] and float(got["s_div"]) == 4.0


# ---------------------------------------------------------------------------------------------
# 5. Concat on the channel axis


def concat_model():
    b = Builder(7)
    b.conv("convA", "x", 3, 4)
    b.conv("convB", "x", 3, 6)
    b.node("Concat", ["convA", "convB"], "cat", axis=1)
    b.node("Relu", ["cat"], "r")
    b.conv("convC", "r", 10, 5)
    b.zero("convA", [1])
    b.zero("convB", [4])
    return b.model([X], [("convC", [1, 5, 8, 8])]), b


def test_concat_groups():
    model, _ = concat_model()
    _, a = analyze(model)
    assert summary(a) == {"convA": (4, 1, False), "convB": (6, 1, False), "convC": (5, 1, True)}
    for name in ("convA", "convB"):
        assert [r.name for r in group_of(a, name).readers] == ["convC"]
    m = a.maps["cat"]
    assert np.array_equal(m.index, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5])
    assert len(set(m.space[:4].tolist())) == 1 and len(set(m.space[4:].tolist())) == 1
    assert m.space[0] != m.space[4]


def test_concat_ratio_zero_is_identity():
    assert_unchanged_at_ratio_zero(concat_model()[0])


def test_concat_reader_columns_cut_at_offsets():
    model, b = concat_model()
    # channel 1 of A sits at column 1, channel 4 of B at column 4 + 4 = 8
    check_pruning(model, {"convA": [1], "convB": [4]},
                  {"convA.w": (3, 3, 3, 3), "convB.w": (5, 3, 3, 3), "convC.w": (5, 8, 3, 3)},
                  ratio=0.25, values={"convC.w": np.delete(b.inits["convC.w"], [1, 8], axis=1)})


# ---------------------------------------------------------------------------------------------
# 6. Split and Slice on the channel axis


def split_model(sizes, gone):
    """conv1 (8) -> relu -> Split(axis 1, constant sizes or equal parts) -> convP, convQ."""
    b = Builder(8)
    b.conv("conv1", "x", 3, 8)
    b.node("Relu", ["conv1"], "r")
    parts = sizes or [4, 4]
    ins = ["r", b.const("split", np.array(sizes, np.int64))] if sizes else ["r"]
    b.node("Split", ins, ["s0", "s1"], name="split_node", axis=1)
    b.conv("convP", "s0", parts[0], 4)
    b.conv("convQ", "s1", parts[1], 4)
    b.zero("conv1", gone)
    return b.model([X], [("convP", [1, 4, 8, 8]), ("convQ", [1, 4, 8, 8])]), b




def test_split_off_the_channel_axis_does_not_crash():
    """A Split along H, Concat back: channels pass through both halves unchanged."""
    b = Builder(8)
    b.conv("conv1", "x", 3, 8)
    b.node("Split", ["conv1"], ["h0", "h1"], name="hsplit", axis=2)
    b.node("Concat", ["h1", "h0"], "cat", axis=2)
    b.node("Relu", ["cat"], "r")
    b.conv("conv2", "r", 8, 6)
    b.zero("conv1", [0, 7])
    model = b.model([X], [("conv2", [1, 6, 8, 8])])
    check_pruning(model, {"conv1": [0, 7]}, {"conv1.w": (6, 3, 3, 3), "conv2.w": (6, 6, 3, 3)}, ratio=0.25)


@pytest.mark.parametrize("sizes,gone", [
    pytest.param([3, 5], [1, 6]),
    pytest.param(None, [1, 2]),
    pytest.param(None, [1, 6]),
], ids=["constant-sizes", "equal-parts-uneven-cut", "equal-parts-even-cut"])
def test_split_on_channel_axis(sizes, gone):
    model, b = split_model(sizes, gone)
    _, a = analyze(model)
    assert summary(a) == {"conv1": (8, 1, False), "convP": (4, 1, True), "convQ": (4, 1, True)}
    assert sorted(r.name for r in group_of(a, "conv1").readers) == ["convP", "convQ"]
    parts = sizes or [4, 4]
    assert np.array_equal(a.maps["s1"].index, np.arange(parts[0], 8))
    assert_unchanged_at_ratio_zero(model)
    new = [parts[0] - sum(c < parts[0] for c in gone), parts[1] - sum(c >= parts[0] for c in gone)]
    shapes = {"conv1.w": (6, 3, 3, 3), "convP.w": (4, new[0], 3, 3), "convQ.w": (4, new[1], 3, 3)}
    if sizes:
        shapes["split"] = (2,)
    pruned = check_pruning(model, {"conv1": gone}, shapes, ratio=0.25)
    if sizes:
        assert inits(pruned)["split"].tolist() == new




@pytest.mark.parametrize("starts,ends,new_window", [
    pytest.param(0, 5, (0, 3), id="head"),
    pytest.param(2, 7, (1, 5), id="middle"),
    pytest.param(-6, -1, (1, 5), id="negative"),
    pytest.param(2, 2**62, (1, 6), id="to-end"),
])
def test_slice_on_channel_axis(starts, ends, new_window):
    """Channels 0 and 3 of 8 go: kept [1, 2, 4, 5, 6, 7]."""
    b = Builder(9)
    b.conv("conv1", "x", 3, 8)
    b.node("Relu", ["conv1"], "r")
    b.const("starts", np.array([starts], np.int64))
    b.const("ends", np.array([ends], np.int64))
    b.const("axes", np.array([1], np.int64))
    b.node("Slice", ["r", "starts", "ends", "axes"], "s")
    lo, hi = (starts % 8 if starts < 0 else starts), min(ends % 8 if ends < 0 else ends, 8)
    b.conv("conv2", "s", hi - lo, 4)
    gone = [0, 3]
    b.zero("conv1", gone)
    model = b.model([X], [("conv2", [1, 4, 8, 8])])
    _, a = analyze(model)
    assert summary(a) == {"conv1": (8, 1, False), "conv2": (4, 1, True)}
    assert np.array_equal(a.maps["s"].index, np.arange(lo, hi))
    assert_unchanged_at_ratio_zero(model)
    kept_cols = [c - lo for c in range(lo, hi) if c not in gone]
    pruned = check_pruning(model, {"conv1": gone},
                           {"conv1.w": (6, 3, 3, 3), "conv2.w": (4, new_window[1] - new_window[0], 3, 3),
                            "starts": (1,), "ends": (1,)},
                           ratio=0.25, values={"conv2.w": b.inits["conv2.w"][:, kept_cols]})
    got = inits(pruned)
    assert (int(got["starts"][0]), min(int(got["ends"][0]), 6)) == new_window


@pytest.mark.parametrize("verify", [True, False])
def test_slice_through_the_pipeline(verify):
    """With verification off (--no-verify) nothing would catch a wrong Slice window: the model
    must run as written."""
    b = Builder(9)
    b.conv("conv1", "x", 3, 8)
    b.node("Relu", ["conv1"], "r")
    b.const("starts", np.array([2], np.int64))
    b.const("ends", np.array([7], np.int64))
    b.const("axes", np.array([1], np.int64))
    b.node("Slice", ["r", "starts", "ends", "axes"], "s")
    b.conv("conv2", "s", 5, 4)
    model = b.model([X], [("conv2", [1, 4, 8, 8])])
    run = Pipeline([Prune(round_to=1, ratio=0.25)], verify=verify).run(model)
    (report,) = run.report.passes
    assert report.status == "applied", report.message
    assert inits(run.model)["conv1.w"].shape == (6, 3, 3, 3)
    out = outputs(run.model, feeds_for(run.model))
    assert all(np.isfinite(v).all() for o in out for v in o.values())


# ---------------------------------------------------------------------------------------------
# 7. depthwise conv


def depthwise_model(multiplier):
    b = Builder(10)
    b.conv("pw1", "x", 3, 8, k=1)
    b.node("Relu", ["pw1"], "r1")
    b.conv("dw", "r1", 8, 8 * multiplier, group=8)
    b.node("Relu", ["dw"], "r2")
    b.conv("pw2", "r2", 8 * multiplier, 6, k=1)
    gone = [2, 5]
    b.zero("pw1", gone)
    b.inits["dw.b"][[c * multiplier + j for c in gone for j in range(multiplier)]] = 0
    return b.model([X], [("pw2", [1, 6, 8, 8])]), b, gone


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_follows_its_input(multiplier):
    model, b, gone = depthwise_model(multiplier)
    _, a = analyze(model)
    assert summary(a) == {"pw1": (8, 1, False), "pw2": (6, 1, True)}  # the depthwise conv makes no group
    g = group_of(a, "pw1")
    assert [r.name for r in g.readers] == ["pw2"]
    assert np.array_equal(a.maps["dw"].index, np.repeat(np.arange(8), multiplier))
    assert_unchanged_at_ratio_zero(model)
    rows = [c * multiplier + j for c in gone for j in range(multiplier)]
    pruned = check_pruning(
        model, {"pw1": gone},
        {"pw1.w": (6, 3, 1, 1), "pw1.b": (6,), "dw.w": (6 * multiplier, 1, 3, 3), "dw.b": (6 * multiplier,),
         "pw2.w": (6, 6 * multiplier, 1, 1)},
        ratio=0.25, values={"dw.w": np.delete(b.inits["dw.w"], rows, 0), "pw2.w": np.delete(b.inits["pw2.w"], rows, 1)})
    assert attr(pruned, "dw", "group") == 6


# ---------------------------------------------------------------------------------------------
# 8. grouped conv (not depthwise)


def grouped_model(group):
    b = Builder(11)
    b.conv("conv1", "x", 3, 8)
    b.node("Relu", ["conv1"], "r1")
    b.conv("gconv", "r1", 8, 8, group=group)
    b.node("Relu", ["gconv"], "r2")
    b.conv("conv3", "r2", 8, 6)
    # the same number per block: blocks of 8 / group channels
    gone_in, gone_out = ([1, 6], [0, 5]) if group == 2 else ([0, 3, 5, 6], [1, 2, 4, 7])
    b.zero("conv1", gone_in)
    b.zero("gconv", gone_out)
    return b.model([X], [("conv3", [1, 6, 8, 8])]), b, gone_in, gone_out


@pytest.mark.parametrize("group", [2, 4])
def test_grouped_conv_keeps_equal_counts_per_group(group):
    model, b, gone_in, gone_out = grouped_model(group)
    _, a = analyze(model)
    assert summary(a) == {"conv1": (8, 1, False), "gconv": (8, 1, False), "conv3": (6, 1, True)}
    assert group_of(a, "conv1").blocks == group and group_of(a, "gconv").blocks == group
    assert [r.name for r in group_of(a, "conv1").readers] == ["gconv"]
    assert_unchanged_at_ratio_zero(model)
    k = 8 - len(gone_in)
    # the expected grouped weight: per group, its kept output rows and its kept input columns
    w = b.inits["gconv.w"]
    per = 8 // group
    parts = []
    for g in range(group):
        rows = [o for o in range(g * per, (g + 1) * per) if o not in gone_out]
        cols = [c - g * per for c in range(g * per, (g + 1) * per) if c not in gone_in]
        parts.append(w[rows][:, cols])
    ratio = len(gone_in) / 8
    pruned = check_pruning(model, {"conv1": gone_in, "gconv": gone_out},
                           {"conv1.w": (k, 3, 3, 3), "gconv.w": (k, k // group, 3, 3), "gconv.b": (k,),
                            "conv3.w": (6, k, 3, 3)},
                           ratio=ratio, values={"gconv.w": np.concatenate(parts)})
    assert attr(pruned, "gconv", "group") == group


def test_grouped_conv_uneven_keep_set_is_refused():
    from onnxopt.graph.shrink import ShrinkError

    model, _, _, _ = grouped_model(2)
    graph, a = analyze(model)
    with pytest.raises(ShrinkError):
        shrink(graph, a, {group_of(a, "gconv").id: np.array([0, 1, 2, 3, 4, 5])})  # 4 + 2


@pytest.mark.parametrize("group,ratio,width", [(2, 0.3, 6), (4, 0.3, 8), (4, 0.5, 4)])
def test_grouped_conv_pass_rounds_to_blocks(group, ratio, width):
    """ratio 0.3 of 8 keeps 6: fine for 2 groups; for 4 groups it rounds up to 8 (unchanged)."""
    model, _, _, _ = grouped_model(group)
    out, result = apply(Prune(round_to=1, ratio=ratio), model)
    got = inits(out)
    assert got["conv1.w"].shape == (width, 3, 3, 3)
    assert got["gconv.w"].shape == (width, width // group, 3, 3)
    assert got["conv3.w"].shape == (6, width, 3, 3)
    assert [row["kept"] for row in result.details["groups"]] == [width, width]
    assert result.changed == (width < 8)


# ---------------------------------------------------------------------------------------------
# 9. squeeze-excitation


def se_model():
    b = Builder(12)
    b.conv("conv1", "x", 3, 8)
    b.node("Relu", ["conv1"], "t")
    b.node("GlobalAveragePool", ["t"], "pool")
    b.conv("se1", "pool", 8, 4, k=1)
    b.node("Relu", ["se1"], "se_r")
    b.conv("se2", "se_r", 4, 8, k=1)
    b.node("Sigmoid", ["se2"], "gate")
    b.node("Mul", ["t", "gate"], "scaled")
    b.conv("conv3", "scaled", 8, 6)
    b.zero("conv1", [3, 6])
    b.zero("se2", [3, 6])
    b.zero("se1", [1])
    return b.model([X], [("conv3", [1, 6, 8, 8])]), b


def test_se_groups():
    model, _ = se_model()
    _, a = analyze(model)
    assert summary(a) == {"conv1": (8, 2, False), "se1": (4, 1, False), "conv3": (6, 1, True)}
    trunk = group_of(a, "conv1")
    assert trunk is group_of(a, "se2")
    assert sorted(r.name for r in trunk.readers) == ["conv3", "se1"]
    assert [r.name for r in group_of(a, "se1").readers] == ["se2"]


def test_se_ratio_zero_is_identity():
    assert_unchanged_at_ratio_zero(se_model()[0])


def test_se_prunes_trunk_and_bottleneck_exactly():
    model, b = se_model()
    check_pruning(model, {"conv1": [3, 6], "se1": [1]},
                  {"conv1.w": (6, 3, 3, 3), "se1.w": (3, 6, 1, 1), "se1.b": (3,), "se2.w": (6, 3, 1, 1),
                   "se2.b": (6,), "conv3.w": (6, 6, 3, 3)},
                  ratio=0.25, values={"se1.w": np.delete(np.delete(b.inits["se1.w"], [1], 0), [3, 6], 1)})


# ---------------------------------------------------------------------------------------------
# 9b. one layer's channels lining up with several: the space is cut into parts


def se_over_concat_model():
    """Concat(convA (4), convB (4)) -> t; an SE gate whose last conv (8) multiplies t: se2's
    channels 0..3 couple with convA, 4..7 with convB."""
    b = Builder(18)
    b.conv("convA", "x", 3, 4)
    b.conv("convB", "x", 3, 4)
    b.node("Concat", ["convA", "convB"], "cat", axis=1)
    b.node("Relu", ["cat"], "t")
    b.node("GlobalAveragePool", ["t"], "pool")
    b.conv("se1", "pool", 8, 4, k=1)
    b.node("Relu", ["se1"], "se_r")
    b.conv("se2", "se_r", 4, 8, k=1)
    b.node("Sigmoid", ["se2"], "gate")
    b.node("Mul", ["t", "gate"], "scaled")
    b.conv("conv3", "scaled", 8, 6)
    b.zero("convA", [1])
    b.zero("convB", [2])
    b.zero("se2", [1, 6])
    b.zero("se1", [3])
    return b.model([X], [("conv3", [1, 6, 8, 8])]), b


def test_se_gate_over_concat_is_cut_into_parts():
    model, b = se_over_concat_model()
    _, a = analyze(model)
    ga, gb = group_of(a, "convA"), group_of(a, "convB")
    assert ga.frozen is None and gb.frozen is None and ga.id != gb.id
    assert (ga.size, gb.size) == (4, 4)
    assert sorted(p.name for p in ga.producers) == ["convA", "se2"]
    assert sorted(p.name for p in gb.producers) == ["convB", "se2"]
    assert sorted(s.offset for s in ga.spaces + gb.spaces if s.producer.name == "se2") == [0, 4]
    assert len(a.prunable) == 3
    assert_unchanged_at_ratio_zero(model)
    check_pruning(model, {"convA": [1], "convB": [2], "se1": [3]},
                  {"convA.w": (3, 3, 3, 3), "convB.w": (3, 3, 3, 3), "se1.w": (3, 6, 1, 1), "se2.w": (6, 3, 1, 1),
                   "conv3.w": (6, 6, 3, 3)},
                  ratio=0.25, values={"se2.w": np.delete(np.delete(b.inits["se2.w"], [1, 6], 0), [3], 1),
                                      "se1.w": np.delete(np.delete(b.inits["se1.w"], [3], 0), [1, 6], 1),
                                      "conv3.w": np.delete(b.inits["conv3.w"], [1, 6], 1)})


def test_add_of_a_slice_cuts_the_wider_layer():
    """convA (8) -> Slice [0:4] -> Add with convB (4): A's first half couples with B, its second
    half (read by convD through the whole tensor) is a group of its own."""
    b = Builder(19)
    b.conv("convA", "x", 3, 8)
    b.node("Relu", ["convA"], "ra")
    b.const("starts", np.array([0], np.int64))
    b.const("ends", np.array([4], np.int64))
    b.const("axes", np.array([1], np.int64))
    b.node("Slice", ["ra", "starts", "ends", "axes"], "head")
    b.conv("convB", "x", 3, 4)
    b.node("Relu", ["convB"], "rb")
    b.node("Add", ["head", "rb"], "sum")
    b.conv("convC", "sum", 4, 5)
    b.conv("convD", "ra", 8, 5)
    b.zero("convA", [2, 5])
    b.zero("convB", [2])
    model = b.model([X], [("convC", [1, 5, 8, 8]), ("convD", [1, 5, 8, 8])])
    _, a = analyze(model)
    head = group_of(a, "convB")
    assert head.frozen is None and head.size == 4
    assert sorted(p.name for p in head.producers) == ["convA", "convB"]
    assert sorted(r.name for r in head.readers) == ["convC", "convD"]
    tail = [g for g in a.prunable if g.id != head.id]
    assert len(tail) == 1 and tail[0].size == 4 and [p.name for p in tail[0].producers] == ["convA"]
    assert tail[0].spaces[0].offset == 4
    assert_unchanged_at_ratio_zero(model)
    pruned = check_pruning(model, {"convB": [2], "convA@4": [1]},
                           {"convA.w": (6, 3, 3, 3), "convB.w": (3, 3, 3, 3), "convC.w": (5, 3, 3, 3),
                            "convD.w": (5, 6, 3, 3), "ends": (1,)},
                           ratio=0.25, values={"convD.w": np.delete(b.inits["convD.w"], [2, 5], 1)})
    assert inits(pruned)["ends"].tolist() == [3]


def test_concat_then_add_with_a_full_width_layer():
    """Add(Concat(convA (4), convB (4)), convC (8)): convC is cut in two, each half joins one."""
    b = Builder(20)
    b.conv("convA", "x", 3, 4)
    b.conv("convB", "x", 3, 4)
    b.node("Concat", ["convA", "convB"], "cat", axis=1)
    b.conv("convC", "x", 3, 8)
    b.node("Add", ["cat", "convC"], "sum")
    b.node("Relu", ["sum"], "r")
    b.conv("convD", "r", 8, 6)
    b.zero("convA", [0])
    b.zero("convB", [3])
    b.zero("convC", [0, 7])
    model = b.model([X], [("convD", [1, 6, 8, 8])])
    _, a = analyze(model)
    assert sorted((g.size, tuple(sorted(p.name for p in g.producers))) for g in a.prunable) == [
        (4, ("convA", "convC")), (4, ("convB", "convC"))]
    check_pruning(model, {"convA": [0], "convB": [3]},
                  {"convA.w": (3, 3, 3, 3), "convB.w": (3, 3, 3, 3), "convC.w": (6, 3, 3, 3), "convD.w": (6, 6, 3, 3)},
                  ratio=0.25, values={"convC.w": np.delete(b.inits["convC.w"], [0, 7], 0)})


def test_concat_on_a_spatial_axis_couples_like_add():
    b = Builder(21)
    b.conv("convA", "x", 3, 8)
    b.conv("convB", "x", 3, 8)
    b.node("Concat", ["convA", "convB"], "cat", axis=3)
    b.node("Relu", ["cat"], "r")
    b.conv("convC", "r", 8, 6)
    b.zero("convA", [3, 4])
    b.zero("convB", [3, 4])
    model = b.model([X], [("convC", [1, 6, 8, 16])])
    _, a = analyze(model)
    assert summary(a) == {"convA": (8, 2, False), "convC": (6, 1, True)}
    check_pruning(model, {"convA": [3, 4]}, {"convA.w": (6, 3, 3, 3), "convB.w": (6, 3, 3, 3), "convC.w": (6, 6, 3, 3)},
                  ratio=0.25)


# ---------------------------------------------------------------------------------------------
# 10. channel-wise pass-through ops


GONE = [1, 4]


def _bn(b, x):
    b.const("bn.scale", b.rand(8, lo=0.5, hi=1.5))
    b.const("bn.bias", b.rand(8))
    b.const("bn.mean", b.rand(8))
    b.const("bn.var", b.rand(8, lo=0.5, hi=1.5))
    return b.node("BatchNormalization", [x, "bn.scale", "bn.bias", "bn.mean", "bn.var"], "op"), {
        p: (6,) for p in ("bn.scale", "bn.bias", "bn.mean", "bn.var")}, False


def _prelu(b, x):
    b.const("slope", b.rand(8, 1, 1))
    return b.node("PRelu", [x, "slope"], "op"), {"slope": (6, 1, 1)}, True


def _clip(b, x):
    b.const("lo", np.array(0.0, F32))
    b.const("hi", np.array(0.5, F32))
    return b.node("Clip", [x, "lo", "hi"], "op"), {"lo": (), "hi": ()}, True


def _gelu(b, x):
    b.const("sqrt2", np.array(math.sqrt(2), F32))
    b.const("one", np.array(1.0, F32))
    b.const("half", np.array(0.5, F32))
    b.node("Div", [x, "sqrt2"], "g_div")
    b.node("Erf", ["g_div"], "g_erf")
    b.node("Add", ["g_erf", "one"], "g_add")
    b.node("Mul", [x, "g_add"], "g_mul")
    return b.node("Mul", ["g_mul", "half"], "op"), {"sqrt2": (), "one": (), "half": ()}, True


def _pad(mode):
    def build(b, x):
        b.const("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))
        return b.node("Pad", [x, "pads"], "op", mode=mode), {"pads": (8,)}, True
    return build


def _resize_scales(b, x):
    b.const("scales", np.array([1, 1, 2, 2], F32))
    return b.node("Resize", [x, "", "scales"], "op", mode="nearest"), {"scales": (4,)}, True


def _resize_sizes(b, x):
    b.const("sizes", np.array([1, 8, 12, 12], np.int64))
    return b.node("Resize", [x, "", "", "sizes"], "op", mode="linear"), {"sizes": (4,)}, True


def _simple(op, exact=True, **attrs):
    def build(b, x):
        return b.node(op, [x], "op", **attrs), {}, exact
    return build


def _instance_norm(b, x):
    b.const("in.scale", b.rand(8, lo=0.5, hi=1.5))
    b.const("in.bias", b.rand(8))
    return b.node("InstanceNormalization", [x, "in.scale", "in.bias"], "op"), {"in.scale": (6,), "in.bias": (6,)}, False


PASS_THROUGH = {
    "BatchNormalization": _bn,
    "PRelu": _prelu,
    "LeakyRelu": _simple("LeakyRelu", alpha=0.1),
    "HardSwish": _simple("HardSwish"),
    "HardSigmoid": _simple("HardSigmoid", exact=False),
    "Clip": _clip,
    "Sigmoid": _simple("Sigmoid", exact=False),
    "Erf-GELU": _gelu,
    "MaxPool": _simple("MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "MaxPool-stride2": _simple("MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
    "AveragePool": _simple("AveragePool", kernel_shape=[2, 2], strides=[2, 2]),
    "GlobalAveragePool": _simple("GlobalAveragePool"),
    "Pad-constant": _pad("constant"),
    "Pad-reflect": _pad("reflect"),
    "Resize-scales": _resize_scales,
    "Resize-sizes": _resize_sizes,
    "Dropout": _simple("Dropout"),
    "Identity": _simple("Identity"),
    "Cast": _simple("Cast", to=TensorProto.FLOAT),
    "InstanceNormalization": _instance_norm,
}


def pass_through_model(kind):
    b = Builder(13)
    b.conv("conv1", "x", 3, 8)
    out, params, exact = PASS_THROUGH[kind](b, "conv1")
    b.conv("conv2", out, 8, 6)
    b.zero("conv1", GONE)
    probe = onnx.shape_inference.infer_shapes(b.model([X], [("conv1", [1, 8, 8, 8])]))
    shape = next([d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in probe.graph.value_info if vi.name == out)
    model = b.model([X], [("conv2", [1, 6, *shape[2:]])])
    return model, b, params, exact


@pytest.mark.parametrize("kind", list(PASS_THROUGH))
def test_pass_through_op(kind):
    model, b, params, exact = pass_through_model(kind)
    _, a = analyze(model)
    assert a.unknown == []
    assert summary(a) == {"conv1": (8, 1, False), "conv2": (6, 1, True)}
    assert [r.name for r in group_of(a, "conv1").readers] == ["conv2"]
    assert len(a.maps["op"]) == 8
    assert_unchanged_at_ratio_zero(model)
    reference = None if exact else zero_columns(model, "conv2", GONE)
    values = {name: (np.delete(b.inits[name], GONE, 0) if shape and shape[0] == 6 else b.inits[name])
              for name, shape in params.items() if name != "sizes"}
    if "sizes" in params:
        values["sizes"] = np.array([1, 6, 12, 12])
    check_pruning(model, {"conv1": GONE}, {"conv1.w": (6, 3, 3, 3), "conv2.w": (6, 6, 3, 3), **params},
                  ratio=0.25, reference_model=reference, values=values)


# ---------------------------------------------------------------------------------------------
# 11. ConvTranspose


def test_conv_transpose_as_producer():
    b = Builder(14)
    b.inits["ct.w"], b.inits["ct.b"] = b.rand(3, 8, 2, 2), b.rand(8)  # [Cin, Cout, k, k]
    b.node("ConvTranspose", ["x", "ct.w", "ct.b"], "ct", kernel_shape=[2, 2], strides=[2, 2])
    b.node("Relu", ["ct"], "r")
    b.conv("conv2", "r", 8, 6)
    b.zero("ct", [1, 4], axis=1)
    model = b.model([("x", [1, 3, 4, 4])], [("conv2", [1, 6, 8, 8])])
    _, a = analyze(model)
    assert summary(a) == {"ct": (8, 1, False), "conv2": (6, 1, True)}
    g = group_of(a, "ct")
    assert g.spaces[-1].axis == 1 and [r.name for r in g.readers] == ["conv2"]
    assert_unchanged_at_ratio_zero(model)
    check_pruning(model, {"ct": [1, 4]}, {"ct.w": (3, 6, 2, 2), "ct.b": (6,), "conv2.w": (6, 6, 3, 3)}, ratio=0.25,
                  values={"ct.w": np.delete(b.inits["ct.w"], [1, 4], 1)})


def test_conv_transpose_as_reader():
    b = Builder(15)
    b.conv("conv1", "x", 3, 8)
    b.node("Relu", ["conv1"], "r")
    b.inits["ct.w"], b.inits["ct.b"] = b.rand(8, 4, 2, 2), b.rand(4)
    b.node("ConvTranspose", ["r", "ct.w", "ct.b"], "ct", kernel_shape=[2, 2], strides=[2, 2])
    b.zero("conv1", [1, 4])
    model = b.model([X], [("ct", [1, 4, 16, 16])])
    _, a = analyze(model)
    assert summary(a) == {"conv1": (8, 1, False), "ct": (4, 1, True)}
    assert [r.name for r in group_of(a, "conv1").readers] == ["ct"]
    assert_unchanged_at_ratio_zero(model)
    check_pruning(model, {"conv1": [1, 4]}, {"conv1.w": (6, 3, 3, 3), "ct.w": (6, 4, 2, 2)}, ratio=0.25,
                  values={"ct.w": np.delete(b.inits["ct.w"], [1, 4], 0)})


# ---------------------------------------------------------------------------------------------
# 12. what the analysis does not understand: frozen, reported, never a wrong graph


def _transpose(b, x):
    return b.node("Transpose", [x], "odd", perm=[0, 1, 3, 2]), "odd", 8


def _softmax(b, x):
    return b.node("Softmax", [x], "odd", axis=1), "odd", 8


def _lrn(b, x):
    return b.node("LRN", [x], "odd", size=3), "odd", 8


def _shuffle(b, x):
    b.const("shape5", np.array([1, 2, 4, 8, 8], np.int64))
    b.const("shape4", np.array([1, 8, 8, 8], np.int64))
    b.node("Reshape", [x, "shape5"], "odd")
    b.node("Transpose", ["odd"], "shuf_t", perm=[0, 2, 1, 3, 4])
    return b.node("Reshape", ["shuf_t", "shape4"], "shuf"), "odd", 8


def _channel_pad(b, x):
    b.const("cpads", np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64))
    return b.node("Pad", [x, "cpads"], "odd"), "odd", 10


def _custom(b, x):
    return b.node("Gelu", [x], "odd", domain="com.microsoft"), "odd", 8


UNKNOWN = {"Transpose": (_transpose, "Transpose is not a channel-wise op"),
           "Softmax": (_softmax, "Softmax is not a channel-wise op"),
           "LRN": (_lrn, "LRN is not a channel-wise op"),
           "channel-shuffle": (_shuffle, "mixes channels"),
           "Pad-channels": (_channel_pad, "pads the channel axis"),
           "custom-domain": (_custom, "custom op com.microsoft.Gelu")}


def unknown_model(kind):
    """conv0 (prunable) -> relu -> conv1 -> ODD -> conv2: conv1's channels must stay."""
    b = Builder(16)
    b.conv("conv0", "x", 3, 8)
    b.node("Relu", ["conv0"], "r0")
    b.conv("conv1", "r0", 8, 8)
    out, odd, width = UNKNOWN[kind][0](b, "conv1")
    b.conv("conv2", out, width, 6)
    domains = ("com.microsoft",) if kind == "custom-domain" else ()
    return b.model([X], [("conv2", [1, 6, 8, 8])], domains), b, odd


@pytest.mark.parametrize("kind", list(UNKNOWN))
def test_not_understood_is_frozen_and_reported(kind):
    model, b, odd = unknown_model(kind)
    reason = UNKNOWN[kind][1]
    _, a = analyze(model)
    assert any(n.name == odd and reason in why for n, why in a.unknown), a.unknown
    frozen = group_of(a, "conv1")
    assert frozen.frozen is not None and reason in frozen.frozen
    assert [g.producers[0].name for g in a.prunable] == ["conv0"]
    assert_unchanged_at_ratio_zero(model)
    run = Pipeline([Prune(round_to=1, ratio=0.5)]).run(model)
    (report,) = run.report.passes
    assert report.status == "applied", report.message
    assert any(s.node == odd and reason in s.reason for s in report.skipped), report.skipped
    got = inits(run.model)
    assert got["conv1.w"].shape == (8, 4, 3, 3)          # lost its input columns (conv0 was pruned) ...
    np.testing.assert_array_equal(got["conv1.b"], b.inits["conv1.b"])  # ... but none of its filters
    assert got["conv0.w"].shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(got["conv2.w"], b.inits["conv2.w"])
    out = outputs(run.model, feeds_for(run.model))
    assert all(np.isfinite(v).all() for o in out for v in o.values())


# ---------------------------------------------------------------------------------------------
# 13. graph outputs keep their channels


@pytest.mark.parametrize("exposed", ["conv1", "r"])
def test_graph_output_channels_stay(exposed):
    b = Builder(17)
    b.conv("conv1", "x", 3, 8)
    b.node("Relu", ["conv1"], "r")
    b.conv("conv2", "r", 8, 6)
    model = b.model([X], [(exposed, [1, 8, 8, 8]), ("conv2", [1, 6, 8, 8])])
    _, a = analyze(model)
    g = group_of(a, "conv1")
    assert g.frozen == f"reaches graph output '{exposed}'"
    assert a.prunable == []
    out, result = apply(Prune(round_to=1, ratio=0.5), model)
    assert not result.changed and out is model
    assert {"group": "Conv 'conv1'", "channels": 8, "why": f"reaches graph output '{exposed}'"} in \
        result.details["frozen"]


# ---------------------------------------------------------------------------------------------
# the zoo


ZOO = [n for n in ("resnet18-tiny", "resnet50-tiny", "mobilenetv2-tiny", "vgg16_bn-tiny", "senet_concat-tiny",
                   "vgg16_bn-tiny-half") if n in models.available()]


def _conv_widths_agree(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    weights = inits(model)
    n = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        w = weights[node.input[1]]
        assert w.shape[1] * group == shapes[node.input[0]][1], node.name
        assert shapes[node.output[0]][1] == w.shape[0], node.name
        n += 1
    return n


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("order", ["fold-first", "prune-first"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_prunes_to_a_valid_smaller_model(name, order, ratio):
    model = models.build(name)
    spec = f"fold-bn,prune:round-to=1,ratio={ratio}" if order == "fold-first" else f"prune:round-to=1,ratio={ratio},fold-bn"
    run = Pipeline.parse(spec).run(model)
    statuses = {p.name: (p.status, p.message) for p in run.report.passes}
    assert statuses["prune"][0] == "applied" and statuses["fold-bn"][0] == "applied", statuses
    onnx.checker.check_model(run.model, full_check=True)
    before, after = run.report.before.params, run.report.after.params
    assert after < before * (0.8 if ratio == 0.3 else 0.6), (before, after)
    assert sum(v.size for v in inits(run.model).values()) < sum(v.size for v in inits(model).values())
    assert not any(n.op_type == "BatchNormalization" for n in run.model.graph.node)
    assert _conv_widths_agree(run.model) >= 5
    out = outputs(run.model, feeds_for(run.model))
    assert all(np.isfinite(v).all() for o in out for v in o.values())


@pytest.mark.parametrize("name,kwargs", [("resnet18-tiny", {"constant_weights": True}), ("mobilenetv2-tiny", {"opset": 13}),
                                         ("resnet50-tiny", {"opset": 13, "constant_weights": True})])
def test_zoo_variants_prune(name, kwargs):
    """Weights held in Constant nodes, and the oldest opset the zoo builds."""
    model = models.build(name, **kwargs)
    run = Pipeline.parse("fold-bn,prune:round-to=1,ratio=0.5").run(model)
    assert [p.status for p in run.report.passes] == ["applied", "applied"], [p.message for p in run.report.passes]
    onnx.checker.check_model(run.model, full_check=True)
    assert run.report.after.params < 0.6 * run.report.before.params
    assert _conv_widths_agree(run.model) >= 5
    out = outputs(run.model, feeds_for(run.model))
    assert all(np.isfinite(v).all() for o in out for v in o.values())
