"""quantize:speed=false, streamed statistics and range methods, the range cache, how calibration feeds are split,
cross-layer equalization, bias correction and accuracy control.

Placement, the scheme and the CLI are covered by tests/test_passes/test_quantize.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt import models
from onnxopt.data.feeds import FeedSet
from onnxopt.data.files import load_feeds
from onnxopt.graph.core import Graph
from onnxopt.passes import FoldBatchNorm, Quantize
from onnxopt.passes.quantize import calibrate
from onnxopt.passes.quantize.driver import Samples
from onnxopt.passes.quantize.equalize import equalize, find_pairs
from onnxopt.pipeline.contract import PassResult
from onnxopt.pipeline.run import Pipeline
from onnxopt.runtime.fidelity import compare
from onnxopt.runtime.sessions import make_session, random_feeds, run_feeds, run_model
from onnxopt.testing import apply, assert_exact, make_model, small_cnn
from onnxopt.testing import conv_node as conv
from onnxopt.testing import declared_shapes as shapes

F32 = np.float32


make = make_model


def random_set(shape, n, seed=0) -> FeedSet:
    rng = np.random.default_rng(seed)
    return FeedSet({"input": rng.standard_normal((n, *shape[1:])).astype(F32)}, shape[0])


# ---------------------------------------------------------------------------------------------
# statistics


def test_histogram_that_doubles_equals_one_histogram_of_everything(rng):
    st = calibrate.TensorStats()
    parts = [0.1 * rng.standard_normal(5000), rng.standard_normal(5000), 9 * rng.standard_normal(5000)]
    for p in parts:  # the range grows twice: bins are merged, never resampled
        st.update(p.astype(F32))
    data = np.concatenate(parts)
    assert st.half_width == 2.0 ** np.ceil(np.log2(np.abs(data).max()))
    expected, _ = np.histogram(data, bins=calibrate.BINS, range=(-st.half_width, st.half_width))
    assert st.hist.sum() == data.size
    assert np.abs(st.hist - expected).sum() <= 4  # values that sit exactly on a bin edge may go either way
    assert (st.lo, st.hi) == (float(data.astype(F32).min()), float(data.astype(F32).max()))
    assert st.hist.shape == (calibrate.BINS,)  # fixed size, whatever the number of updates


def test_range_methods(rng):
    st = calibrate.TensorStats()
    batches = [rng.uniform(-1, 3, 4000).astype(F32) for _ in range(8)]
    for b in batches:
        st.update(b)
    assert calibrate.compute_range(st, "minmax") == (st.lo, st.hi)
    lo, hi = calibrate.compute_range(st, "mean-minmax")
    assert lo == pytest.approx(np.mean([b.min() for b in batches])) and hi == pytest.approx(np.mean([b.max() for b in batches]))
    lo, hi = calibrate.compute_range(st, "percentile", percentile=99.0)
    all_ = np.concatenate(batches)
    assert lo == pytest.approx(np.quantile(all_, 0.01), abs=0.01) and hi == pytest.approx(np.quantile(all_, 0.99), abs=0.01)


def test_mse_and_entropy_clip_long_tails_but_not_uniform_data(rng):
    tail = calibrate.TensorStats()
    tail.update(rng.laplace(size=400000).astype(F32))  # long tails both ways
    lo, hi = calibrate.compute_range(tail, "mse")
    assert 3 < hi < tail.hi - 1 and tail.lo + 1 < lo < -3
    lo, hi = calibrate.compute_range(tail, "entropy")
    assert 3 < hi < tail.hi - 1
    relu = calibrate.TensorStats()
    relu.update(np.maximum(rng.standard_normal(200000), 0).astype(F32))  # half the values are exact zeros
    lo, hi = calibrate.compute_range(relu, "entropy")
    assert lo == 0 and 3.0 < hi <= relu.hi  # the zeros must not pull the threshold down
    flat = calibrate.TensorStats()
    flat.update(rng.uniform(0, 1, 100000).astype(F32))
    assert calibrate.compute_range(flat, "mse")[1] > 0.97  # nothing to clip in a uniform distribution


def test_samples_hold_back_the_tail_of_a_feedset_and_the_head_of_a_generator():
    fs = random_set((1, 3, 4, 4), 100)
    s = Samples(fs, samples=256, holdback=10)
    assert len(s.held) == 10 and np.array_equal(s.held[-1]["input"], fs.arrays["input"][99:100])
    assert sum(1 for _ in s.calibration()) == 90 and sum(1 for _ in s.calibration()) == 90  # re-iterable
    gen = ({"input": np.full((1, 3, 4, 4), i, F32)} for i in range(50))
    s = Samples(gen, samples=30, holdback=5, keep=30)
    assert [int(f["input"].flat[0]) for f in s.held] == [0, 1, 2, 3, 4]
    first = [int(f["input"].flat[0]) for f in s.calibration()]
    assert first == list(range(5, 35))
    assert len(list(s.calibration())) == 30  # a one-shot source: the second read is the kept copy
    gen = ({"input": np.full((1, 3, 4, 4), i, F32)} for i in range(50))
    s = Samples(gen, samples=30, holdback=5)  # nothing kept unless a second read is needed
    assert len(list(s.calibration())) == 30 and list(s.calibration()) == []


# ---------------------------------------------------------------------------------------------
# the range cache


def test_range_cache_makes_the_second_run_need_no_data(tmp_path):
    model = models.build("resnet18-tiny", seed=0)
    cache = tmp_path / "ranges.npz"
    calib = random_set((1, 3, 32, 32), 24)
    first = Pipeline([FoldBatchNorm(), Quantize(speed=False, ranges=str(cache), holdback=4)], calibration=calib).run(model)
    assert cache.is_file()
    assert any("ranges saved" in n for n in first.report.passes[-1].notes)
    second = Pipeline([FoldBatchNorm(), Quantize(speed=False, ranges=str(cache), holdback=4)], verify=False).run(model)
    report = second.report.passes[-1]
    assert report.status == "applied" and any("ranges read from" in n for n in report.notes)
    assert [n.op_type for n in first.model.graph.node] == [n.op_type for n in second.model.graph.node]
    scales = lambda m: {t.name: numpy_helper.to_array(t).tolist() for t in m.graph.initializer if t.name.endswith("_scale")}
    assert scales(first.model) == scales(second.model)
    # another model: the cache does not fit, and without data that is an error
    other = models.build("resnet18-tiny", seed=1)
    with pytest.raises(Exception, match="calibration data"):
        Pipeline([FoldBatchNorm(), Quantize(speed=False, ranges=str(cache))], verify=False).run(other)


def test_corrupt_cache_is_a_one_line_data_error(tmp_path):
    cache = tmp_path / "ranges.npz"
    cache.write_bytes(b"not a cache")
    with pytest.raises(Exception, match="not an onnxopt range cache"):
        calibrate.load_cache(cache)


# ---------------------------------------------------------------------------------------------
# cross-layer equalization


def pair_model(act="Relu", depthwise=False, seed=0):
    """conv1 (8 channels, ranges spread over 1000x) -> act -> conv2 (dense or depthwise) that
    reads each channel with the inverse weight, as BatchNormalization folding leaves a trained net:
    a small channel matters as much as a large one."""
    rng = np.random.default_rng(seed)
    spread = np.logspace(-2, 1, 8, dtype=F32)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(F32) * spread[:, None, None, None]
    w2 = rng.standard_normal((8, 1, 3, 3) if depthwise else (6, 8, 3, 3)).astype(F32)
    w2 = (w2 / (spread[:, None, None, None] if depthwise else spread[None, :, None, None])).astype(F32)
    inits = {"w1": w1, "b1": (rng.standard_normal(8) * spread).astype(F32), "w2": w2,
             "b2": rng.standard_normal(w2.shape[0]).astype(F32)}
    mid = [helper.make_node("Relu", ["y1"], ["a1"])] if act == "Relu" else [
        helper.make_node("Clip", ["y1", "lo", "hi"], ["a1"])] if act == "Clip" else []
    if act == "Clip":
        inits.update(lo=np.array(0, F32), hi=np.array(6, F32))
    src = "a1" if mid else "y1"
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["y1"], pads=[1] * 4), *mid,
             helper.make_node("Conv", [src, "w2", "b2"], ["output"], pads=[1] * 4, group=8 if depthwise else 1)]
    return make(nodes, inits, [("input", [1, 3, 10, 10])], [("output", [1, w2.shape[0], 10, 10])])


@pytest.mark.parametrize("depthwise", [False, True])
def test_cle_is_exact_and_equalizes_ranges(depthwise):
    model = pair_model(depthwise=depthwise)
    graph = Graph(model)
    result = PassResult()
    assert equalize(graph, result) == 1
    out = graph.to_model()
    assert_exact(model, out, rtol=1e-5)
    w1 = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "w1"))
    w2 = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "w2"))
    r1 = np.abs(w1).reshape(8, -1).max(1)
    r2 = np.abs(w2).reshape(8, -1).max(1) if depthwise else np.abs(w2).transpose(1, 0, 2, 3).reshape(8, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-4)
    before = np.abs(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))).reshape(8, -1).max(1)
    assert before.max() / before.min() > 100 and r1.max() / r1.min() < before.max() / before.min() / 10


def test_cle_declines_relu6_pairs_and_says_why():
    graph = Graph(pair_model(act="Clip"))
    pairs, declined = find_pairs(graph)
    assert pairs == [] and len(declined) == 1 and "not scale-invariant" in declined[0]


def test_cle_helps_per_tensor_weights():
    model = pair_model(depthwise=True)
    calib = random_set((1, 3, 10, 10), 48)

    def cosine(**opts):
        out = Pipeline([Quantize(speed=False, per_channel=False, holdback=8, **opts)], calibration=calib, verify=False).run(model)
        ref = run_feeds(make_session(model.SerializeToString()), calib.take(8))
        return compare(ref, run_feeds(make_session(out.model.SerializeToString(), optimization="all"), calib.take(8))).cosine

    plain, equalized = cosine(), cosine(cle=True)
    assert equalized > plain and 1 - equalized < (1 - plain) / 3, (plain, equalized)


# ---------------------------------------------------------------------------------------------
# bias correction


def test_bias_correction_removes_the_mean_shift_of_rounded_weights():
    # a depthwise conv whose weights all round the same way under a per-tensor scale: a systematic
    # shift of each channel's mean output that bias correction must take off
    rng = np.random.default_rng(0)
    w = np.full((8, 1, 3, 3), 0.013, F32) + 0.001 * rng.standard_normal((8, 1, 3, 3)).astype(F32)
    w[0, 0, 0, 0] = 1.0  # sets the per-tensor scale to 1/127: 0.013 -> 2/127 = 0.0157, +20%
    inits = {"w": w, "b": np.zeros(8, F32)}
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["output"], pads=[1] * 4, group=8)]
    model = make(nodes, inits, [("input", [1, 8, 12, 12])], [("output", [1, 8, 12, 12])])
    rng = np.random.default_rng(1)
    calib = FeedSet({"input": (2.0 + rng.standard_normal((64, 8, 12, 12))).astype(F32)}, 1)

    def mean_error(**opts):
        run = Pipeline([Quantize(speed=False, per_channel=False, holdback=8, **opts)], calibration=calib, verify=False).run(model)
        feeds = calib.take(16)
        ref = run_feeds(make_session(model.SerializeToString()), feeds)
        got = run_feeds(make_session(run.model.SerializeToString(), optimization="all"), feeds)
        diff = np.stack([g["output"] - r["output"] for g, r in zip(got, ref)])
        return float(np.abs(diff.mean(axis=(0, 1, 3, 4))).mean()), run.report.passes[-1]

    plain, _ = mean_error()
    corrected, report = mean_error(bias_correction=True)
    shifts = report.details["bias_correction"]["mean_abs_channel_shift"]
    assert shifts[-1] < shifts[0] / 5
    assert corrected < plain / 5, (plain, corrected)


# ---------------------------------------------------------------------------------------------
# accuracy control


def test_max_drop_returns_the_most_sensitive_ops_to_float():
    model = models.build("resnet18-tiny", seed=0)
    calib = random_set((1, 3, 32, 32), 64, seed=1)
    held = calib.take(8)
    ref = run_feeds(make_session(model.SerializeToString()), held)

    def cosine(m):
        return compare(ref, run_feeds(make_session(m.SerializeToString(), optimization="all"), held)).cosine

    plain = Pipeline([FoldBatchNorm(), Quantize(speed=False, holdback=8)], calibration=calib, verify=False).run(model).model
    budget = (1 - cosine(plain)) / 2  # ask for half the loss
    run = Pipeline([FoldBatchNorm(), Quantize(speed=False, evaluate=cosine, max_drop=budget, holdback=8)], calibration=calib,
                   verify=False).run(model)
    report = run.report.passes[-1]
    control = report.details["accuracy_control"]
    assert control["returned"], "nothing was returned to float"
    assert control["float"] - control["quantized"] <= budget
    assert cosine(run.model) > cosine(plain)
    assert all(any(r in s.where for s in report.skipped) for r in control["returned"])
    floats = sum(n.op_type in ("Conv", "Add") for n in run.model.graph.node)
    assert floats == 28  # every Conv and Add is still in the graph, some now in float
    returned_convs = [r for r in control["returned"] if r.startswith("Conv")]
    quantized_ops = report.details["quantized_ops"]
    assert quantized_ops.get("Conv", 0) == 20 - len(returned_convs)


def test_max_drop_within_budget_changes_nothing():
    model = models.build("resnet18-tiny", seed=0)
    calib = random_set((1, 3, 32, 32), 48, seed=1)
    run = Pipeline([FoldBatchNorm(), Quantize(speed=False, max_drop=0.5, holdback=8)], calibration=calib, verify=False).run(model)
    control = run.report.passes[-1].details["accuracy_control"]
    assert control["returned"] == [] and "agreement" in control["metric"]


def test_max_drop_with_labelled_eval_data_on_digits():
    path = models.fixture_path("digits_resnet")
    model = onnx.load(path)
    calib = load_feeds(models.FIXTURES / "digits_calib.npz", model)
    test = load_feeds(models.FIXTURES / "digits_test.npz", model)
    run = Pipeline([FoldBatchNorm(), Quantize(speed=False, max_drop=0.005)], calibration=calib, evaluation=test,
                   verify=False).run(model)
    control = run.report.passes[-1].details["accuracy_control"]
    assert "accuracy" in control["metric"]
    assert control["float"] == pytest.approx(float(model_accuracy(model, test)), abs=1e-9)
    assert control["float"] - control["quantized"] <= 0.005


def model_accuracy(model, data) -> float:
    session = make_session(model.SerializeToString())
    feeds = list(data)
    out = run_feeds(session, feeds)
    preds = np.concatenate([next(iter(o.values())).argmax(1) for o in out])
    return float((preds == data.labels[: len(preds)]).mean())


def scalar_scales(model: onnx.ModelProto) -> dict[str, float]:
    return {t.name: float(numpy_helper.to_array(t)) for t in model.graph.initializer
            if t.name.endswith("_scale") and not t.dims}


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
