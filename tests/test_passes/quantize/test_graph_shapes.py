"""quantize on graph shapes the placement tests do not build: activations after Gemm/MatMul at the
end of a graph, MaxPool with Indices or below opset 12, Gemm with a 2-D or broadcast C, Gemm ->
Relu -> Gemm, shared weights, graph outputs read inside the graph, a Concat with a graph input,
Split/Slice sharing parameters, Clip with one bound or with bounds fed at run time, int8
activations. Several pinned bugs found in review (the comment above each says what it was)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt.analysis.fusion import audit
from onnxopt.graph.core import Graph
from onnxopt.passes import Quantize
from onnxopt.pipeline.run import Pipeline
from onnxopt.runtime.fidelity import compare
from onnxopt.runtime.sessions import random_feeds, run_model
from onnxopt.testing import apply, count_ops, make_model, small_cnn
from onnxopt.testing import conv_node as conv
from onnxopt.testing import declared_shapes as shapes
from onnxopt.testing import quantized as quantize
from onnxopt.testing import random_weights as weights

F32 = np.float32


# -- helpers -----------------------------------------------------------------------------------
make = make_model


def pipeline(model: onnx.ModelProto, *passes, samples: int = 16, **kwargs):
    calibration = kwargs.pop("calibration", None)
    if calibration is None:
        calibration = random_feeds(model, shapes(model), seed=1, count=samples)
    result = Pipeline(list(passes), calibration=calibration, **kwargs).run(model)
    return result, result.report.passes[-1]


def cosine(model: onnx.ModelProto, out: onnx.ModelProto, count: int = 4) -> float:
    test = random_feeds(model, shapes(model), seed=7, count=count)
    return compare(run_model(model, test), run_model(out, test, optimization="all")).cosine


def the(graph: Graph, name: str):
    (node,) = [n for n in graph.nodes() if n.name == name]
    return node


def qparams_of(graph: Graph, tensor: str) -> tuple[float, int]:
    """Scale and zero point of the DequantizeLinear producing `tensor`."""
    dq = graph.producer(tensor)
    assert dq is not None and dq.op == "DequantizeLinear", tensor
    return float(graph.constant(dq.input(1))), int(graph.constant(dq.input(2)))


# =============================================================================================
# bugs found in review, fixed
# =============================================================================================

def _linear_then_activation(kind: str) -> onnx.ModelProto:
    x = [("x", [2, 6])]
    if kind == "Gemm->Relu":
        return make([helper.make_node("Gemm", ["x", "W", "B"], ["h"], name="fc", transB=1),
                     helper.make_node("Relu", ["h"], ["y"], name="relu")],
                    {"W": weights(0, 5, 6), "B": weights(1, 5)}, x, [("y", [2, 5])])
    if kind == "MatMul->Relu":
        return make([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                     helper.make_node("Relu", ["h"], ["y"], name="relu")],
                    {"W": weights(0, 6, 5)}, x, [("y", [2, 5])])
    if kind == "Gemm->Clip(0,6)":
        return make([helper.make_node("Gemm", ["x", "W", "B"], ["h"], name="fc", transB=1),
                     helper.make_node("Clip", ["h", "lo", "hi"], ["y"], name="clip")],
                    {"W": weights(0, 5, 6), "B": weights(1, 5), "lo": np.array(0, F32), "hi": np.array(6, F32)},
                    x, [("y", [2, 5])])
    if kind == "Gemm->Relu->Softmax":
        return make([helper.make_node("Gemm", ["x", "W", "B"], ["h"], name="fc", transB=1),
                     helper.make_node("Relu", ["h"], ["r"], name="relu"),
                     helper.make_node("Softmax", ["r"], ["y"], name="softmax")],
                    {"W": weights(0, 5, 6), "B": weights(1, 5)}, x, [("y", [2, 5])])
    raise AssertionError(kind)


# Was a bug (fixed): a Gemm/MatMul followed by Relu/Clip whose output no quantized op reads (the
# activation is the graph output, or only float ops read it) crashes the pass with KeyError:
# make_plan absorbs the activation into the unit but puts its output in plan.float_outputs (QGemm
# writes float), so Builder.settle (ranges[t]) and apply_plan (tensor_q[t]) look up a tensor that
# has no range; the pipeline reports quantize 'failed' and writes the float model
@pytest.mark.parametrize("kind", ["Gemm->Relu", "MatMul->Relu", "Gemm->Clip(0,6)", "Gemm->Relu->Softmax"])
def test_linear_layer_with_activation_at_the_end_is_quantized(kind):
    model = _linear_then_activation(kind)
    result, p = pipeline(model, Quantize(speed=False, holdback=4), samples=24)
    assert p.status == "applied", p.message
    op = "MatMul" if kind.startswith("MatMul") else "Gemm"
    assert p.details["quantized_ops"].get(op) == 1
    assert cosine(model, result.model) > 0.99


def _conv_maxpool_conv(opset: int, indices: bool = False) -> onnx.ModelProto:
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("p", "y", "c2", 4, 4, seed=1)
    outs = ["p", "idx"] if indices else ["p"]
    nodes = [c1, helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MaxPool", ["r"], outs, name="pool", kernel_shape=[2, 2], strides=[2, 2]), c2]
    outputs = [("y", [1, 4, 4, 4])]
    if indices:
        nodes.append(helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT))
        outputs.append(("idx_f", [1, 4, 4, 4]))
    return make(nodes, {**i1, **i2}, [("x", [1, 3, 8, 8])], outputs, opset=opset)


# Was a bug (fixed): below opset 12 (per-channel=false, or an opset-10/11 model the converter cannot
# upgrade) MaxPool is placed as an int8 pass-through and counted in quantized_ops, but onnxruntime
# has no uint8 MaxPool before opset 12 and leaves it in float between its DQ and Q (a float island);
# placement should keep it float (with a reason) or upgrade the opset
@pytest.mark.parametrize("opset", [10, 11])
def test_maxpool_below_opset_12_is_not_claimed_as_int8(opset):
    out, result = quantize(_conv_maxpool_conv(opset), per_channel=False)
    assert out.opset_import[0].version == opset  # per tensor: not upgraded
    found = audit(out)
    assert found.islands == [] or ("MaxPool" not in result.details["quantized_ops"]
                                   and any("MaxPool" in k for k in result.details["kept_float"]))


def test_maxpool_at_opset_12_is_fused():
    out, result = quantize(_conv_maxpool_conv(12), per_channel=False)
    assert result.details["quantized_ops"]["MaxPool"] == 1 and audit(out).islands == []


# Was a bug (fixed): a MaxPool whose Indices output is used is placed as an int8 pass-through and
# counted in quantized_ops, but onnxruntime does not drop Q/DQ around a two-output MaxPool: it runs
# in float (a float island); it should be kept float with a reason
def test_maxpool_with_indices_is_not_claimed_as_int8():
    out, result = quantize(_conv_maxpool_conv(17, indices=True))
    found = audit(out)
    assert found.islands == [] or ("MaxPool" not in result.details["quantized_ops"]
                                   and any("MaxPool" in k for k in result.details["kept_float"]))


# Was a bug (fixed): a Gemm whose C is [M, N] (not a per-channel vector) keeps a float C
# (materialize._bias_vector returns None) yet is counted as quantized; onnxruntime only fuses QGemm
# with an int32 C from a DequantizeLinear, so the Gemm runs in float between DQ and Q: quantize C to
# int32 along N, or keep the Gemm float with a reason
def test_gemm_with_a_2d_bias_is_fused_or_kept_float():
    model = make([helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="op", transB=1)],
                 {"W": weights(0, 5, 6), "C": weights(1, 2, 5)}, [("x", [2, 6])], [("y", [2, 5])])
    out, result = quantize(model)
    assert cosine(model, out) > 0.999
    found = audit(out)
    assert found.islands == [] or "Gemm" not in result.details["quantized_ops"], [str(i) for i in found.islands]


# -- the CLI -----------------------------------------------------------------------------------


# =============================================================================================
# tricky cases that work (guards)
# =============================================================================================

def test_gemm_relu_gemm_folds_the_relu_and_fuses_both():
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], name="fc2", transB=1)]
    model = make(nodes, {"W1": weights(0, 5, 6), "B1": weights(1, 5), "W2": weights(2, 3, 5), "B2": weights(3, 3)},
                 [("x", [2, 6])], [("y", [2, 3])])
    out, result = quantize(model)
    assert result.details["folded"] == ["Relu 'relu'"] and "Relu" not in count_ops(out)
    found = audit(out)
    assert found.islands == [] and found.integer_ops.get("QGemm") == 2
    assert cosine(model, out) > 0.999


@pytest.mark.parametrize("c_shape, beta", [((1, 5), 0.5), ((), 0.5), ((1,), 2.0)])
def test_gemm_with_broadcast_bias_and_beta_is_fused_and_exact_enough(c_shape, beta):
    c = weights(1, *c_shape) if c_shape else np.array(0.7, F32)
    model = make([helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="op", transB=1, beta=beta)],
                 {"W": weights(0, 5, 6), "C": c}, [("x", [2, 6])], [("y", [2, 5])])
    out, result = quantize(model)
    g = Graph(out)
    op = the(g, "op")
    assert op.attr("beta", 1.0) == 1.0  # beta went into the int32 bias
    bias = g.producer(op.input(2))
    assert bias.op == "DequantizeLinear" and g.constant(bias.input(0)).shape == (5,)
    assert audit(out).islands == [] and audit(out).integer_ops.get("QGemm") == 1
    test = random_feeds(model, shapes(model), seed=7, count=4)
    ref, got = run_model(model, test), run_model(out, test, optimization="all")
    assert compare(ref, got).max_abs < 0.05


def test_weights_shared_by_two_convs():
    w, b = weights(0, 4, 3, 3, 3), weights(1, 4)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["x2", "W", "B"], ["y"], name="c2", pads=[1] * 4),
             helper.make_node("Add", ["r", "y"], ["z"], name="add")]
    model = make(nodes, {"W": w, "B": b}, [("x", [1, 3, 8, 8]), ("x2", [1, 3, 8, 8])], [("z", [1, 4, 8, 8])])
    out, result = quantize(model, bias_correction=True, cle=True)
    assert result.details["quantized_ops"] == {"Add": 1, "Conv": 2}
    assert "W" not in {t.name for t in out.graph.initializer}, "the float weight is still in the file"
    g = Graph(out)
    for name in ("c1", "c2"):
        dq = g.producer(the(g, name).input(1))
        assert dq.op == "DequantizeLinear" and g.constant(dq.input(0)).dtype == np.int8
    found = audit(out)
    assert found.islands == [] and found.integer_ops == {"QLinearAdd": 1, "QLinearConv": 2}
    assert cosine(model, out) > 0.999


def test_graph_outputs_read_inside_the_graph():
    """A Conv output and an Add output that are graph outputs and read by the next Conv: names kept,
    each output is the dequantized value, everything fused."""
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("a", "b", "c2", 4, 4, seed=1)
    c3, i3 = conv("s", "y", "c3", 4, 4, seed=2)
    model = make([c1, c2, helper.make_node("Add", ["a", "b"], ["s"], name="add"), c3], {**i1, **i2, **i3},
                 [("x", [1, 3, 8, 8])], [("a", [1, 4, 8, 8]), ("s", [1, 4, 8, 8]), ("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    assert [o.name for o in out.graph.output] == ["a", "s", "y"]
    g = Graph(out)
    for t in ("a", "s", "y"):
        assert g.producer(t).op == "DequantizeLinear"
    assert [r.op for r in g.consumers(the(g, "c1").outputs[0])] == ["QuantizeLinear"]
    found = audit(out)
    assert found.islands == [] and found.integer_ops == {"QLinearAdd": 1, "QLinearConv": 3}
    test = random_feeds(model, shapes(model), seed=7, count=4)
    fid = compare(run_model(model, test), run_model(out, test, optimization="all"))
    assert all(o.cosine > 0.999 for o in fid.outputs.values()), fid.outputs


def test_concat_with_a_graph_input():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("cc", "y", "c2", 8, 4, seed=1)
    model = make([c1, helper.make_node("Concat", ["a", "x2"], ["cc"], name="cat", axis=1), c2], {**i1, **i2},
                 [("x", [1, 3, 8, 8]), ("x2", [1, 4, 8, 8])], [("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    assert result.details["quantized_ops"] == {"Concat": 1, "Conv": 2}
    g = Graph(out)
    assert g.producer(the(g, "cat").input(1)).op == "DequantizeLinear"  # the graph input gets its own Q/DQ
    found = audit(out)
    assert found.islands == [] and found.integer_ops == {"QLinearConcat": 1, "QLinearConv": 2}
    assert cosine(model, out) > 0.999


@pytest.mark.parametrize("op", ["Split", "Slice"])
def test_split_and_slice_share_their_input_parameters(op):
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    ca, ia = conv("s0", "y0", "ca", 2, 4, seed=1)
    cb, ib = conv("s1", "y1", "cb", 2, 4, seed=2)
    if op == "Split":
        cut = [helper.make_node("Split", ["a", "sizes"], ["s0", "s1"], name="cut", axis=1)]
        extra = {"sizes": np.array([2, 2], np.int64)}
    else:  # two Slices sharing their constant parameters (one's end is the other's start)
        cut = [helper.make_node("Slice", ["a", "zero", "two", "axis"], ["s0"], name="cut"),
               helper.make_node("Slice", ["a", "two", "four", "axis"], ["s1"], name="cut2")]
        extra = {k: np.array([v], np.int64) for k, v in (("zero", 0), ("two", 2), ("four", 4), ("axis", 1))}
    model = make([c1, *cut, ca, cb], {**i1, **ia, **ib, **extra}, [("x", [1, 3, 8, 8])],
                 [("y0", [1, 4, 8, 8]), ("y1", [1, 4, 8, 8])])
    out, result = quantize(model)
    assert result.details["quantized_ops"][op] == len(cut)
    g = Graph(out)
    root = qparams_of(g, the(g, "ca").input(0))
    assert qparams_of(g, the(g, "cb").input(0)) == root
    assert [r.op for r in g.consumers(the(g, "c1").outputs[0])] == ["QuantizeLinear"]
    found = audit(out)
    assert found.islands == [] and found.integer_ops == {"QLinearConv": 3}


@pytest.mark.parametrize("bounds, folded", [
    ({"lo": 0.0}, True),                # only min (Relu-like)
    ({"hi": 0.3}, True),                # only max, reached by the data: the Q range stops there
])
def test_clip_with_one_bound(bounds, folded):
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("c", "y", "c2", 4, 4, seed=1)
    inputs = ["a", "lo" if "lo" in bounds else "", "hi" if "hi" in bounds else ""]
    while not inputs[-1]:
        inputs.pop()
    inits = {k: np.array(v, F32) for k, v in bounds.items()}
    model = make([c1, helper.make_node("Clip", inputs, ["c"], name="clip"), c2], {**i1, **i2, **inits},
                 [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    kept, _ = quantize(model, keep_activations=True)
    assert (result.details["folded"] == ["Clip 'clip'"]) is folded
    assert audit(out).islands == []
    test = random_feeds(model, shapes(model), seed=7, count=4)
    a, b = run_model(out, test, optimization="all"), run_model(kept, test, optimization="all")
    for x, y in zip(a, b):  # folding is exact: the same as keeping the Clip
        assert np.array_equal(x["y"], y["y"])


def test_clip_with_bounds_fed_at_run_time_is_not_folded_and_honours_them():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    model = make([c1, helper.make_node("Clip", ["a", "lo", "hi"], ["y"], name="clip")], i1,
                 [("x", [1, 3, 8, 8]), ("lo", []), ("hi", [])], [("y", [1, 4, 8, 8])])
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(F32), "lo": np.array(-1, F32), "hi": np.array(3, F32)}
             for _ in range(16)]
    out, result = apply(Quantize(speed=False, calibration=calib), model)
    assert result.details["folded"] == [] and count_ops(out)["Clip"] == 1
    feed = {"x": rng.standard_normal((1, 3, 8, 8)).astype(F32), "lo": np.array(0, F32), "hi": np.array(0.5, F32)}
    y = run_model(out, [feed], optimization="all")[0]["y"]
    assert y.min() >= 0 and y.max() <= 0.5


def test_int8_activations_fold_relu_exactly_with_zero_point_minus_128():
    model = small_cnn()
    out, result = quantize(model, activations="int8")
    kept, _ = quantize(model, activations="int8", keep_activations=True)
    assert sorted(result.details["folded"]) == ["Relu 'relu1'", "Relu 'relu2'"]
    g = Graph(out)
    scale, zero = qparams_of(g, the(g, "c2").input(0))  # the folded Relu's output
    assert zero == -128 and g.constant(g.producer(the(g, "c2").input(0)).input(2)).dtype == np.int8
    test = random_feeds(model, shapes(model), seed=7, count=4)
    for level in ("disabled", "all"):
        for x, y in zip(run_model(out, test, optimization=level), run_model(kept, test, optimization=level)):
            assert np.array_equal(x["y"], y["y"]), level


