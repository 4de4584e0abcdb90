"""quantize:speed=false, the int32 bias guard, weights in Constant nodes, the opset upgrade, range-mismatched
Concats, Relu/Clip folding, already-quantized models, the fusion audit (ours and onnxruntime's
default quantizer), the CLI's one-line errors, and accuracy on the real digits models.

Where Q/DQ go op by op, and per-channel axes, are covered by tests/test_quantize_placement.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxopt.analysis.fusion import audit
from onnxopt.data.feeds import FeedSet
from onnxopt.data.files import load_feeds, random_calibration
from onnxopt.graph.core import Graph
from onnxopt.models import FIXTURES, build
from onnxopt.passes import Quantize
from onnxopt.passes.quantize.driver import _ensure_opset
from onnxopt.passes.quantize.scheme import INT32_MAX, weight_qparams
from onnxopt.pipeline.contract import PassResult
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import parse_spec
from onnxopt.runtime.cpu import this_cpu
from onnxopt.runtime.fidelity import compare
from onnxopt.runtime.sessions import make_session, random_feeds, run_feeds, run_model
from onnxopt.testing import apply, assert_one_line_error, count_ops, load_benchmark, make_model, run_cli
from onnxopt.testing import declared_shapes as shapes
from onnxopt.testing import random_weights as weights

F32 = np.float32
CALIB = FIXTURES / "digits_calib.npz"
TEST = FIXTURES / "digits_test.npz"


# -- helpers -----------------------------------------------------------------------------------
make = make_model


def the(graph: Graph, name: str):
    (node,) = [n for n in graph.nodes() if n.name == name]
    return node


def session(model: onnx.ModelProto, level: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def outputs(model: onnx.ModelProto, feeds, level: str = "all") -> list[np.ndarray]:
    s = session(model, level)
    return [s.run(None, f) for f in feeds]


def quantize_pipeline(model, spec="fold-bn,quantize:speed=false", calibration=None, samples=32):
    calibration = calibration if calibration is not None else random_calibration(model, samples=samples)
    result = Pipeline(parse_spec(spec), calibration=calibration).run(model)
    return result, result.report.passes[-1]


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- shared models (built once) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet() -> onnx.ModelProto:
    return build("resnet18-tiny", seed=0)


@pytest.fixture(scope="module")
def mobilenet() -> onnx.ModelProto:
    return build("mobilenetv2-tiny", seed=0)


@pytest.fixture(scope="module")
def resnet_q(resnet):
    return quantize_pipeline(resnet)


@pytest.fixture(scope="module")
def mobilenet_q(mobilenet):
    return quantize_pipeline(mobilenet)


@pytest.fixture(scope="module")
def peer_tools():
    return load_benchmark("peer_tools")


@pytest.fixture(scope="module")
def ort_default_q(resnet, peer_tools):
    """resnet18-tiny, BN folded, quantized by onnxruntime's quantize_static with its defaults
    (QDQ, int8 activations and weights, per tensor, MinMax)."""
    folded = Pipeline(parse_spec("fold-bn")).run(resnet).model
    return peer_tools.ort_quantize_default(folded, random_calibration(folded, samples=16).take(16))


# ---------------------------------------------------------------------------------------------
# the int32 bias overflow guard

def _bias_model(k: int = 3):
    """Conv 3->4 whose channels 1 and 3 have near-zero weights and a large bias (a filter pruned
    or trained to nothing, its channel carried by the bias)."""
    w = weights(0, 4, k, 3, 3)
    b = weights(1, 4)
    w[1] = 1e-9 * np.sign(w[1])
    w[3] = 1e-9 * np.sign(w[3])
    b[1], b[3] = 800.0, -600.0
    model = make([helper.make_node("Conv", ["x", "W", "B"], ["y"], name="op", pads=[1] * 4)], {"W": w, "B": b},
                 [("x", [1, k, 8, 8])], [("y", [1, 4, 8, 8])])
    return model, w, b


def test_bias_guard_widens_weight_scales_and_keeps_the_bias():
    model, w, b = _bias_model()
    calib = random_feeds(model, shapes(model), seed=1, count=48)
    out, result = apply(Quantize(speed=False, calibration=calib), model)
    assert result.stats["weight channels widened for int32 bias"] == 2
    assert any("2 weight channels got a wider scale" in n for n in result.notes)
    g = Graph(out)
    op = the(g, "op")
    input_scale = float(g.constant(g.producer(op.input(0)).input(1)))
    bias_dq = g.producer(op.input(2))
    bq = g.constant(bias_dq.input(0))
    bias_scale = np.asarray(g.constant(bias_dq.input(1)), np.float64)
    assert bq.dtype == np.int32 and np.all(np.abs(bq.astype(np.int64)) < INT32_MAX)
    np.testing.assert_allclose(bq * bias_scale, b, rtol=1e-4, atol=1e-3)  # every bias survives

    # without the guard: the int32 bias of the two channels would be ~1e15, saturated to
    # INT32_MAX, i.e. a bias of ~1e-3 where the float model has 800 and -600
    plain = weight_qparams(w, 0).scale.astype(np.float64)
    unguarded = b.astype(np.float64) / (input_scale * plain)
    assert np.all(np.abs(unguarded[[1, 3]]) > 1000 * INT32_MAX)
    assert np.all(np.abs(unguarded[[0, 2]]) < INT32_MAX)
    saturated = np.clip(np.rint(unguarded), -INT32_MAX, INT32_MAX) * input_scale * plain
    assert np.all(np.abs(saturated[[1, 3]]) < 0.01) and np.all(np.abs(b[[1, 3]]) >= 600)

    # the quantized model computes what the float one does, within half an output step
    out_scale = float(g.constant(g.consumers(op.outputs[0])[0].input(1)))
    test = random_feeds(model, shapes(model), seed=9, count=4)
    ref = outputs(model, test, "disabled")
    for level in ("disabled", "all"):
        got = outputs(out, test, level)
        err = max(float(np.abs(r[0] - q[0]).max()) for r, q in zip(ref, got))
        assert err <= 0.75 * out_scale, (level, err, out_scale)
        widened = max(float(np.abs(r[0][:, [1, 3]] - q[0][:, [1, 3]]).max()) for r, q in zip(ref, got))
        assert widened <= 0.5 * out_scale + 1e-3, (level, widened)


def test_bias_guard_not_triggered_by_ordinary_weights():
    model, w, b = _bias_model()
    w2 = weights(0, 4, 3, 3, 3)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w2, "W"))
    out, result = apply(Quantize(speed=False, calibration=random_feeds(model, shapes(model), seed=1, count=16)), model)
    assert "weight channels widened for int32 bias" not in result.stats
    assert not any("wider scale" in n for n in result.notes)


def test_bias_guard_leaves_headroom_for_the_accumulator():
    rng = np.random.default_rng(0)
    k = 64  # 64 input channels x 3x3 = 576 taps
    w = (0.1 * rng.standard_normal((4, k, 3, 3))).astype(F32)
    b = (0.1 * rng.standard_normal(4)).astype(F32)
    w[1], b[1] = 2e-4, 800.0  # small weights, not negligible ones, and a large bias
    model = make([helper.make_node("Conv", ["x", "W", "B"], ["y"], name="op", pads=[1] * 4)], {"W": w, "B": b},
                 [("x", [1, k, 6, 6])], [("y", [1, 4, 6, 6])])
    calib = [{"x": np.abs(rng.standard_normal((1, k, 6, 6))).astype(F32)} for _ in range(40)]  # post-Relu
    out, result = apply(Quantize(speed=False, calibration=calib), model)
    assert result.stats["weight channels widened for int32 bias"] == 1
    test = [{"x": np.abs(rng.standard_normal((1, k, 6, 6))).astype(F32)} for _ in range(4)]
    ref, got = outputs(model, test, "disabled"), outputs(out, test, "all")
    assert max(float(np.abs(r[0][0, 1] - q[0][0, 1]).max()) for r, q in zip(ref, got)) < 5.0


# ---------------------------------------------------------------------------------------------
# weights held in Constant nodes

def _weight_arrays(model: onnx.ModelProto) -> dict[str, tuple]:
    """Per Conv/Gemm: (int8 weight, its scales, its axis) as written."""
    g = Graph(model)
    found = {}
    for n in g.nodes():
        if n.op in ("Conv", "Gemm"):
            dq = g.producer(n.input(1))
            assert dq.op == "DequantizeLinear", n.label
            found[n.name] = (g.constant(dq.input(0)), np.asarray(g.constant(dq.input(1))), dq.attr("axis"))
    return found


def test_weights_in_constant_nodes_are_quantized_per_channel_like_initializers():
    name = "repvgg_a0-tiny-deploy"  # Conv+bias, Relu, Gemm: no BN, so quantize sees the Constant nodes
    held = build(name, constant_weights=True)
    plain = build(name)
    assert count_ops(held).get("Constant", 0) >= 16 and "Constant" not in count_ops(plain)
    calib = random_calibration(plain, samples=24)
    (r_held, p_held), (r_plain, p_plain) = (quantize_pipeline(m, "quantize:speed=false", calib) for m in (held, plain))
    assert p_held.status == p_plain.status == "applied"
    assert p_held.stats["weights quantized"] == p_plain.stats["weights quantized"] == 9
    a, b = _weight_arrays(r_held.model), _weight_arrays(r_plain.model)
    assert set(a) == set(b) and len(a) == 9
    for node in a:
        (wa, sa, axa), (wb, sb, axb) = a[node], b[node]
        assert wa.dtype == np.int8 and np.array_equal(wa, wb), node
        assert np.array_equal(sa, sb) and sa.ndim == 1 and sa.size == wa.shape[axa], node
        assert axa == axb == 0, node  # Conv [M, C, k, k] and Gemm transB=1 [N, K]: axis 0
    # never as a calibrated activation: no QuantizeLinear reads a constant, and the two models
    # quantize the same activations
    g = Graph(r_held.model)
    q_inputs = [n.input(0) for n in g.nodes("QuantizeLinear")]
    assert q_inputs and not any(g.is_constant(t) for t in q_inputs)
    assert count_ops(r_held.model) == count_ops(r_plain.model)
    assert "Constant" not in count_ops(r_held.model)
    assert audit(r_held.model).islands == []


# ---------------------------------------------------------------------------------------------
# opset upgrade

@pytest.fixture(scope="module")
def resnet_opset11() -> onnx.ModelProto:
    """resnet18-tiny at opset 11: built at opset 13 (the zoo's lowest) and relabelled, which is
    exact here because none of its ops (Conv, BN, Relu, MaxPool, Add, GAP, Flatten, Gemm) changed
    meaning between 11 and 13; onnx's version converter cannot downgrade it."""
    model = build("resnet18-tiny", opset=13)
    model.opset_import[0].version = 11
    onnx.checker.check_model(model, full_check=True)
    return model


def test_opset11_upgraded_to_13_and_quantized_per_channel(resnet_opset11):
    result, p = quantize_pipeline(resnet_opset11)
    assert p.status == "applied"
    assert any(n.startswith("upgraded opset 11 -> 13 for per-channel QDQ") for n in p.notes), p.notes
    assert result.model.opset_import[0].version == 13
    assert p.details["weights"] == "int8 symmetric per channel"
    for node, (wq, scale, axis) in _weight_arrays(result.model).items():
        assert axis == 0 and scale.shape == (wq.shape[0],), node
    assert audit(result.model).islands == []


def test_opset_upgrade_keeps_the_float_outputs(resnet_opset11):
    graph = Graph(resnet_opset11, input_shapes=shapes(resnet_opset11))
    result = PassResult()
    assert _ensure_opset(graph, True, result) is True
    upgraded = graph.to_model()
    assert upgraded.opset_import[0].version == 13
    feeds = random_feeds(resnet_opset11, shapes(resnet_opset11), seed=3, count=3)
    for before, after in zip(run_model(resnet_opset11, feeds), run_model(upgraded, feeds)):
        assert np.array_equal(before["output"], after["output"])


def test_opset11_per_tensor_is_not_upgraded(resnet_opset11):
    result, p = quantize_pipeline(resnet_opset11, "fold-bn,quantize:speed=false,per-channel=false")
    assert p.status == "applied" and result.model.opset_import[0].version == 11
    assert not any("upgraded" in n for n in p.notes)
    assert all(axis is None and scale.shape == () for _, scale, axis in _weight_arrays(result.model).values())


# ---------------------------------------------------------------------------------------------
# Concat of very different ranges

def _detector_head() -> onnx.ModelProto:
    """Boxes in pixels (Conv -> Clip(0, 640)) and scores in 0..1 (Conv -> Sigmoid), concatenated
    and split again into two outputs, like a detector's decoded head."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["b"], name="box_conv", pads=[1] * 4),
             helper.make_node("Clip", ["b", "zero", "max_px"], ["boxes_px"], name="box_clip"),
             helper.make_node("Conv", ["x", "W2", "B2"], ["s"], name="score_conv", pads=[1] * 4),
             helper.make_node("Sigmoid", ["s"], ["scores_p"], name="score_sigmoid"),
             helper.make_node("Concat", ["boxes_px", "scores_p"], ["det"], name="head_concat", axis=1),
             helper.make_node("Split", ["det", "split"], ["boxes", "scores"], name="head_split", axis=1)]
    inits = {"W1": weights(0, 4, 3, 3, 3) * 60, "B1": np.full(4, 320, F32), "W2": weights(1, 2, 3, 3, 3),
             "B2": weights(2, 2), "zero": np.array(0, F32), "max_px": np.array(640, F32),
             "split": np.array([4, 2], np.int64)}
    return make(nodes, inits, [("x", [1, 3, 8, 8])], [("boxes", [1, 4, 8, 8]), ("scores", [1, 2, 8, 8])])


def test_concat_of_mismatched_ranges_stays_float_and_keeps_the_small_part():
    model = _detector_head()
    calib = random_feeds(model, shapes(model), seed=1, count=48)
    kept, r_kept = apply(Quantize(speed=False, calibration=calib), model)
    forced, r_forced = apply(Quantize(speed=False, calibration=calib, concat_range_ratio=0), model)

    assert "Concat" not in r_kept.details["quantized_ops"]
    assert r_kept.details["quantized_ops"] == {"Conv": 2, "Sigmoid": 1}
    why = r_kept.details["kept_float"]["det"]
    assert "Concat 'head_concat' stays float" in why and "ranges differ" in why and "scores_p" in why
    assert any(s.where == "det" and "ranges differ" in s.reason for s in r_kept.skipped)
    assert r_forced.details["quantized_ops"]["Concat"] == 1 and r_forced.details["kept_float"] == {}

    # the report's per-output fidelity (held-back samples): scores survive only when kept float
    held_kept = r_kept.details["held_back"]["outputs"]
    held_forced = r_forced.details["held_back"]["outputs"]
    assert held_kept["scores"]["max_abs"] < 0.05 and held_kept["scores"]["cosine"] > 0.999
    assert held_forced["scores"]["max_abs"] > 0.5 and held_forced["scores"]["cosine"] < 0.5
    assert held_kept["boxes"]["cosine"] > 0.999 and held_forced["boxes"]["cosine"] > 0.999

    # measured here too, on the 0..1 slice and the pixel slice of new samples
    test = random_feeds(model, shapes(model), seed=5, count=8)
    ref = outputs(model, test, "disabled")

    def error(q, k):
        return max(float(np.abs(r[k] - g[k]).max()) for r, g in zip(ref, outputs(q, test, "all")))
    assert error(kept, 1) < 0.05 < 0.5 < error(forced, 1)
    assert error(kept, 0) < 10 and error(forced, 0) < 10  # the pixel part: a few pixels either way


# ---------------------------------------------------------------------------------------------
# Relu/Clip folding

@pytest.mark.parametrize("which, act", [("resnet", "Relu"), ("mobilenet", "Clip")])
def test_folding_relu_and_clip_is_exact(request, which, act):
    model = request.getfixturevalue(which)
    calib = random_calibration(model, samples=24)
    folded, p_folded = quantize_pipeline(model, "fold-bn,quantize:speed=false", calib)
    kept, p_kept = quantize_pipeline(model, "fold-bn,quantize:speed=false,keep-activations=true", calib)
    n_act = count_ops(model)[act]
    assert len(p_folded.details["folded"]) == p_folded.stats["Relu/Clip folded"] == n_act
    assert act not in count_ops(folded.model)
    assert p_kept.details["folded"] == [] and len(p_kept.details["kept_activations"]) == len(p_folded.details["folded"])
    assert count_ops(kept.model)[act] == len(p_folded.details["folded"])
    test = random_feeds(model, shapes(model), seed=11, count=4)
    for level in ("disabled", "all"):
        a, b = outputs(folded.model, test, level), outputs(kept.model, test, level)
        for x, y in zip(a, b):
            assert np.array_equal(x[0], y[0]), (level, float(np.abs(x[0] - y[0]).max()))
    assert audit(kept.model).islands == []


def test_clip_minus_one_to_one_is_not_folded():
    """Clip(-1, 1): the uint8 range [-1, 1] reaches -1.004, beyond the floor, so Q alone would let
    values below -1 through: the Clip must stay."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Clip", ["a", "lo", "hi"], ["c"], name="clip"),
             helper.make_node("Conv", ["c", "W2", "B2"], ["y"], name="c2", pads=[1] * 4)]
    model = make(nodes, {"W1": weights(0, 4, 3, 3, 3), "B1": weights(1, 4), "W2": weights(2, 4, 4, 3, 3),
                         "B2": weights(3, 4), "lo": np.array(-1, F32), "hi": np.array(1, F32)},
                 [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    out, result = apply(Quantize(speed=False, calibration=random_feeds(model, shapes(model), seed=1, count=16)), model)
    assert result.details["folded"] == []
    assert count_ops(out)["Clip"] == 1
    assert "Clip 'clip' kept" in result.details["kept_float"]["c"]
    assert "cannot make it redundant" in result.details["kept_float"]["c"]
    test = random_feeds(model, shapes(model), seed=5, count=4)
    ref, got = outputs(model, test, "disabled"), outputs(out, test, "all")
    assert max(float(np.abs(r[0] - q[0]).max()) for r, q in zip(ref, got)) < 0.2 * max(
        float(np.abs(r[0]).max()) for r in ref)


def test_relu_whose_input_is_read_elsewhere_is_not_folded():
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2", "B2"], ["y1"], name="c2", pads=[1] * 4),
             helper.make_node("Conv", ["a", "W3", "B3"], ["y2"], name="c3", pads=[1] * 4)]
    model = make(nodes, {"W1": weights(0, 4, 3, 3, 3), "B1": weights(1, 4), "W2": weights(2, 4, 4, 3, 3),
                         "B2": weights(3, 4), "W3": weights(4, 4, 4, 3, 3), "B3": weights(5, 4)},
                 [("x", [1, 3, 8, 8])], [("y1", [1, 4, 8, 8]), ("y2", [1, 4, 8, 8])])
    out, result = apply(Quantize(speed=False, calibration=random_feeds(model, shapes(model), seed=1, count=16)), model)
    assert result.details["folded"] == [] and "relu" not in result.details["kept_activations"]
    assert count_ops(out)["Relu"] == 1
    g = Graph(out)
    # c3 reads the Conv output with its negative values intact: its input range starts below 0
    zero = g.constant(g.producer(the(g, "c3").input(0)).input(2))
    assert int(zero) > np.iinfo(zero.dtype).min
    # ... while c2 reads the Relu's own output, whose range starts at 0
    zero = g.constant(g.producer(the(g, "c2").input(0)).input(2))
    assert int(zero) == np.iinfo(zero.dtype).min
    test = random_feeds(model, shapes(model), seed=5, count=4)
    ref, got = outputs(model, test, "disabled"), outputs(out, test, "all")
    for k in (0, 1):
        assert max(float(np.abs(r[k] - q[k]).max()) for r, q in zip(ref, got)) < 0.1 * max(
            float(np.abs(r[k]).max()) for r in ref)


# ---------------------------------------------------------------------------------------------
# already quantized

def test_our_quantized_model_is_left_unchanged(resnet_q):
    result, _ = resnet_q
    again = Pipeline(parse_spec("quantize:speed=false"), calibration=random_calibration(result.model, samples=4)).run(result.model)
    p = again.report.passes[0]
    assert p.status == "unchanged" and again.model is result.model
    assert any("already quantized" in n and "nothing changed" in n for n in p.notes), p.notes
    assert p.stats == {}


def test_onnxruntime_quantized_model_is_left_unchanged(ort_default_q):
    again = Pipeline(parse_spec("fold-bn,quantize:speed=false"), calibration=random_calibration(ort_default_q, samples=4)).run(
        ort_default_q)
    p = again.report.passes[-1]
    assert p.status == "unchanged"
    assert any("already quantized (DequantizeLinear, QuantizeLinear)" in n for n in p.notes), p.notes
    assert count_ops(again.model) == count_ops(ort_default_q)


# ---------------------------------------------------------------------------------------------
# the fusion audit

@pytest.mark.parametrize("which", ["resnet_q", "mobilenet_q"])
def test_our_quantized_models_have_no_float_islands(request, which):
    result, p = request.getfixturevalue(which)
    found = audit(result.model)
    assert found.islands == []
    ops = p.details["quantized_ops"]
    assert found.integer_ops["QLinearConv"] == ops["Conv"] and found.integer_ops["QLinearAdd"] == ops["Add"]
    assert found.integer_ops["QGemm"] == 1 and found.integer_ops["QLinearGlobalAveragePool"] == 1
    assert found.dequantize == 0 and found.quantize == 1  # only the input's Q: QGemm writes float
    # the pass's own report says the same
    assert p.stats["float islands"] == 0 and p.details["fusion"]["float_islands"] == []


def test_audit_finds_the_float_islands_of_onnxruntimes_default_quantizer(ort_default_q):
    # int8 activations: x86 builds of onnxruntime leave these units in float (ARM builds fuse them, below)
    found = audit(ort_default_q, int8_fused=False)
    kinds = {i.op for i in found.islands}
    assert {"Conv", "Add"} <= kinds, kinds
    convs = [i for i in found.islands if i.op == "Conv"]
    adds = [i for i in found.islands if i.op == "Add"]
    assert len(convs) >= 8 and len(adds) == 8  # every residual Add of resnet18 runs in float
    assert all("from DequantizeLinear" in i.inputs_from for i in found.islands)
    assert all(i.inputs_from.startswith("input 0, input 1") for i in adds)
    assert "QLinearAdd" not in found.integer_ops and found.integer_ops.get("QLinearConv", 0) < 20
    # as an ARM build runs it, whichever CPU audits: every unit fused, the residual Adds too
    on_arm = audit(ort_default_q, int8_fused=True)
    assert on_arm.islands == [] and on_arm.integer_ops["QLinearAdd"] == 8 and on_arm.integer_ops["QLinearConv"] == 20
    # with no platform named, the audit is this CPU's
    assert audit(ort_default_q).islands == (on_arm.islands if this_cpu().arch.startswith("arm") else found.islands)


def test_an_int8_model_made_for_arm_is_audited_as_arm_fuses_it(resnet):
    # built and audited on any CPU: on x86 an int8-activation model would show every unit as an
    # island, which the ARM it is made for does not run in float
    m = Pipeline(parse_spec("fold-bn,quantize:target=arm64,speed=false"),
                 calibration=random_calibration(resnet, samples=16)).run(resnet)
    p = m.report.passes[-1]
    assert p.details["target"]["activations"] == "int8"
    assert p.stats["float islands"] == 0 and p.details["fusion"]["integer_ops"]["QLinearConv"] == 20
    assert audit(m.model, int8_fused=False).islands != []  # what an x86 audit would have reported
    assert any(n.startswith("fusion audit (onnxruntime's optimized graph, as on arm64)") for n in p.notes), p.notes


def test_int8_activations_made_for_x86_are_audited_as_x86_runs_them(resnet):
    # the same activations for an x86 target: whichever CPU builds it, the islands x86 leaves are reported
    m = Pipeline(parse_spec("fold-bn,quantize:target=x86-avx2,activations=int8,speed=false"),
                 calibration=random_calibration(resnet, samples=16)).run(resnet)
    p = m.report.passes[-1]
    assert p.details["target"]["activations"] == "int8" and p.stats["float islands"] > 0
    assert p.details["fusion"]["float_islands"] == audit(m.model, int8_fused=False).as_dict()["float_islands"]


def test_inspect_fusion_prints_and_reports_the_islands(capsys, tmp_path, ort_default_q, resnet_q):
    theirs = tmp_path / "ort.onnx"
    theirs.write_bytes(ort_default_q.SerializeToString())
    ours = tmp_path / "ours.onnx"
    ours.write_bytes(resnet_q[0].model.SerializeToString())
    expected = audit(ort_default_q)

    code, out, err = run_cli(capsys, "inspect", "--fusion", theirs)
    assert code == 0, err
    assert f"float islands: {len(expected.islands)}" in out
    for island in expected.islands:
        assert f"{island.op} '{island.name}': {island.inputs_from}" in out

    code, out, err = run_cli(capsys, "inspect", "--fusion", "--json", theirs)
    assert code == 0, err
    fusion = json.loads(out)["fusion"]
    assert len(fusion["float_islands"]) == len(expected.islands)  # none on ARM, which fuses int8 (above)
    assert [(i["op"], i["name"]) for i in fusion["float_islands"]] == [(i.op, i.name) for i in expected.islands]
    assert fusion["integer_ops"] == expected.integer_ops

    code, out, err = run_cli(capsys, "inspect", "--fusion", ours)
    assert code == 0, err
    assert "float islands: 0 (every quantized op runs in an integer kernel)" in out


def test_inspect_fusion_audits_as_the_target_cpu_runs_it(capsys, tmp_path, ort_default_q):
    # int8 activations: an x86 build leaves units in float that an ARM build fuses; --target says
    # which one to audit as, whichever CPU runs inspect
    path = tmp_path / "ort.onnx"
    path.write_bytes(ort_default_q.SerializeToString())
    as_x86 = audit(ort_default_q, int8_fused=False)
    for name, expected in (("x86-avx2", as_x86.islands), ("x86-vnni", as_x86.islands), ("arm64", [])):
        code, out, err = run_cli(capsys, "inspect", "--fusion", "--target", name, "--json", path)
        assert code == 0, err
        fusion = json.loads(out)["fusion"]
        assert [(i["op"], i["name"]) for i in fusion["float_islands"]] == [(i.op, i.name) for i in expected], name
        assert fusion["target"]["name"] == name
    assert len(as_x86.islands) >= 16  # the two answers differ: the test can tell them apart
    code, out, err = run_cli(capsys, "inspect", "--fusion", "--target", "arm64", path)
    assert code == 0, err
    assert "fusion (onnxruntime's optimized graph, as on arm64):" in out
    assert "float islands: 0 (every quantized op runs in an integer kernel)" in out


def test_inspect_target_errors_are_one_line(capsys, tmp_path, ort_default_q):
    path = tmp_path / "ort.onnx"
    path.write_bytes(ort_default_q.SerializeToString())
    assert_one_line_error(*run_cli(capsys, "inspect", "--fusion", "--target", "x86-sse", path), 2,
                          "--target", "x86-sse", "x86-avx2", "arm64")
    assert_one_line_error(*run_cli(capsys, "inspect", "--target", "arm64", path), 2, "--target", "--fusion")


# ---------------------------------------------------------------------------------------------
# the CLI

@pytest.fixture
def cli_model(tmp_path, resnet) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(resnet.SerializeToString())
    return path


def _cli_error(capsys, tmp_path, code, words, *args) -> str:
    before = listing(tmp_path)
    got = run_cli(capsys, *args)
    line = assert_one_line_error(*got, code, *words)
    assert listing(tmp_path) == before, "a failed run left files behind"
    return line


def test_cli_max_drop_on_eval_labels_for_a_model_without_a_classes_output(capsys, tmp_path):
    # top-1 over a detector's boxes would be a number that means nothing: refused, with the way out
    model_path, calib, labelled = tmp_path / "det.onnx", tmp_path / "calib.npz", tmp_path / "val.npz"
    onnx.save(_detector_head(), model_path)
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(F32)
    np.savez(calib, x=x)
    np.savez(labelled, x=x[:10], labels=np.arange(10) % 3)
    _cli_error(capsys, tmp_path, 3, ("quantize: max-drop on --eval", "top-1 needs an output shaped [N, classes]",
                                     "boxes [1, 4, 8, 8], scores [1, 2, 8, 8]", "without --eval"),
               "run", model_path, "--passes", "quantize:max-drop=0.01,speed=false", "--calib", calib,
               "--eval", labelled, "-o", tmp_path / "out.onnx")


def test_cli_without_calibration_data(capsys, tmp_path, cli_model):
    _cli_error(capsys, tmp_path, 3, ("quantize needs calibration data", "--calib"),
               "run", cli_model, "--passes", "fold-bn,quantize", "-o", tmp_path / "out.onnx")


@pytest.mark.parametrize("arrays, words", [
    ({"foo": np.zeros((4, 3, 32, 32), F32), "bar": np.zeros((4, 3, 32, 32), F32)}, ("holds arrays", "'input'")),
    ({"input": np.zeros((4, 3, 16, 16), F32)}, ("input 'input' has shape", "[1, 3, 32, 32]")),
    ({"input": np.zeros((4, 3, 32, 32), np.int32)}, ("input 'input' has dtype int32", "float32")),
], ids=["name", "shape", "dtype"])
def test_cli_bad_calibration_arrays(capsys, tmp_path, cli_model, arrays, words):
    data = tmp_path / "calib.npz"
    np.savez(data, **arrays)
    line = _cli_error(capsys, tmp_path, 3, words,
                      "run", cli_model, "--passes", "fold-bn,quantize:speed=false", "--calib", data, "-o", tmp_path / "out.onnx")
    assert "calib.npz" in line


def test_cli_corrupt_model(capsys, tmp_path, resnet):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(resnet.SerializeToString()[:400])
    data = tmp_path / "calib.npz"
    np.savez(data, input=np.zeros((2, 3, 32, 32), F32))
    _cli_error(capsys, tmp_path, 3, ("bad.onnx",),
               "run", bad, "--passes", "fold-bn,quantize:speed=false", "--calib", data, "-o", tmp_path / "out.onnx")


@pytest.mark.parametrize("spec, words", [
    ("fold-bn,quantize:speed=false,method=bogus", ("method", "bogus", "minmax")),
    ("fold-bn,quantize:speed=false,percentile=10", ("percentile must be in (50, 100]", "10")),
])
def test_cli_bad_quantize_options(capsys, tmp_path, cli_model, spec, words):
    _cli_error(capsys, tmp_path, 2, words,
               "run", cli_model, "--passes", spec, "--calib", "random", "-o", tmp_path / "out.onnx")


def test_cli_calib_random_works_and_warns(capsys, tmp_path, cli_model):
    out_path, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, out, err = run_cli(capsys, "run", cli_model, "--passes", "fold-bn,quantize:speed=false", "--calib", "random",
                             "-o", out_path, "--report", report)
    assert code == 0, err
    assert "warning: calibrated on random inputs (--calib random)" in out
    q = onnx.load(str(out_path))
    assert count_ops(q)["QuantizeLinear"] > 0 and audit(q).islands == []
    passes = json.loads(report.read_text())["passes"]
    assert passes[-1]["name"] == "quantize" and passes[-1]["status"] == "applied"
    assert any(n.startswith("warning: calibrated on random inputs") for n in passes[-1]["notes"])


# ---------------------------------------------------------------------------------------------
# real data: the digits models

def _accuracy(model: onnx.ModelProto, test) -> float:
    logits = session(model, "all").run(None, {"input": test["input"]})[0]
    return float((logits.argmax(1) == test["labels"]).mean())


@pytest.fixture(scope="module")
def digits_test():
    with np.load(TEST) as data:
        return {"input": data["input"], "labels": data["labels"]}


@pytest.mark.parametrize("name, spec, max_drop", [
    ("digits_resnet", "fold-bn,quantize:speed=false", 0.005),
    ("digits_repvgg", "fold-bn,reparam,quantize:speed=false", 0.005),
    ("digits_mobilenetv2", "fold-bn,quantize:speed=false", 0.005),
])
def test_digits_accuracy_after_quantization(name, spec, max_drop, digits_test):
    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    result, p = quantize_pipeline(model, spec, load_feeds(CALIB, model))
    assert p.status == "applied" and p.stats["float islands"] == 0
    before, after = _accuracy(model, digits_test), _accuracy(result.model, digits_test)
    assert before > 0.95
    assert after >= before - max_drop, f"{name}: top-1 {before:.4f} -> {after:.4f}"
    assert count_ops(result.model).get("QuantizeLinear", 0) > 0


# Was a bug (fixed): max-drop on Linear -> ReLU -> Linear (an MLP head) crashes with KeyError while
# ranking: returning the second Gemm to float leaves the first Gemm's absorbed Relu output in
# plan.float_outputs, and apply_plan looks up tensor_q for it (same root cause as above)
def test_max_drop_on_an_mlp_does_not_crash():
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], name="fc2", transB=1)]
    model = make(nodes, {"W1": weights(0, 32, 16), "B1": weights(1, 32), "W2": weights(2, 10, 32),
                         "B2": weights(3, 10)}, [("x", [1, 16])], [("y", [1, 10])])
    rng = np.random.default_rng(0)
    calib = FeedSet({"x": rng.standard_normal((48, 16)).astype(F32)}, 1)
    held = calib.take(8)
    ref = run_feeds(make_session(model.SerializeToString()), held)

    def score(m: onnx.ModelProto) -> float:
        return compare(ref, run_feeds(make_session(m.SerializeToString(), optimization="all"), held)).cosine

    run = Pipeline([Quantize(speed=False, evaluate=score, max_drop=0.0, holdback=8)], calibration=calib, verify=False).run(model)
    p = run.report.passes[-1]
    assert p.status == "applied", p.message
    assert "accuracy_control" in p.details


# Was a bug (fixed): bias correction compared the quantized weight, which carries Gemm alpha, with
# the float weight without it, and dropped the correction for the whole network.
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_bias_correction_works_in_a_network_with_gemm_alpha(alpha):
    rng = np.random.default_rng(0)
    w = np.full((8, 1, 3, 3), 0.013, F32) + 0.001 * rng.standard_normal((8, 1, 3, 3)).astype(F32)
    w[0, 0, 0, 0] = 1.0  # per-tensor scale 1/127: the 0.013 weights all round up by ~20%
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1] * 4, group=8, name="dw"),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "Wg", "Bg"], ["output"], transB=1, alpha=alpha, name="fc")]
    model = make(nodes, {"w": w, "b": np.zeros(8, F32), "Wg": weights(5, 4, 8), "Bg": np.zeros(4, F32)},
                 [("input", [1, 8, 12, 12])], [("output", [1, 4])])
    calib = FeedSet({"input": (2.0 + np.random.default_rng(1).standard_normal((48, 8, 12, 12))).astype(F32)}, 1)
    run = Pipeline([Quantize(speed=False, per_channel=False, holdback=8, bias_correction=True)], calibration=calib,
                   verify=False).run(model)
    report = run.report.passes[-1].details["bias_correction"]
    shifts = report["mean_abs_channel_shift"]
    assert report["kept_round"] > 0 and shifts[report["kept_round"]] < shifts[0] / 2, report
