"""Review of structured pruning (channel analysis, shrink, the prune pass, recovery, selection).

Oracle (as in tests/test_shrink.py): for ANY keep-set, the pruned graph must compute what the
original computes with the removed channels' *reader* input columns zeroed ("masked original"),
must pass the ONNX checker and must run in onnxruntime (optimizations disabled).

Some tests here are regression tests of bugs the review found (a Split along H rewritten with
channel counts, an opset-18 Resize's axes, an opset-11 Split, a lower-rank operand broadcast along
W, a Shape feeding another tensor's Reshape, target-latency ignoring ratio overrides); the others
pin behaviour that was checked and is correct."""
from __future__ import annotations

import math
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis.channels import ChannelAnalysis
from onnxopt.graph import Graph
from onnxopt.passes.prune import Prune, latency, select
from onnxopt.passes.prune.recover import RIDGE, recover
from onnxopt.pipeline import PassContext, PassResult
from onnxopt.runtime import random_feeds, resolve_input_shapes, run_model
from onnxopt.shrink import shrink
from onnxopt.testing import apply, make_model, masked_original as masked

F32 = np.float32
N = helper.make_node


# ---------------------------------------------------------------------------------------------
# helpers


make = make_model


def w(rng, *shape):
    return (0.5 * rng.standard_normal(shape)).astype(F32)


def analyze(model):
    graph = Graph(model, input_shapes=resolve_input_shapes(model))
    return graph, ChannelAnalysis(graph)


def group_of(analysis, producer_name):
    (g,) = [g for g in analysis.groups if any(s.producer is not None and s.producer.name == producer_name
                                              for s in g.spaces)]
    return g




def keep_every_other(analysis):
    """Per prunable group: keep a fixed, uneven pattern (blocks respected)."""
    keep = {}
    for g in analysis.prunable:
        per = g.size // g.blocks
        idx = np.array([i for i in range(per) if i % 3 != 1]) if per > 2 else np.array([0])
        keep[g.id] = np.concatenate([b * per + idx for b in range(g.blocks)])
    return keep


def assert_pruned_equals_masked(model, keep=None, *, expect_prunable=True):
    graph, analysis = analyze(model)
    if expect_prunable:
        assert analysis.prunable, [(g.label, g.frozen) for g in analysis.groups]
    keep = keep(analysis) if callable(keep) else (keep if keep is not None else keep_every_other(analysis))
    reference = masked(graph, analysis, keep)
    shrink(graph, analysis, keep)
    pruned = graph.to_model()
    onnx.checker.check_model(pruned, full_check=True)
    feeds = random_feeds(model, resolve_input_shapes(model), seed=1, count=2)
    want, got = run_model(reference, feeds), run_model(pruned, feeds)
    for wv, gv in zip(want, got):
        for k in wv:
            assert wv[k].shape == gv[k].shape, k
            np.testing.assert_allclose(gv[k], wv[k], rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(wv[k]).max())))
    return pruned


def conv1(rng, cout=8, cin=3):
    return {"c1.w": w(rng, cout, cin, 3, 3), "c1.b": w(rng, cout)}, N("Conv", ["x", "c1.w", "c1.b"], ["c1"],
                                                                        pads=[1] * 4, name="c1")


# ---------------------------------------------------------------------------------------------
# confirmed bugs


def test_split_on_a_spatial_axis_with_explicit_sizes(rng):
    inits, c = conv1(rng)
    nodes = [c, N("Split", ["c1", "sp"], ["h0", "h1"], axis=2), N("Concat", ["h1", "h0"], ["cat"], axis=2),
             N("Conv", ["cat", "c2.w"], ["y"], pads=[1] * 4, name="c2")]
    model = make(nodes, {**inits, "sp": np.array([3, 5], np.int64), "c2.w": w(rng, 6, 8, 3, 3)},
                 [("x", [1, 3, 8, 8])], [("y", [1, 6, 8, 8])])
    pruned = assert_pruned_equals_masked(model)
    sizes = {t.name: numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer}
    assert [3, 5] in sizes.values()


def test_resize_opset18_sizes_with_axes(rng):
    inits, c = conv1(rng)
    nodes = [c, N("Resize", ["c1", "", "", "sz"], ["r"], axes=[2, 3], mode="nearest"),
             N("Conv", ["r", "c2.w"], ["y"], pads=[1] * 4, name="c2")]
    model = make(nodes, {**inits, "sz": np.array([16, 16], np.int64), "c2.w": w(rng, 6, 8, 3, 3)},
                 [("x", [1, 3, 8, 8])], [("y", [1, 6, 16, 16])], opset=18)
    assert_pruned_equals_masked(model)


def test_split_opset11_equal_parts_cut_unevenly(rng):
    inits, c = conv1(rng)
    nodes = [c, N("Split", ["c1"], ["s0", "s1"], axis=1), N("Conv", ["s0", "p.w"], ["yp"], pads=[1] * 4, name="p"),
             N("Conv", ["s1", "q.w"], ["yq"], pads=[1] * 4, name="q")]
    model = make(nodes, {**inits, "p.w": w(rng, 4, 4, 3, 3), "q.w": w(rng, 4, 4, 3, 3)}, [("x", [1, 3, 8, 8])],
                 [("yp", [1, 4, 8, 8]), ("yq", [1, 4, 8, 8])], opset=11)
    assert_pruned_equals_masked(model, lambda a: {group_of(a, "c1").id: np.array([0, 1, 2, 4, 5, 6, 7])})


def broadcast_gemm_model(rng):
    """A Gemm's [1, 8] output broadcast into Add with a [1, 8, 8, 8] conv output: numpy
    broadcasting lines the Gemm's features up with W, not with channels."""
    nodes = [N("Conv", ["x", "c1.w"], ["c1"], pads=[1] * 4, name="c1"),
             N("Gemm", ["v", "f1.w", "f1.b"], ["g"], transB=1, name="f1"),
             N("Add", ["c1", "g"], ["s"]), N("Conv", ["s", "c2.w"], ["y"], name="c2"),
             N("Gemm", ["g", "f2.w"], ["z"], transB=1, name="f2")]
    inits = {"c1.w": w(rng, 8, 3, 3, 3), "f1.w": w(rng, 8, 10), "f1.b": w(rng, 8), "c2.w": w(rng, 4, 8, 1, 1),
             "f2.w": w(rng, 3, 8)}
    return make(nodes, inits, [("x", [1, 3, 8, 8]), ("v", [1, 10])], [("y", [1, 4, 8, 8]), ("z", [1, 3])])


def test_lower_rank_operand_broadcast_along_another_axis_is_frozen(rng):
    model = broadcast_gemm_model(rng)
    _, a = analyze(model)
    assert group_of(a, "f1").frozen is not None


def test_lower_rank_operand_broadcast_pass_output_runs(rng):
    model = broadcast_gemm_model(rng)
    out, _ = apply(Prune(round_to=1, ratio=0.5), model)
    onnx.checker.check_model(out, full_check=True)
    run_model(out, random_feeds(model, resolve_input_shapes(model)))


def test_shape_of_a_pruned_tensor_used_as_another_reshape_target(rng):
    nodes = [N("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1] * 4, name="c1"), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "c3.w"], ["y1"], name="c3"),
             N("Conv", ["x", "c2.w", "c2.b"], ["c2"], pads=[1] * 4, name="c2"),
             N("Shape", ["r1"], ["shp"]), N("Reshape", ["c2", "shp"], ["rs"]),
             N("Conv", ["rs", "c4.w"], ["y2"], name="c4")]
    inits = {"c1.w": w(rng, 8, 3, 3, 3), "c1.b": w(rng, 8), "c2.w": w(rng, 8, 3, 3, 3), "c2.b": w(rng, 8),
             "c3.w": w(rng, 4, 8, 1, 1), "c4.w": w(rng, 4, 8, 1, 1)}
    model = make(nodes, inits, [("x", [1, 3, 8, 8])], [("y1", [1, 4, 8, 8]), ("y2", [1, 4, 8, 8])])
    out, _ = apply(Prune(round_to=1, ratio=0.5), model)
    run_model(out, random_feeds(model, resolve_input_shapes(model)))


def small_net(rng):
    """stem (10) -> layer1 (16) -> GAP -> fc1 (32) -> fc2 (10, output)."""
    nodes = [N("Conv", ["x", "stem.w", "stem.b"], ["s"], name="stem", pads=[1] * 4), N("Relu", ["s"], ["sr"]),
             N("Conv", ["sr", "layer1.w", "layer1.b"], ["l1"], name="layer1", pads=[1] * 4),
             N("Relu", ["l1"], ["l1r"]), N("GlobalAveragePool", ["l1r"], ["gap"]), N("Flatten", ["gap"], ["f"]),
             N("Gemm", ["f", "fc1.w", "fc1.b"], ["h"], name="fc1", transB=1), N("Relu", ["h"], ["hr"]),
             N("Gemm", ["hr", "fc2.w", "fc2.b"], ["y"], name="fc2", transB=1)]
    inits = {"stem.w": w(rng, 10, 3, 3, 3), "stem.b": w(rng, 10), "layer1.w": w(rng, 16, 10, 3, 3),
             "layer1.b": w(rng, 16), "fc1.w": w(rng, 32, 16), "fc1.b": w(rng, 32), "fc2.w": w(rng, 10, 32),
             "fc2.b": w(rng, 10)}
    return make(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 10])])


def out_widths(model):
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return {k: dims[f"{k}.w"][0] for k in ("stem", "layer1", "fc1")}


@pytest.fixture
def fake_timings(monkeypatch, tmp_path):
    """latency_plan without measuring: every layer takes 1 ms * width fraction, the whole model 4 ms,
    and the pruned model measures exactly the target."""
    monkeypatch.setenv("ONNXOPT_CACHE_DIR", str(tmp_path))

    def measure(graph, layers, table, ctx):
        for ly in layers:
            for f in latency.FRACTIONS:
                ly.seconds[(f, 1.0)] = ly.seconds[(1.0, f)] = 1e-3 * f

    monkeypatch.setattr(latency, "measure_layers", measure)
    monkeypatch.setattr(latency, "session_runner", lambda *a, **k: None)
    monkeypatch.setattr(latency, "interleave", lambda runners, **k: [types.SimpleNamespace(median=4e-3)
                                                                     for _ in runners])
    monkeypatch.setattr(latency, "_measure_ratio", lambda *a, **k: 0.5)


def test_target_latency_honours_exclude(rng, fake_timings):
    out, result = apply(Prune(round_to=1, target_latency=0.5, exclude=("stem",)), small_net(rng))
    assert result.changed and out_widths(out)["stem"] == 10


def test_target_latency_honours_ratios_overrides(rng, fake_timings):
    out, result = apply(Prune(round_to=1, target_latency=0.5, ratios=("stem=0",)), small_net(rng))
    assert result.changed
    assert out_widths(out)["stem"] == 10


# ---------------------------------------------------------------------------------------------
# checked and correct: ops between a producer and a reader (masked-original exactness)


def between(rng, mid, mid_inits, mid_out, shape, opset=17, reader="conv"):
    """conv1 (3 -> 8) -> `mid` -> a dense reader (Conv 1x1 on rank >= 3, Gemm on rank 2)."""
    inits, c = conv1(rng)
    inits.update(mid_inits)
    nodes = [c, *mid]
    if reader == "conv":
        inits["c2.w"] = w(rng, 5, shape[1], *[1] * (len(shape) - 2))
        nodes.append(N("Conv", [mid_out, "c2.w"], ["y"], name="c2"))
        out = [shape[0], 5, *shape[2:]]
    else:
        inits["c2.w"] = w(rng, 5, shape[1])
        nodes.append(N("Gemm", [mid_out, "c2.w"], ["y"], transB=1, name="c2"))
        out = [shape[0], 5]
    return make(nodes, inits, [("x", [1, 3, 8, 8])], [("y", out)], opset=opset)


def _bn(rng):
    return {"s": w(rng, 8), "b": w(rng, 8), "mu": w(rng, 8), "v": np.abs(w(rng, 8)) + 0.1}


CASES = {
    "reducemean-keepdims0-last-axis": lambda r: ([N("ReduceMean", ["c1"], ["m"], axes=[-1], keepdims=0)], {}, "m",
                                                 [1, 8, 8], 17, "conv"),
    "reducesum13-axes-input": lambda r: ([N("ReduceSum", ["c1", "ax"], ["m"], keepdims=0)],
                                         {"ax": np.array([2, 3])}, "m", [1, 8], 13, "gemm"),
    "reducemax18-noop-empty-axes": lambda r: ([N("ReduceMax", ["c1", "ax"], ["m"], noop_with_empty_axes=1)],
                                              {"ax": np.zeros(0, np.int64)}, "m", [1, 8, 8, 8], 18, "conv"),
    "unsqueeze-squeeze": lambda r: ([N("Unsqueeze", ["c1", "ax"], ["u"]), N("Squeeze", ["u", "ax"], ["m"])],
                                    {"ax": np.array([2])}, "m", [1, 8, 8, 8], 17, "conv"),
    "squeeze11-attr": lambda r: ([N("ReduceMax", ["c1"], ["q"], axes=[3]), N("Squeeze", ["q"], ["m"], axes=[3])],
                                 {}, "m", [1, 8, 8], 11, "conv"),
    "pad-reflect-asymmetric": lambda r: ([N("Pad", ["c1", "pd"], ["m"], mode="reflect")],
                                         {"pd": np.array([0, 0, 1, 2, 0, 0, 2, 1])}, "m", [1, 8, 11, 11], 17, "conv"),
    "pad18-edge-axes": lambda r: ([N("Pad", ["c1", "pd", "", "ax"], ["m"], mode="edge")],
                                  {"pd": np.array([1, 2, 2, 1]), "ax": np.array([-2, -1])}, "m", [1, 8, 11, 11], 18,
                                  "conv"),
    "pad2-attr-value": lambda r: ([N("Pad", ["c1"], ["m"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=1.0)], {}, "m",
                                  [1, 8, 10, 10], 10, "conv"),
    "clip-no-bounds": lambda r: ([N("Clip", ["c1"], ["m"])], {}, "m", [1, 8, 8, 8], 17, "conv"),
    "pow-per-channel-exponent": lambda r: ([N("Pow", ["c1", "e"], ["m"])],
                                           {"e": (np.arange(8, dtype=F32) % 3).reshape(8, 1, 1)}, "m", [1, 8, 8, 8],
                                           17, "conv"),
    "max-per-channel-const": lambda r: ([N("Max", ["k", "c1", "k2"], ["m"])],
                                        {"k": np.linspace(-1, 1, 8, dtype=F32).reshape(8, 1, 1),
                                         "k2": np.array([0.1], F32)}, "m", [1, 8, 8, 8], 17, "conv"),
    "div-const-by-x": lambda r: ([N("Div", ["k", "c1"], ["m"])], {"k": w(r, 1, 8, 1, 1)}, "m", [1, 8, 8, 8], 17,
                                 "conv"),
    "mul-const-along-W": lambda r: ([N("Mul", ["c1", "k"], ["m"])], {"k": w(r, 8)}, "m", [1, 8, 8, 8], 17, "conv"),
    "sum-const-rank3": lambda r: ([N("Sum", ["c1", "k"], ["m"])], {"k": w(r, 8, 8, 8)}, "m", [1, 8, 8, 8], 17,
                                  "conv"),
    "mean-with-broadcast-gap": lambda r: ([N("ReduceMean", ["c1"], ["g"], axes=[2, 3]), N("Mean", ["c1", "g"], ["m"])],
                                          {}, "m", [1, 8, 8, 8], 17, "conv"),
    "prelu-[8,1,1]": lambda r: ([N("PRelu", ["c1", "k"], ["m"])], {"k": w(r, 8, 1, 1)}, "m", [1, 8, 8, 8], 17,
                                "conv"),
    "instance-norm": lambda r: ([N("InstanceNormalization", ["c1", "s", "b"], ["m"])], {"s": w(r, 8), "b": w(r, 8)},
                                "m", [1, 8, 8, 8], 17, "conv"),
    "resize-full-sizes": lambda r: ([N("Resize", ["c1", "", "", "sz"], ["m"], mode="nearest")],
                                    {"sz": np.array([1, 8, 16, 16])}, "m", [1, 8, 16, 16], 17, "conv"),
    "resize10-scales": lambda r: ([N("Resize", ["c1", "sc"], ["m"])], {"sc": np.array([1, 1, 2, 2], F32)}, "m",
                                  [1, 8, 16, 16], 10, "conv"),
    "lppool": lambda r: ([N("LpPool", ["c1"], ["m"], kernel_shape=[2, 2], strides=[2, 2])], {}, "m", [1, 8, 4, 4], 17,
                         "conv"),
    "flatten-bn1d-prelu": lambda r: ([N("GlobalAveragePool", ["c1"], ["g"]), N("Flatten", ["g"], ["f"]),
                                      N("BatchNormalization", ["f", "s", "b", "mu", "v"], ["n"]),
                                      N("PRelu", ["n", "k"], ["m"])], {**_bn(r), "k": w(r, 8)}, "m", [1, 8], 17,
                                     "gemm"),
    "reshape-flatten-neg1-batch": lambda r: ([N("Reshape", ["c1", "s"], ["m"])], {"s": np.array([-1, 512])}, "m",
                                             [1, 512], 17, "gemm"),
    "reshape-spatial-roundtrip": lambda r: ([N("Reshape", ["c1", "s"], ["q"]), N("Reshape", ["q", "s2"], ["m"])],
                                            {"s": np.array([1, 8, -1]), "s2": np.array([0, 0, 8, 8])}, "m",
                                            [1, 8, 8, 8], 17, "conv"),
    "split18-num-outputs-uneven": lambda r: ([N("Split", ["c1"], ["a", "b", "c"], axis=1, num_outputs=3),
                                              N("Concat", ["c", "a", "b"], ["m"], axis=1)], {}, "m", [1, 8, 8, 8], 18,
                                             "conv"),
    "concat-same-tensor-twice": lambda r: ([N("Concat", ["c1", "c1"], ["m"], axis=1)], {}, "m", [1, 16, 8, 8], 17,
                                           "conv"),
    "add-same-operand": lambda r: ([N("Add", ["c1", "c1"], ["m"])], {}, "m", [1, 8, 8, 8], 17, "conv"),
    "slices-of-one-layer-multiplied": lambda r: ([N("Slice", ["c1", "z", "h", "one"], ["a"]),
                                                  N("Slice", ["c1", "h", "e", "one"], ["b"]),
                                                  N("Mul", ["a", "b"], ["m"])],
                                                 {"z": np.array([0]), "h": np.array([4]), "e": np.array([8]),
                                                  "one": np.array([1])}, "m", [1, 4, 8, 8], 17, "conv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_between_producer_and_reader_is_exact(rng, case):
    mid, mid_inits, out, shape, opset, reader = CASES[case](rng)
    assert_pruned_equals_masked(between(rng, mid, mid_inits, out, shape, opset, reader))


@pytest.mark.parametrize("op,attrs,mid_inits", [
    ("Softmax", {"axis": 1}, {}), ("Transpose", {"perm": [0, 1, 3, 2]}, {}), ("LRN", {"size": 3}, {}),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, {}),  # with its Indices output used below
])
def test_channel_mixing_or_index_ops_freeze(rng, op, attrs, mid_inits):
    outs = ["m", "idx"] if op == "MaxPool" else ["m"]
    mid = [N(op, ["c1"], outs, **attrs)]
    shape = [1, 8, 4, 4] if op == "MaxPool" else [1, 8, 8, 8]
    if op == "MaxPool":
        mid += [N("Cast", ["idx"], ["ic"], to=TensorProto.FLOAT), N("Add", ["m", "ic"], ["m2"])]
    model = between(rng, mid, mid_inits, "m2" if op == "MaxPool" else "m", shape)
    _, a = analyze(model)
    assert group_of(a, "c1").frozen is not None


@pytest.mark.parametrize("reader", ["matmul-rank3", "grouped-convtranspose"])
def test_readers_prune_does_not_follow_freeze(rng, reader):
    inits, c = conv1(rng)
    if reader == "matmul-rank3":  # [1, 8, 64] @ [64, 5]: the product runs over H*W, channels are a batch axis
        nodes = [c, N("Reshape", ["c1", "s"], ["r"]), N("MatMul", ["r", "m.w"], ["y"])]
        inits.update({"s": np.array([1, 8, 64]), "m.w": w(rng, 64, 5)})
        out = [1, 8, 5]
    else:
        nodes = [c, N("ConvTranspose", ["c1", "t.w"], ["y"], group=2, name="t")]
        inits["t.w"] = w(rng, 8, 3, 3, 3)
        out = [1, 6, 10, 10]
    _, a = analyze(make(nodes, inits, [("x", [1, 3, 8, 8])], [("y", out)]))
    assert group_of(a, "c1").frozen is not None


@pytest.mark.parametrize("cshape", [(1, 6), (), (1,), (6,), (2, 6)])
def test_gemm_bias_shapes(rng, cshape):
    batch = 2 if cshape == (2, 6) else 1
    inits, c = conv1(rng)
    nodes = [c, N("GlobalAveragePool", ["c1"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("Gemm", ["f", "f1.w", "f1.c"], ["h"], transB=1, alpha=0.7, beta=0.3, name="f1"),
             N("Relu", ["h"], ["hr"]), N("Gemm", ["hr", "f2.w", "f2.c"], ["y"], name="f2")]
    model = make(nodes, {**inits, "f1.w": w(rng, 6, 8), "f1.c": w(rng, *cshape), "f2.w": w(rng, 6, 4),
                         "f2.c": w(rng, 4)}, [("x", [batch, 3, 8, 8])], [("y", [batch, 4])])
    assert_pruned_equals_masked(model)


def test_layer_shapes_and_sharing(rng):
    """1-D convs (grouped) + Flatten -> Gemm; ConvTranspose with bias as producer and reader; a weight
    shared by two convs; a BN read by two convs; a group read by a Conv and a Gemm after Flatten."""
    m1 = make([N("Conv", ["x", "a.w", "a.b"], ["a"], pads=[1, 1], name="a"), N("Relu", ["a"], ["ar"]),
               N("Conv", ["ar", "b.w", "b.b"], ["b"], pads=[1, 1], group=2, name="b"), N("Flatten", ["b"], ["f"]),
               N("Gemm", ["f", "g.w"], ["y"], transB=1)],
              {"a.w": w(rng, 8, 3, 3), "a.b": w(rng, 8), "b.w": w(rng, 8, 4, 3), "b.b": w(rng, 8),
               "g.w": w(rng, 4, 64)}, [("x", [1, 3, 8])], [("y", [1, 4])])
    m2 = make([N("ConvTranspose", ["x", "t1.w", "t1.b"], ["t1"], strides=[2, 2], name="t1"), N("Relu", ["t1"], ["r"]),
               N("ConvTranspose", ["r", "t2.w", "t2.b"], ["y"], pads=[1, 1, 1, 1], name="t2")],
              {"t1.w": w(rng, 3, 8, 2, 2), "t1.b": w(rng, 8), "t2.w": w(rng, 8, 5, 3, 3), "t2.b": w(rng, 5)},
              [("x", [1, 3, 8, 8])], [("y", [1, 5, 16, 16])])
    m3 = make([N("Conv", ["x", "c0.w"], ["c0"], pads=[1] * 4, name="c0"),
               N("Conv", ["c0", "sh.w"], ["c1"], pads=[1] * 4, name="c1"), N("Relu", ["c1"], ["r"]),
               N("Conv", ["r", "sh.w"], ["c2"], pads=[1] * 4, name="c2"),
               N("BatchNormalization", ["c2", "s", "b", "mu", "v"], ["bn"]),
               N("Conv", ["bn", "d.w"], ["y1"], name="d"), N("Flatten", ["bn"], ["f"]),
               N("Gemm", ["f", "e.w", "e.b"], ["y2"], transB=1, name="e")],
              {"c0.w": w(rng, 8, 3, 3, 3), "sh.w": w(rng, 8, 8, 3, 3), **_bn(rng), "d.w": w(rng, 4, 8, 1, 1),
               "e.w": w(rng, 5, 8 * 16), "e.b": w(rng, 5)},
              [("x", [1, 3, 4, 4])], [("y1", [1, 4, 4, 4]), ("y2", [1, 5])])
    for model in (m1, m2, m3):
        assert_pruned_equals_masked(model)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(rng, auto_pad):
    nodes = [N("Conv", ["x", "c1.w", "c1.b"], ["c1"], auto_pad=auto_pad, strides=[2, 2], name="c1"),
             N("Relu", ["c1"], ["r"]), N("Conv", ["r", "c2.w"], ["y"], auto_pad=auto_pad, name="c2")]
    out = [1, 4, 3, 3] if auto_pad == "VALID" else [1, 4, 5, 5]
    model = make(nodes, {"c1.w": w(rng, 8, 3, 3, 3), "c1.b": w(rng, 8), "c2.w": w(rng, 4, 8, 2, 2)},
                 [("x", [1, 3, 9, 9])], [("y", out)])
    assert_pruned_equals_masked(model)


# ---------------------------------------------------------------------------------------------
# checked and correct: recovery


def refit(model, plan_of, feeds=10):
    shapes = resolve_input_shapes(model)
    graph = Graph(model, input_shapes=shapes)
    a = ChannelAnalysis(graph)
    plan = plan_of(a)
    original = graph.to_model()
    shrink(graph, a, plan)
    before = graph.to_model()
    cal = random_feeds(model, shapes, seed=5, count=feeds)
    result = PassResult()
    count = recover(graph, original, a, plan, cal, PassContext(input_shapes=shapes), result)
    return before, graph, count, result


def duplicate_channel_net(rng, reader_nodes, reader_inits, x_shape=(1, 3, 9, 9), constant_channel=False):
    """conv1's filter 7 equals filter 3 (or, with constant_channel, is a constant 0.5 after Relu):
    after removing channel 7, least squares can reproduce the reader's original output exactly."""
    c1w, c1b = w(rng, 8, 3, 3, 3), w(rng, 8)
    if constant_channel:
        c1w[7], c1b[7] = 0, 0.5
    else:
        c1w[7], c1b[7] = c1w[3], c1b[3]
    nodes = [N("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1] * 4, name="c1"), N("Relu", ["c1"], ["r"]),
             *reader_nodes]
    probe = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 17)])
    inits = {"c1.w": c1w, "c1.b": c1b, **reader_inits}
    probe.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items())
    y = onnx.shape_inference.infer_shapes(probe).graph.output[0]
    out = [d.dim_value for d in y.type.tensor_type.shape.dim]
    return make(nodes, inits, [("x", list(x_shape))], [("y", out)])


READERS = {
    "conv-3x3": lambda r: ([N("Conv", ["r", "c2.w", "c2.b"], ["y"], pads=[1] * 4, name="c2")],
                           {"c2.w": w(r, 4, 8, 3, 3), "c2.b": w(r, 4)}),
    "conv-strides-dilations-asymmetric-pads": lambda r: (
        [N("Conv", ["r", "c2.w", "c2.b"], ["y"], pads=[2, 1, 0, 2], strides=[2, 3], dilations=[2, 3], name="c2")],
        {"c2.w": w(r, 4, 8, 3, 2), "c2.b": w(r, 4)}),
    "conv-same-upper": lambda r: ([N("Conv", ["r", "c2.w", "c2.b"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2],
                                     name="c2")], {"c2.w": w(r, 4, 8, 2, 2), "c2.b": w(r, 4)}),
    "conv-same-lower": lambda r: ([N("Conv", ["r", "c2.w", "c2.b"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2],
                                     name="c2")], {"c2.w": w(r, 4, 8, 2, 2), "c2.b": w(r, 4)}),
    "conv-no-bias": lambda r: ([N("Conv", ["r", "c2.w"], ["y"], pads=[1] * 4, name="c2")], {"c2.w": w(r, 4, 8, 3, 3)}),
    "gemm-transB-scalar-C": lambda r: ([N("GlobalAveragePool", ["r"], ["g"]), N("Flatten", ["g"], ["f"]),
                                        N("Gemm", ["f", "fc.w", "fc.c"], ["y"], transB=1, name="fc")],
                                       {"fc.w": w(r, 5, 8), "fc.c": np.array(0.3, F32)}),
    "gemm-[1,M]-C": lambda r: ([N("GlobalAveragePool", ["r"], ["g"]), N("Flatten", ["g"], ["f"]),
                                N("Gemm", ["f", "fc.w", "fc.c"], ["y"], name="fc")],
                               {"fc.w": w(r, 8, 5), "fc.c": w(r, 1, 5)}),
    "matmul": lambda r: ([N("GlobalAveragePool", ["r"], ["g"]), N("Flatten", ["g"], ["f"]),
                          N("MatMul", ["f", "fc.w"], ["y"], name="fc")], {"fc.w": w(r, 8, 5)}),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_recovery_reproduces_a_duplicated_channel(rng, reader):
    model = duplicate_channel_net(rng, *READERS[reader](rng))
    _, graph, count, _ = refit(model, lambda a: {group_of(a, "c1").id: np.arange(7)})
    assert count == 1
    feeds = random_feeds(model, resolve_input_shapes(model), seed=99, count=2)
    for want, got in zip(run_model(model, feeds), run_model(graph.to_model(), feeds)):
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-3, atol=1e-4 * float(np.abs(want["y"]).max()))


@pytest.mark.parametrize("reader", ["conv1x1", "gemm"])
def test_recovery_creates_a_bias_that_absorbs_a_constant_channel(rng, reader):
    if reader == "conv1x1":
        nodes, inits = [N("Conv", ["r", "c2.w"], ["y"], name="c2")], {"c2.w": w(rng, 4, 8, 1, 1)}
    else:
        nodes = [N("GlobalAveragePool", ["r"], ["g"]), N("Flatten", ["g"], ["f"]),
                 N("Gemm", ["f", "c2.w"], ["y"], transB=1, name="c2")]
        inits = {"c2.w": w(rng, 5, 8)}
    model = duplicate_channel_net(rng, nodes, inits, constant_channel=True)
    _, graph, count, _ = refit(model, lambda a: {group_of(a, "c1").id: np.arange(7)})
    assert count == 1
    (node,) = [n for n in graph.nodes() if n.name == "c2"]
    assert len(node.inputs) == 3
    feeds = random_feeds(model, resolve_input_shapes(model), seed=99, count=2)
    for want, got in zip(run_model(model, feeds), run_model(graph.to_model(), feeds)):
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-3, atol=1e-4 * float(np.abs(want["y"]).max()))


def test_recovery_equals_a_direct_ridge_solution(rng):
    """A refit Conv (strides 2x1, dilations 1x2, pads [0,1,2,0]) whose own outputs are pruned too:
    its stored weights equal the ridge solution computed here from an independent im2col, with the
    same fit/held-back split (last 2 of 10 samples) and the same choice among W0 and RIDGE."""
    kh, kw, st, dl, pb, pe = 3, 3, (2, 1), (1, 2), (0, 1), (2, 0)
    nodes = [N("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1] * 4, name="c1"), N("Relu", ["c1"], ["r"]),
             N("Conv", ["r", "c2.w", "c2.b"], ["c2"], pads=[*pb, *pe], strides=list(st), dilations=list(dl),
               name="c2"), N("Relu", ["c2"], ["r2"]), N("Conv", ["r2", "c3.w"], ["y"], name="c3")]
    inits = {"c1.w": w(rng, 8, 3, 3, 3), "c1.b": w(rng, 8), "c2.w": w(rng, 6, 8, kh, kw), "c2.b": w(rng, 6),
             "c3.w": w(rng, 4, 6, 1, 1)}
    model = make(nodes, inits, [("x", [1, 3, 7, 7])], [("y", [1, 4, 4, 4])])
    keep_in, keep_out = np.array([0, 1, 2, 4, 6]), np.array([0, 2, 3, 5])
    before, graph, _, result = refit(model, lambda a: {group_of(a, "c1").id: keep_in,
                                                       group_of(a, "c2").id: keep_out})
    assert result.details["recovery"][0]["layer"].startswith("Conv 'c2'")
    feeds = random_feeds(model, resolve_input_shapes(model), seed=5, count=10)
    xs = [o["r"] for o in run_model(Graph(before).to_model(extra_outputs=["r"]), feeds)]
    ys = [o["c2"][:, keep_out] for o in run_model(Graph(model).to_model(extra_outputs=["c2"]), feeds)]

    def im2col(x):
        xp = np.pad(x[0].astype(np.float64), ((0, 0), (pb[0], pe[0]), (pb[1], pe[1])))
        oh = (xp.shape[1] - (kh - 1) * dl[0] - 1) // st[0] + 1
        ow = (xp.shape[2] - (kw - 1) * dl[1] - 1) // st[1] + 1
        rows = []
        for i in range(oh):
            for j in range(ow):
                patch = [xp[c, i * st[0] + a * dl[0], j * st[1] + b * dl[1]]
                         for c in range(xp.shape[0]) for a in range(kh) for b in range(kw)]
                rows.append(patch + [1.0])
        return np.array(rows)

    X = [im2col(x) for x in xs]
    Y = [y[0].reshape(y.shape[1], -1).T.astype(np.float64) for y in ys]
    fit, val = slice(0, 8), slice(8, 10)
    A = sum(x.T @ x for x in X[fit])
    B = sum(x.T @ y for x, y in zip(X[fit], Y[fit]))
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in before.graph.initializer}
    w0 = np.vstack([init["c2.w"].reshape(len(keep_out), -1).T, init["c2.b"][None]])

    def val_error(wm):
        return sum(float(((y - x @ wm) ** 2).sum()) for x, y in zip(X[val], Y[val]))

    scale = float(np.mean(np.diag(A)))
    candidates = [w0] + [np.linalg.solve(A + lam * scale * np.eye(len(A)), B + lam * scale * w0) for lam in RIDGE]
    best = min(candidates, key=val_error)
    assert best is not w0
    (node,) = [n for n in graph.nodes() if n.name == "c2"]
    got_w = graph.constant(node.input(1)).reshape(len(keep_out), -1).T
    got_b = graph.constant(node.input(2))
    np.testing.assert_allclose(got_w, best[:-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_b, best[-1], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# checked and correct: selection


def fake_group(size, blocks=1):
    return types.SimpleNamespace(size=size, blocks=blocks, id=0)


@pytest.mark.parametrize("size,keep,limits,blocks,want", [
    (10, 3, select.Limits(), 1, 3),
    (10, 3, select.Limits(round_to=4), 1, 4),
    (10, 9, select.Limits(round_to=4), 1, 10),        # no legal width below 10: stays whole
    (10, 1, select.Limits(max_ratio=0.5), 1, 5),
    (3, 1, select.Limits(max_ratio=1 / 3), 1, 2),     # float: 3 * (1 - 1/3) is 2.0000000000000004
    (10, 1, select.Limits(min_channels=12), 1, 10),
    (12, 5, select.Limits(round_to=4), 3, 12),        # lcm(4, 3) = 12
    (24, 5, select.Limits(round_to=4), 3, 12),
    (8, 1, select.Limits(), 4, 4),
])
def test_legal_keep(size, keep, limits, blocks, want):
    assert select.legal_keep(fake_group(size, blocks), keep, limits) == want


def test_global_plan_removes_the_budget_exactly_without_rounding():
    groups = [types.SimpleNamespace(size=s, blocks=1, id=i) for i, s in enumerate((8, 16, 24))]
    rng = np.random.default_rng(3)
    scores = {g.id: rng.uniform(0.1, 1, g.size) for g in groups}
    plan = select.global_plan(groups, scores, 0.25, {}, select.Limits())
    removed = sum(g.size - len(plan.get(g.id, np.arange(g.size))) for g in groups)
    assert removed == math.floor(48 * 0.25)
    assert all(len(k) >= 1 for k in plan.values())
