"""quantize, reviewed as a demanding user would use it: graph shapes the other quantize tests do not
build (activations after Gemm/MatMul at the end of a graph, MaxPool with Indices or below opset 12,
Gemm with a 2-D C, shared weights, graph outputs read inside the graph, Clip with one bound or with
bounds fed at run time), exclusions and op-types as onnxruntime really runs them, calibration
details (batch > 1, one-shot iterators, the range cache across methods, an unwritable cache), bias
correction with Gemm alpha, accuracy control on an MLP, the fusion audit's definition of a float
island, and the CLI's config/--calib/--preprocess combinations, --dry-run and inspect --fusion.

The first group pinned bugs found in review (each was a strict xfail, now fixed; the comment above
each says what it was); the others guard tricky cases that worked from the start.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis.fusion import audit
from onnxopt.data import FeedSet
from onnxopt.graph import Graph
from onnxopt.passes import Quantize
from onnxopt.pipeline import Pipeline
from onnxopt.runtime import make_session, random_feeds, run_feeds, run_model
from onnxopt.testing import apply, assert_one_line_error, count_ops, make_model, run_cli
from onnxopt.verify import compare

F32 = np.float32


# -- helpers -----------------------------------------------------------------------------------
make = make_model


def weights(seed: int, *shape, std: float = 0.3) -> np.ndarray:
    return (std * np.random.default_rng(seed).standard_normal(shape)).astype(F32)


def conv(x: str, y: str, name: str, cin: int, cout: int, seed: int, k: int = 3, pad: int = 1):
    node = helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[pad] * 4)
    return node, {f"{name}.w": weights(seed, cout, cin, k, k), f"{name}.b": weights(seed + 100, cout)}


def shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in model.graph.input}


def quantize(model: onnx.ModelProto, samples: int = 16, **options):
    feeds = random_feeds(model, shapes(model), seed=1, count=samples)
    return apply(Quantize(speed=False, calibration=feeds, **options), model)


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


def scalar_scales(model: onnx.ModelProto) -> dict[str, float]:
    return {t.name: float(numpy_helper.to_array(t)) for t in model.graph.initializer
            if t.name.endswith("_scale") and not t.dims}


def small_cnn() -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Add(residual) -> Relu -> Conv, input 'x' [1, 3, 8, 8]."""
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("r", "b", "c2", 4, 4, seed=1)
    c3, i3 = conv("s", "y", "c3", 4, 4, seed=2)
    nodes = [c1, helper.make_node("Relu", ["a"], ["r"], name="relu1"), c2,
             helper.make_node("Add", ["r", "b"], ["sum"], name="add"),
             helper.make_node("Relu", ["sum"], ["s"], name="relu2"), c3]
    return make(nodes, {**i1, **i2, **i3}, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def cnn_file(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(small_cnn().SerializeToString())
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype(F32))
    return path


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


def _residual_add():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("x", "b", "c2", 3, 4, seed=2)
    c3, i3 = conv("s", "y", "c3", 4, 4, seed=1)
    return make([c1, c2, helper.make_node("Add", ["a", "b"], ["s"], name="add"), c3], {**i1, **i2, **i3},
                [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])


def _concat():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("x", "b", "c2", 3, 4, seed=2)
    c3, i3 = conv("s", "y", "c3", 8, 4, seed=1)
    return make([c1, c2, helper.make_node("Concat", ["a", "b"], ["s"], name="cat", axis=1), c3], {**i1, **i2, **i3},
                [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])


# An op kept float between quantized neighbours still reads a DequantizeLinear and feeds a
# QuantizeLinear (the next quantized op needs it): the very unit onnxruntime fuses, so Add/Concat
# become QLinearAdd/QLinearConcat and a float-weight Conv a QLinearConv (onnxruntime quantizes the
# weight itself). Placement cannot prevent that without making the neighbours float too; the report
# must say so instead of claiming the op runs in float.
@pytest.mark.parametrize("build, options, kernel, node", [
    (_residual_add, {"exclude": ("add",)}, "QLinearAdd", "add"),
    (_residual_add, {"op_types": ("Conv",)}, "QLinearAdd", "add"),
    (_concat, {"exclude": ("Concat",)}, "QLinearConcat", "cat"),
    (small_cnn, {"exclude": ("c2",)}, "QLinearConv", "c2"),
], ids=["exclude-add", "op-types-conv", "exclude-concat", "exclude-middle-conv"])
def test_an_op_kept_float_but_fused_by_onnxruntime_is_reported(build, options, kernel, node):
    model = build()
    out, result = quantize(model, **options)
    assert any(v == "excluded" for v in result.details["kept_float"].values())
    assert audit(out).integer_nodes.get(node) == kernel  # what onnxruntime really does
    assert result.details["fusion"]["fused_anyway"] == {node: kernel}
    assert any("fuses them into integer kernels anyway" in n and node in n for n in result.notes)


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


# Was a bug (fixed): method=mean-minmax is documented as 'mean of per-sample extremes' but
# TensorStats.update averages the extremes of each *batch*: the same samples calibrated in batches
# of 8 instead of 1 give different (wider) ranges
def test_mean_minmax_does_not_depend_on_the_batch_size():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("r", "y", "c2", 4, 4, seed=1)
    model = make([c1, helper.make_node("Relu", ["a"], ["r"]), c2], {**i1, **i2},
                 [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])])
    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(F32)
    runs = {b: Pipeline([Quantize(speed=False, holdback=0, method="mean-minmax")], calibration=FeedSet({"x": x}, b),
                        verify=False).run(model).model for b in (1, 8)}
    one, eight = scalar_scales(runs[1]), scalar_scales(runs[8])
    assert one.keys() == eight.keys() and one
    for k in one:
        assert eight[k] == pytest.approx(one[k], rel=1e-6), (k, one[k], eight[k])


# Was a bug (fixed): the fusion audit counts as a 'float island' an op that merely reads the last
# DequantizeLinear and writes a graph output (Conv -> Softmax), contrary to the README's definition
# 'every op onnxruntime left in float between a DequantizeLinear and a QuantizeLinear': a fully
# fused model is reported with 1 float island (fusion.audit ignores what the op feeds)
def test_audit_does_not_count_a_float_tail_as_an_island():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    model = make([c1, helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=1)], i1,
                 [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    assert audit(out).integer_ops.get("QLinearConv") == 1
    assert audit(out).islands == []
    assert result.stats["float islands"] == 0


# Was a bug (fixed): a one-shot iterator with fewer samples than holdback fails ('holds no samples
# beyond the held-back ones') where the same feeds as a list calibrate (and say the held-back ones
# overlap): Samples holds back the first `holdback` feeds of an iterator unconditionally
def test_one_shot_iterator_smaller_than_holdback_calibrates_like_a_list():
    c1, i1 = conv("x", "y", "c1", 3, 4, seed=0)
    model = make([c1], i1, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    feeds = random_feeds(model, shapes(model), seed=1, count=20)  # default holdback: 32
    _, from_list = apply(Quantize(speed=False, calibration=feeds), model)
    assert from_list.details["calibration"]["overlap"] is True
    _, from_iter = apply(Quantize(speed=False, calibration=iter(feeds)), model)
    assert from_iter.details["calibration"]["batches"] > 0


# -- the CLI -----------------------------------------------------------------------------------

# Was a bug (fixed): a pipeline file that sets calib (or preprocess) plus --calib (or --preprocess)
# on the command line ends in 'internal error: TypeError: Pipeline.__init__() got an unexpected
# keyword argument 'calib'' (or 'preprocess'); cli.run only pops the setting when the flag is absent
# (`calib or settings.pop(...)`), so it reaches Pipeline(**settings)
@pytest.mark.parametrize("setting", ["calib", "preprocess"])
def test_cli_flag_overrides_the_config_setting(capsys, tmp_path, cnn_file, setting):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, (10, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    config = tmp_path / "p.yaml"
    out = tmp_path / "out.onnx"
    if setting == "calib":
        config.write_text("passes: quantize:speed=false,holdback=4\ncalib: calib.npz\n")
        flags = ["--calib", tmp_path / "calib.npz"]
    else:
        config.write_text("passes: quantize:speed=false,holdback=2\npreprocess: size=8,scale=255\n")
        flags = ["--calib", images, "--preprocess", "size=8,scale=255"]
    code, stdout, err = run_cli(capsys, "run", cnn_file, "--config", config, *flags, "-o", out)
    assert code == 0, err
    assert "QuantizeLinear" in count_ops(onnx.load(str(out)))


# Was a bug (fixed): `calib: random` in a pipeline file outside the current folder is read as a path
# next to the file ('<dir>/random: no such data file or folder'): registry._settings joins calib
# with the file's folder before cli.run compares it with 'random'
def test_cli_config_calib_random(capsys, tmp_path, cnn_file):
    (tmp_path / "sub").mkdir()
    config = tmp_path / "sub" / "p.yaml"
    config.write_text("passes: quantize\ncalib: random\n")
    out = tmp_path / "out.onnx"
    code, stdout, err = run_cli(capsys, "run", cnn_file, "--config", config, "-o", out)
    assert code == 0, err
    assert "calibrated on random inputs" in stdout


# Was a bug (fixed): an unwritable ranges= cache (missing folder) makes the quantize pass 'fail'
# after the whole calibration, yet the run exits 0 and writes the *float* model to -o, with the
# warning ending in 'nothing written' although the model was written; README: exit 5 when an output
# cannot be written (or: quantize anyway and warn that the cache could not be saved)
def test_cli_unwritable_range_cache(capsys, tmp_path, cnn_file):
    out = tmp_path / "out.onnx"
    cache = tmp_path / "missing" / "ranges.npz"
    code, stdout, err = run_cli(capsys, "run", cnn_file, "--passes", f"quantize:speed=false,ranges={cache},holdback=4",
                                "--calib", tmp_path / "calib.npz", "-o", out)
    if code == 5:
        assert not out.exists() and len(err.splitlines()) == 1
    else:
        assert code == 0, err
        assert "QuantizeLinear" in count_ops(onnx.load(str(out))), "the float model was written as the result"


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


def test_dynamic_batch_with_input_shape_and_batched_calibration():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("r", "y", "c2", 4, 4, seed=1)
    model = make([c1, helper.make_node("Relu", ["a"], ["r"]), c2], {**i1, **i2},
                 [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])])
    rng = np.random.default_rng(0)
    calib = FeedSet({"x": rng.standard_normal((64, 3, 8, 8)).astype(F32)}, 4)
    result = Pipeline([Quantize(speed=False, holdback=2)], calibration=calib, input_shapes={"x": (4, 3, 8, 8)}).run(model)
    p = result.report.passes[-1]
    assert p.status == "applied" and p.details["calibration"]["batches"] == 14
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    feed = {"x": rng.standard_normal((3, 3, 8, 8)).astype(F32)}  # another batch size still runs
    got = run_model(result.model, [feed], optimization="all")[0]["y"]
    ref = run_model(model, [feed])[0]["y"]
    assert got.shape == (3, 4, 8, 8) and compare([{"y": ref}], [{"y": got}]).cosine > 0.999


def test_range_cache_serves_another_method_as_a_direct_run_would(tmp_path):
    model = small_cnn()
    calib = FeedSet({"x": np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype(F32)}, 1)
    cache = tmp_path / "ranges.npz"
    Pipeline([Quantize(speed=False, ranges=str(cache), holdback=4)], calibration=calib, verify=False).run(model)
    assert cache.is_file()
    for method in ("percentile", "entropy", "mse", "mean-minmax"):
        cached = Pipeline([Quantize(speed=False, ranges=str(cache), holdback=4, method=method)], verify=False).run(model)
        p = cached.report.passes[-1]
        assert p.status == "applied" and any("ranges read from" in n for n in p.notes), method
        direct = Pipeline([Quantize(speed=False, holdback=4, method=method)], calibration=calib, verify=False).run(model)
        assert scalar_scales(cached.model) == scalar_scales(direct.model), method


def test_one_shot_generator_with_bias_correction_and_max_drop():
    model = small_cnn()
    rng = np.random.default_rng(0)

    def feeds():
        for _ in range(60):
            yield {"x": rng.standard_normal((1, 3, 8, 8)).astype(F32)}

    result = Pipeline([Quantize(speed=False, calibration=feeds(), bias_correction=True, max_drop=0.5, holdback=8)]).run(model)
    p = result.report.passes[-1]
    assert p.status == "applied", p.message
    assert p.details["calibration"] == {"batches": 52, "held_back": 8, "overlap": False}
    assert p.details["bias_correction"]["samples"] == 52
    assert p.details["accuracy_control"]["returned"] == []
    assert p.details["held_back"]["samples"] == 8


def test_cli_dry_run_writes_neither_model_nor_range_cache(capsys, tmp_path, cnn_file):
    before = listing(tmp_path)
    code, out, err = run_cli(capsys, "run", cnn_file, "--passes",
                             f"quantize:speed=false,ranges={tmp_path / 'ranges.npz'},holdback=4", "--calib",
                             tmp_path / "calib.npz", "--dry-run")
    assert code == 0, err
    assert "dry run: no model written" in out
    assert listing(tmp_path) == before


def test_cli_json_report_has_the_fusion_audit_and_kept_float_reasons(capsys, tmp_path, cnn_file):
    report = tmp_path / "r.json"
    code, out, err = run_cli(capsys, "run", cnn_file, "--passes", "quantize:speed=false,exclude=c1,holdback=4",
                             "--calib", tmp_path / "calib.npz", "-o", tmp_path / "o.onnx", "--report", report)
    assert code == 0, err
    q = json.loads(report.read_text())["passes"][-1]
    assert q["name"] == "quantize" and q["status"] == "applied"
    # the first Conv reads the float graph input (no other quantized op reads it): it stays float
    assert q["details"]["kept_float"] == {"Conv 'c1'": "excluded"}
    fusion = q["details"]["fusion"]
    assert fusion["integer_ops"] == {"QLinearAdd": 1, "QLinearConv": 2} and fusion["float_islands"] == []
    assert fusion["quantize_linear"] == 1 and fusion["dequantize_linear"] == 1
    assert any(s["where"] == "Conv 'c1'" and "excluded" in s["reason"] for s in q["skipped"])
    assert not any(n.startswith("warning: exclude") for n in q["notes"])


def test_cli_inspect_fusion_on_a_float_model_and_a_corrupt_file(capsys, tmp_path, cnn_file):
    code, out, err = run_cli(capsys, "inspect", "--fusion", cnn_file)
    assert code == 0, err
    assert "not a quantized model" in out and "float islands" not in out
    code, out, err = run_cli(capsys, "inspect", "--fusion", "--json", cnn_file)
    fusion = json.loads(out)["fusion"]
    assert fusion["float_islands"] == [] and fusion["integer_ops"] == {} and fusion["dequantize_linear"] == 0
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(cnn_file.read_bytes()[:200])
    assert_one_line_error(*run_cli(capsys, "inspect", "--fusion", bad), 3, "bad.onnx")


@pytest.mark.parametrize("extra, code, words", [
    (("--calib", "CALIB", "--preprocess", "size=8"), 2, ("preprocessing spec", "not .npy/.npz")),
    (("--calib", "random", "--preprocess", "size=8"), 2, ("--preprocess is for --calib DATA",)),
    (("--preprocess", "size=8"), 2, ("--preprocess is for --calib DATA",)),
    (("--calib", "IMAGES", "--preprocess", "size=8,bogus=1"), 2, ("unknown key 'bogus'",)),
    (("--calib", "IMAGES", "--preprocess", "size=8"), 2, ("no images",)),
], ids=["npz", "random", "no-calib", "bad-key", "empty-folder"])
def test_cli_bad_preprocess_combinations(capsys, tmp_path, cnn_file, extra, code, words):
    (tmp_path / "images").mkdir()
    args = [str(tmp_path / "calib.npz") if a == "CALIB" else str(tmp_path / "images") if a == "IMAGES" else a
            for a in extra]
    before = listing(tmp_path)
    got = run_cli(capsys, "run", cnn_file, "--passes", "quantize:speed=false", *args, "-o", tmp_path / "o.onnx")
    assert_one_line_error(*got, code, *words)
    assert listing(tmp_path) == before
