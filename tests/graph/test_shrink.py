"""Channel surgery is exact: a pruned model computes what the original computes when the layers
reading the removed channels ignore them (their input columns zeroed).

Removed channels then reach nothing that is kept: couplings (Add, the Mul of an SE gate, Concat)
only carry them to other removed positions, and every dense reader drops them. So for ANY keep-set
the pruned graph must equal this masked original to float precision; a wrong offset in a Concat, a
Flatten column block, a Split size or a group's rows shows up as a large difference."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import models
from onnxopt.analysis.channels import ChannelAnalysis
from onnxopt.graph.core import Graph
from onnxopt.graph.shrink import shrink
from onnxopt.passes.prune import Prune
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
from onnxopt.testing import apply, make_model
from onnxopt.testing import masked_original as masked

ZOO = ["resnet18-tiny", "resnet50-tiny", "mobilenetv2-tiny", "vgg16_bn-tiny", "repvgg_a0-tiny",
       "mobileone_s0-tiny", "senet_concat-tiny"]


def random_keep(analysis: ChannelAnalysis, rng: np.random.Generator, fraction: float) -> dict[int, np.ndarray]:
    keep = {}
    for g in analysis.prunable:
        per_block = g.size // g.blocks
        n = max(1, int(round(per_block * fraction)))
        keep[g.id] = np.concatenate([b * per_block + np.sort(rng.choice(per_block, n, replace=False))
                                     for b in range(g.blocks)])
    return keep




@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_pruned_equals_masked_original(name, fraction):
    model = models.build(name)
    shapes = resolve_input_shapes(model)
    graph = Graph(model, input_shapes=shapes)
    analysis = ChannelAnalysis(graph)
    assert analysis.prunable, "the zoo model has prunable groups"
    keep = random_keep(analysis, np.random.default_rng(hash((name, fraction)) % 2**32), fraction)
    reference_model = masked(graph, analysis, keep)
    shrink(graph, analysis, keep)
    pruned = graph.to_model()
    onnx.checker.check_model(pruned, full_check=True)
    feeds = random_feeds(model, shapes, seed=1, count=2)
    want, got = run_model(reference_model, feeds), run_model(pruned, feeds)
    for w, g in zip(want, got):
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-4, atol=1e-4 * float(np.abs(w[k]).max()))
    before = sum(np.prod(t.dims) for t in model.graph.initializer)
    after = sum(np.prod(t.dims) for t in pruned.graph.initializer)
    assert after < before * (0.75 if fraction == 0.5 else 0.5)


def test_se_gate_over_a_concat_is_coupled_part_by_part():
    """senet_concat's mixed1 block puts an SE gate (one conv of 192 channels) over the Concat of
    three branches (64 + 96 + 32): the gate conv's filters are cut into three parts, each coupled
    with its branch, instead of freezing all four layers."""
    model = models.build("senet_concat")
    graph = Graph(model, input_shapes=resolve_input_shapes(model))
    analysis = ChannelAnalysis(graph)
    gate = [g for g in analysis.groups if any("mixed1/se_module/fc2" in p.name for p in g.producers)]
    assert len(gate) == 3
    assert sorted(g.size for g in gate) == [32, 64, 96]
    assert all(g.frozen is None and len(g.producers) == 2 for g in gate)
    offsets = sorted(s.offset for g in gate for s in g.spaces if "fc2" in s.producer.name)
    assert offsets == [0, 64, 160]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "vgg16_bn", "senet_concat"])
def test_full_size_zoo_prunes_exactly_against_the_masked_original(name):
    model = models.build(name)
    shapes = resolve_input_shapes(model)
    graph = Graph(model, input_shapes=shapes)
    analysis = ChannelAnalysis(graph)
    keep = random_keep(analysis, np.random.default_rng(7), 0.7)
    reference_model = masked(graph, analysis, keep)
    shrink(graph, analysis, keep)
    pruned = graph.to_model()
    feeds = random_feeds(model, shapes, seed=1, count=1)
    want, got = run_model(reference_model, feeds)[0], run_model(pruned, feeds)[0]
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4 * float(np.abs(want[k]).max()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "vgg16_bn", "senet_concat"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_full_size_zoo_through_the_pipeline(name, ratio):
    """fold-bn then prune:round-to=1, every Conv reads as many channels as its input has, the model shrinks by
    about what the ratio promises, and onnxruntime runs it."""
    from onnxopt.analysis.cost import model_stats
    from onnxopt.pipeline.run import Pipeline

    model = models.build(name)
    run = Pipeline.parse(f"fold-bn,prune:round-to=1,ratio={ratio}", verify=False).run(model)
    prune = run.report.passes[1]
    assert prune.status == "applied"
    shapes = resolve_input_shapes(model)
    g = Graph(run.model, input_shapes=shapes)
    for n in g.nodes("Conv"):
        w = g.constant(n.input(1))
        assert w.shape[1] * int(n.attr("group", 1)) == g.static_shape(n.input(0))[1], n.label
    before, after = model_stats(model, shapes).params, model_stats(run.model, shapes).params
    kept = 1 - ratio
    assert after < before * (kept + 0.1), (before, after)  # inputs and outputs shrink: ~kept**2
    (out,) = run_model(run.model, random_feeds(model, shapes, seed=0, count=1))
    assert all(np.isfinite(v).all() for v in out.values())


def _view_model(rest: int) -> onnx.ModelProto:
    """conv -> relu -> x.view(x.size(0), REST) as the torch exporter writes it -> Gemm; dynamic batch."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(rng.standard_normal((10, 8 * 4 * 4)).astype(np.float32), "fc"),
             nh.from_array(np.array(0, np.int64), "zero"), nh.from_array(np.array([0], np.int64), "ax0"),
             nh.from_array(np.array([rest], np.int64), "rest")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Shape", ["r1"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "rest"], ["shp"], axis=0),
             helper.make_node("Reshape", ["r1", "shp"], ["flat"]), helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "view", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_torch_view_batch_minus_one_is_followed_and_stays_right():
    """x.view(x.size(0), -1): the conv before it is prunable, the Gemm loses the matching columns,
    the computed shape needs no rewrite, and any batch size still runs."""
    model = _view_model(-1)
    shapes = resolve_input_shapes(model)
    graph = Graph(model, input_shapes=shapes)
    analysis = ChannelAnalysis(graph)
    (group,) = analysis.prunable
    assert group.size == 8 and [p.name or p.op for p in group.producers] == ["Conv"]
    keep = {group.id: np.array([0, 2, 3, 6])}
    reference_model = masked(graph, analysis, keep)
    shrink(graph, analysis, keep)
    pruned = graph.to_model()
    shapes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert shapes["w1"] == (4, 3, 3, 3) and shapes["fc"] == (10, 64)
    feeds = [{"x": np.random.default_rng(1).standard_normal((3, 3, 4, 4)).astype(np.float32)}]
    np.testing.assert_allclose(run_model(pruned, feeds)[0]["y"], run_model(reference_model, feeds)[0]["y"],
                               rtol=1e-5, atol=1e-5)


def test_a_computed_shape_with_an_explicit_width_freezes_the_channels():
    """x.view(x.size(0), 128): the 128 would be wrong after pruning, so the conv keeps its channels."""
    model = _view_model(128)
    analysis = ChannelAnalysis(Graph(model, input_shapes=resolve_input_shapes(model)))
    assert not analysis.prunable
    assert any(n.op == "Reshape" for n, _ in analysis.unknown)


# -- ops between a producer and its readers, one graph each (cases from the review of pruning;
# those that were bugs say so above the test) --------------------------------------------------

F32 = np.float32
N = helper.make_node
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
