"""quantize:speed=false, where Q/DQ go, op kind by op kind, and which integer kernel onnxruntime makes of it.

Each test builds a small graph around one op, quantizes it (calibrated on its own seeded random
inputs), then checks (a) the QDQ structure written into the model and (b) the fusion audit of the
result: the integer kernel onnxruntime's CPU provider runs and no float island. Pass-through ops
must carry the same scale and zero point in and out (that is what lets onnxruntime drop the pair).
The second half covers per-channel weight axes per weighted op and per-tensor weights.

Where onnxruntime does not fuse an op as the pass places it, the test states the behaviour the
pass promises ("Q/DQ go exactly where onnxruntime fuses them") and is a strict xfail naming the bug.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxopt.analysis.fusion import audit
from onnxopt.graph.core import Graph
from onnxopt.passes.quantize import default_activation_type
from onnxopt.runtime.fidelity import compare
from onnxopt.runtime.sessions import random_feeds, run_model
from onnxopt.testing import conv_node as conv
from onnxopt.testing import count_ops, make_model
from onnxopt.testing import declared_shapes as shapes
from onnxopt.testing import quantized as quantize
from onnxopt.testing import random_weights as weights

F32 = np.float32
ACTIVATIONS = np.dtype(default_activation_type())  # uint8 on x86 (what its kernels fuse), int8 on ARM


# -- graphs ------------------------------------------------------------------------------------
make = make_model


def the(graph: Graph, name: str):
    (node,) = [n for n in graph.nodes() if n.name == name]
    return node


def dq_of(graph: Graph, tensor: str):
    """The DequantizeLinear producing `tensor` (fails if there is none)."""
    node = graph.producer(tensor)
    assert node is not None and node.op == "DequantizeLinear", f"{tensor} is not dequantized ({node})"
    return node


def qparams(graph: Graph, node) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(graph.constant(node.input(1))), np.asarray(graph.constant(node.input(2)))


def assert_activation_qdq(graph: Graph, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    """`tensor` (an op's data input) is DequantizeLinear(QuantizeLinear(x)) with per-tensor
    parameters of the activation type; returns them."""
    dq = dq_of(graph, tensor)
    q = graph.producer(dq.input(0))
    assert q is not None and q.op == "QuantizeLinear", f"{tensor}: DQ not fed by a Q"
    scale, zero = qparams(graph, dq)
    assert scale.shape == () and zero.shape == () and zero.dtype == ACTIVATIONS
    qs, qz = qparams(graph, q)
    assert qs == scale and qz == zero
    return scale, zero


def assert_output_quantized(graph: Graph, node) -> tuple[np.ndarray, np.ndarray]:
    """The node's output goes to exactly one QuantizeLinear (what onnxruntime needs to fuse it)."""
    readers = graph.consumers(node.outputs[0])
    assert [r.op for r in readers] == ["QuantizeLinear"], [r.op for r in readers]
    return qparams(graph, readers[0])


def assert_weight_dq(graph: Graph, node, axis: int | None, channels: int | None) -> None:
    dq = dq_of(graph, node.input(1))
    values = graph.constant(dq.input(0))
    scale, zero = qparams(graph, dq)
    assert values.dtype == np.int8 and np.abs(values.astype(int)).max() <= 127
    assert dq.attr("axis") == axis
    assert scale.shape == (() if axis is None else (channels,))
    assert zero.dtype == np.int8 and not zero.any()


def assert_bias_dq(graph: Graph, node, input_scale: np.ndarray) -> None:
    dq = dq_of(graph, node.input(2))
    values = graph.constant(dq.input(0))
    scale, zero = qparams(graph, dq)
    assert values.dtype == np.int32 and zero.dtype == np.int32 and not zero.any()
    weight_scale, _ = qparams(graph, dq_of(graph, node.input(1)))
    np.testing.assert_allclose(scale, np.float32(input_scale) * weight_scale, rtol=1e-6)


def assert_fused(model: onnx.ModelProto, **kernels: int) -> None:
    found = audit(model)
    assert found.islands == [], [str(i) for i in found.islands]
    for op, n in kernels.items():
        assert found.integer_ops.get(op, 0) == n, (op, found.integer_ops)


def ort_optimized(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    path = tmp_path / "optimized.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(path)
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


# -- compute ops -------------------------------------------------------------------------------
def test_conv_becomes_qlinearconv():
    node, inits = conv("x", "y", "op", 3, 4, seed=0)
    model = make([node], inits, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    g = Graph(out)
    op = the(g, "op")
    s_in, _ = assert_activation_qdq(g, op.input(0))
    assert_weight_dq(g, op, axis=0, channels=4)
    assert_bias_dq(g, op, s_in)
    # the graph output keeps its name and is the dequantized value: Conv -> Q -> DQ -> y
    assert_output_quantized(g, op)
    assert g.producer("y").op == "DequantizeLinear"
    assert "op.w" not in {t.name for t in out.graph.initializer}, "the float weight is still in the file"
    assert result.details["quantized_ops"] == {"Conv": 1}
    assert_fused(out, QLinearConv=1)


@pytest.mark.parametrize("trans_b", [1, 0])
def test_gemm_becomes_qgemm_with_float_output(trans_b):
    w = weights(0, 5, 6) if trans_b else weights(0, 6, 5)
    model = make([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="op", transB=trans_b)],
                 {"W": w, "B": weights(1, 5)}, [("x", [2, 6])], [("y", [2, 5])])
    out, result = quantize(model)
    g = Graph(out)
    op = the(g, "op")
    s_in, _ = assert_activation_qdq(g, op.input(0))
    assert_weight_dq(g, op, axis=0 if trans_b else 1, channels=5)
    assert_bias_dq(g, op, s_in)
    # QGemm writes float: a Gemm whose output no quantized op reads gets no Q at all
    assert op.outputs == ("y",) and not g.consumers("y")
    assert count_ops(out)["QuantizeLinear"] == 1
    assert_fused(out, QGemm=1)


def test_matmul_with_constant_2d_weight():
    """MatMul -> MatMul: the first writes int8 for the second (QLinearMatMul), the last writes
    float (MatMulIntegerToFloat), both with per-column int8 weights."""
    model = make([helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
                  helper.make_node("MatMul", ["h", "W2"], ["y"], name="mm2")],
                 {"W1": weights(0, 6, 5), "W2": weights(1, 5, 4)}, [("x", [2, 6])], [("y", [2, 4])])
    out, result = quantize(model)
    g = Graph(out)
    mm1, mm2 = the(g, "mm1"), the(g, "mm2")
    assert_activation_qdq(g, mm1.input(0))
    assert_weight_dq(g, mm1, axis=1, channels=5)
    assert_weight_dq(g, mm2, axis=1, channels=4)
    assert_output_quantized(g, mm1)
    assert_activation_qdq(g, mm2.input(0))
    assert not g.consumers("y")  # float output
    assert result.details["quantized_ops"] == {"MatMul": 2}
    assert_fused(out, QLinearMatMul=1, MatMulIntegerToFloat=1)


def test_matmul_of_two_activations_stays_float():
    model = make([helper.make_node("MatMul", ["x", "z"], ["y"], name="op")], {},
                 [("x", [2, 6]), ("z", [6, 5])], [("y", [2, 5])])
    out, result = quantize(model)
    assert out is model and not result.changed
    assert any("nothing to quantize" in n for n in result.notes)
    assert result.details == {"kept_float": {"MatMul 'op'": "its weight is not a constant"}}


@pytest.mark.parametrize("op_type, kernel", [("Add", "QLinearAdd"), ("Mul", "QLinearMul")])
def test_binary_op_of_two_activations(op_type, kernel):
    a, ia = conv("x", "a", "c1", 3, 4, seed=0)
    b, ib = conv("x", "b", "c2", 3, 4, seed=1)
    model = make([a, b, helper.make_node(op_type, ["a", "b"], ["y"], name="op")], {**ia, **ib},
                 [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    g = Graph(out)
    op = the(g, "op")
    sa, za = assert_activation_qdq(g, op.input(0))
    sb, zb = assert_activation_qdq(g, op.input(1))
    assert op.input(0) != op.input(1)
    # each operand carries its own range (QLinearAdd/Mul take two scales)
    assert (sa, za) == assert_output_quantized(g, the(g, "c1"))
    assert (sb, zb) == assert_output_quantized(g, the(g, "c2"))
    assert_output_quantized(g, op)
    assert result.details["quantized_ops"] == {"Conv": 2, op_type: 1}
    assert_fused(out, QLinearConv=2, **{kernel: 1})


def test_binary_op_with_a_constant_operand_stays_float():
    a, ia = conv("x", "a", "c1", 3, 4, seed=0)
    model = make([a, helper.make_node("Add", ["a", "k"], ["y"], name="op")], {**ia, "k": weights(3, 1, 4, 1, 1)},
                 [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    assert "Add" not in result.details["quantized_ops"]
    assert "constant operand" in result.details["kept_float"]["Add 'op'"]


def test_concat_becomes_qlinearconcat():
    a, ia = conv("x", "a", "c1", 3, 4, seed=0)
    b, ib = conv("x", "b", "c2", 3, 4, seed=1)
    model = make([a, b, helper.make_node("Concat", ["a", "b"], ["y"], name="op", axis=1)], {**ia, **ib},
                 [("x", [1, 3, 8, 8])], [("y", [1, 8, 8, 8])])
    out, result = quantize(model)
    g = Graph(out)
    op = the(g, "op")
    assert_activation_qdq(g, op.input(0))
    assert_activation_qdq(g, op.input(1))
    assert_output_quantized(g, op)
    assert result.details["quantized_ops"] == {"Concat": 1, "Conv": 2}
    assert_fused(out, QLinearConv=2, QLinearConcat=1)


@pytest.mark.parametrize("op_type, attrs, out_hw, kernel", [
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2]), 4, "QLinearAveragePool"),
    ("GlobalAveragePool", {}, 1, "QLinearGlobalAveragePool"),
    ("Sigmoid", {}, 8, "QLinearSigmoid"),
    ("LeakyRelu", dict(alpha=0.1), 8, "QLinearLeakyRelu"),
])
def test_requantizing_ops(op_type, attrs, out_hw, kernel):
    """Conv -> op -> Conv: the op reads and writes int8 with its own output parameters."""
    a, ia = conv("x", "a", "c1", 3, 4, seed=0)
    b, ib = conv("p", "y", "c2", 4, 4, seed=1, k=1, pad=0)
    model = make([a, helper.make_node(op_type, ["a"], ["p"], name="op", **attrs), b], {**ia, **ib},
                 [("x", [1, 3, 8, 8])], [("y", [1, 4, out_hw, out_hw])])
    out, result = quantize(model)
    g = Graph(out)
    op = the(g, "op")
    s_in, z_in = assert_activation_qdq(g, op.input(0))
    s_out, z_out = assert_output_quantized(g, op)
    assert (s_in, z_in) != (s_out, z_out)  # requantized: its output range is its own
    assert result.details["quantized_ops"] == {"Conv": 2, op_type: 1}
    assert_fused(out, QLinearConv=2, **{kernel: 1})


# -- pass-through ops: same parameters in and out ---------------------------------------------
def _pass_through(op_type: str) -> tuple[onnx.ModelProto, str]:
    """Conv -> op -> (Conv | Gemm | MatMul); returns the model and the op reading the op's output."""
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("p", "y", "c2", 4, 4, seed=1)
    if op_type == "MaxPool":
        nodes = [c1, helper.make_node("MaxPool", ["a"], ["p"], name="op", kernel_shape=[2, 2], strides=[2, 2]), c2]
        return make(nodes, {**i1, **i2}, [("x", [1, 3, 8, 8])], [("y", [1, 4, 4, 4])]), "c2"
    if op_type == "Transpose":
        nodes = [c1, helper.make_node("Transpose", ["a"], ["p"], name="op", perm=[0, 1, 3, 2]), c2]
        return make(nodes, {**i1, **i2}, [("x", [1, 3, 8, 6])], [("y", [1, 4, 6, 8])]), "c2"
    if op_type == "Resize":
        nodes = [c1, helper.make_node("Resize", ["a", "", "scales"], ["p"], name="op", mode="nearest"), c2]
        inits = {**i1, **i2, "scales": np.array([1, 1, 2, 2], F32)}
        return make(nodes, inits, [("x", [1, 3, 4, 4])], [("y", [1, 4, 8, 8])]), "c2"
    fc = helper.make_node("Gemm", ["p", "W", "B"], ["y"], name="fc", transB=1)
    gemm_inits = {**i1, "W": weights(5, 5, 64), "B": weights(6, 5)}
    if op_type == "Flatten":
        nodes = [c1, helper.make_node("Flatten", ["a"], ["p"], name="op"), fc]
        return make(nodes, gemm_inits, [("x", [1, 3, 4, 4])], [("y", [1, 5])]), "fc"
    if op_type == "Reshape":
        nodes = [c1, helper.make_node("Reshape", ["a", "shape"], ["p"], name="op"), fc]
        inits = {**gemm_inits, "shape": np.array([1, 64], np.int64)}
        return make(nodes, inits, [("x", [1, 3, 4, 4])], [("y", [1, 5])]), "fc"
    if op_type == "Squeeze":  # [1, 4, 1, 4] -> [1, 4, 4] -> MatMul
        c1, i1 = conv("x", "a", "c1", 3, 4, seed=0, k=1, pad=0)
        nodes = [c1, helper.make_node("Squeeze", ["a", "axes"], ["p"], name="op"),
                 helper.make_node("MatMul", ["p", "W"], ["y"], name="mm")]
        inits = {**i1, "W": weights(5, 4, 5), "axes": np.array([2], np.int64)}
        return make(nodes, inits, [("x", [1, 3, 1, 4])], [("y", [1, 4, 5])]), "mm"
    raise AssertionError(op_type)


@pytest.mark.parametrize("op_type", ["MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Resize"])
def test_pass_through_op_keeps_its_input_parameters(op_type, tmp_path):
    model, reader = _pass_through(op_type)
    out, result = quantize(model)
    g = Graph(out)
    op = the(g, "op")
    s_in, z_in = assert_activation_qdq(g, op.input(0))
    s_out, z_out = assert_output_quantized(g, op)
    assert s_out == s_in and z_out == z_in and s_out.dtype == s_in.dtype and z_out.dtype == z_in.dtype
    assert (s_in, z_in) == assert_output_quantized(g, the(g, "c1"))  # the producer's own range
    assert op_type in result.details["quantized_ops"]
    found = audit(out)
    assert found.islands == [], [str(i) for i in found.islands]
    assert found.integer_ops.get("QLinearConv", 0) >= 1
    # in onnxruntime's graph the op reads the integer output of QLinearConv: the Q/DQ pair is gone
    opt = ort_optimized(out, tmp_path)
    producer = {t: n for n in opt.graph.node for t in n.output}
    (moved,) = [n for n in opt.graph.node if n.name == "op"]
    assert moved.op_type == op_type
    assert producer[moved.input[0]].op_type == "QLinearConv"
    readers = [n.op_type for n in opt.graph.node if moved.output[0] in n.input]
    assert readers and all(r in ("QLinearConv", "QGemm", "MatMulIntegerToFloat") for r in readers), readers


def test_pass_through_op_on_a_float_tensor_stays_float():
    """Nothing quantized feeds it: a lone MaxPool is left alone (no Q/DQ pair around nothing)."""
    model = make([helper.make_node("MaxPool", ["x"], ["y"], name="op", kernel_shape=[2, 2], strides=[2, 2])], {},
                 [("x", [1, 3, 8, 8])], [("y", [1, 3, 4, 4])])
    out, result = quantize(model)
    assert out is model and not result.changed


def test_pass_through_fan_out_shares_parameters():
    """Conv -> MaxPool -> Add(conv, maxpool): both Add operands carry the Conv's parameters."""
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    model = make([c1, helper.make_node("MaxPool", ["a"], ["p"], name="op", kernel_shape=[3, 3], pads=[1] * 4),
                  helper.make_node("Add", ["a", "p"], ["y"], name="add")], i1,
                 [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    out, _ = quantize(model)
    g = Graph(out)
    add = the(g, "add")
    assert assert_activation_qdq(g, add.input(0)) == assert_activation_qdq(g, add.input(1))
    assert_fused(out, QLinearConv=1, QLinearAdd=1)


def test_linear_resize_is_fused_or_left_float():
    # onnxruntime drops the Q/DQ pair only around a nearest Resize: a linear one stays float
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("p", "y", "c2", 4, 4, seed=1)
    model = make([c1, helper.make_node("Resize", ["a", "", "scales"], ["p"], name="op", mode="linear"), c2],
                 {**i1, **i2, "scales": np.array([1, 1, 2, 2], F32)}, [("x", [1, 3, 4, 4])], [("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    # between two quantized convs the float Resize is an island, and the audit says so
    assert [(i.op, i.name) for i in audit(out).islands] == [("Resize", "op")]
    assert "Resize" not in result.details["quantized_ops"]
    assert "nearest" in result.details["kept_float"]["Resize 'op'"]


def test_conv_transpose_is_fused_or_left_float():
    # onnxruntime's CPU provider has no integer ConvTranspose: left float unless op-types asks for it
    model = make([helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], name="op", strides=[2, 2])],
                 {"W": weights(0, 3, 6, 2, 2), "B": weights(1, 6)}, [("x", [1, 3, 4, 4])], [("y", [1, 6, 8, 8])])
    out, result = quantize(model)
    assert audit(out).islands == []
    assert "ConvTranspose" in result.details["kept_float"]["ConvTranspose 'op'"]
    forced, result = quantize(model, op_types=("ConvTranspose",))
    assert result.details["quantized_ops"] == {"ConvTranspose": 1}


def test_gemm_with_alpha_is_fused():
    # QGemm fuses alpha = 1 only: alpha goes into the weights
    model = make([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="op", transB=1, alpha=0.5)],
                 {"W": weights(0, 5, 6), "B": weights(1, 5)}, [("x", [2, 6])], [("y", [2, 5])])
    out, _ = quantize(model)
    assert_fused(out, QGemm=1)


# -- per-channel axes --------------------------------------------------------------------------
def _weighted(op_type: str) -> tuple[onnx.ModelProto, int | None, int]:
    """A model of one weighted op; the output-channel axis of its weight and the channel count."""
    if op_type == "Conv":
        return make([helper.make_node("Conv", ["x", "W", "B"], ["y"], name="op", pads=[1] * 4)],
                    {"W": weights(0, 6, 3, 3, 3), "B": weights(1, 6)}, [("x", [1, 3, 8, 8])], [("y", [1, 6, 8, 8])]), 0, 6
    if op_type == "Conv-depthwise":
        return make([helper.make_node("Conv", ["x", "W", "B"], ["y"], name="op", pads=[1] * 4, group=6)],
                    {"W": weights(0, 6, 1, 3, 3), "B": weights(1, 6)}, [("x", [1, 6, 8, 8])], [("y", [1, 6, 8, 8])]), 0, 6
    if op_type == "ConvTranspose":  # weight [C_in, C_out, k, k]
        return make([helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], name="op", strides=[2, 2])],
                    {"W": weights(0, 3, 6, 2, 2), "B": weights(1, 6)}, [("x", [1, 3, 4, 4])], [("y", [1, 6, 8, 8])]), 1, 6
    if op_type == "ConvTranspose-grouped":  # output channels span both axes: per tensor
        return make([helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], name="op", strides=[2, 2], group=3)],
                    {"W": weights(0, 3, 2, 2, 2), "B": weights(1, 6)}, [("x", [1, 3, 4, 4])], [("y", [1, 6, 8, 8])]), None, 6
    if op_type == "Gemm-transB":
        return make([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="op", transB=1)],
                    {"W": weights(0, 7, 5), "B": weights(1, 7)}, [("x", [4, 5])], [("y", [4, 7])]), 0, 7
    if op_type == "Gemm":
        return make([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="op")],
                    {"W": weights(0, 5, 7), "B": weights(1, 7)}, [("x", [4, 5])], [("y", [4, 7])]), 1, 7
    if op_type == "MatMul":
        return make([helper.make_node("MatMul", ["x", "W"], ["y"], name="op")],
                    {"W": weights(0, 5, 7)}, [("x", [4, 5])], [("y", [4, 7])]), 1, 7
    raise AssertionError(op_type)


WEIGHTED = ["Conv", "Conv-depthwise", "ConvTranspose", "ConvTranspose-grouped", "Gemm-transB", "Gemm", "MatMul"]


@pytest.mark.parametrize("op_type", WEIGHTED)
def test_per_channel_weight_axis(op_type):
    model, axis, channels = _weighted(op_type)
    # channels of very different magnitude: one scale per channel is what keeps the small ones
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    if axis is not None:
        index = [slice(None)] * w.ndim
        index[axis] = slice(0, None, 2)
        w[tuple(index)] *= 0.01
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, model.graph.initializer[0].name))
    opt_in = {"op_types": ("ConvTranspose",)} if op_type.startswith("ConvTranspose") else {}
    out, result = quantize(model, samples=64, **opt_in)
    g = Graph(out)
    op = the(g, "op")
    assert_weight_dq(g, op, axis=axis, channels=channels)
    assert result.details["weights"] == "int8 symmetric per channel"
    # the int8 weights reproduce the float ones to half a step of their own channel's scale
    dq = dq_of(g, op.input(1))
    wq = g.constant(dq.input(0)).astype(np.float64)
    scale = np.asarray(g.constant(dq.input(1)), np.float64)
    if axis is not None:
        shape = [1] * w.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    error = np.abs(wq * scale - w)
    assert np.all(error <= scale / 2 * (1 + 1e-6)), float(np.max(error / scale))
    # and the model computes what the float one does, fused (ORT_ENABLE_ALL) or not
    test = random_feeds(model, shapes(model), seed=7, count=8)
    reference = run_model(model, test)
    for level in ("disabled", "all"):
        cosine = compare(reference, run_model(out, test, optimization=level)).cosine
        assert cosine > 0.99, (level, cosine)


@pytest.mark.parametrize("op_type", WEIGHTED)
def test_per_channel_false_gives_scalar_weight_scales(op_type):
    model, _, channels = _weighted(op_type)
    opt_in = {"op_types": ("ConvTranspose",)} if op_type.startswith("ConvTranspose") else {}
    out, result = quantize(model, per_channel=False, **opt_in)
    g = Graph(out)
    op = the(g, "op")
    assert_weight_dq(g, op, axis=None, channels=channels)
    assert result.details["weights"] == "int8 symmetric per tensor"
    if len(op.inputs) > 2:  # the bias scale is one scalar too
        assert np.asarray(g.constant(dq_of(g, op.input(2)).input(1))).size == 1
    test = random_feeds(model, shapes(model), seed=7, count=8)
    assert compare(run_model(model, test), run_model(out, test, optimization="all")).cosine > 0.99
