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

from onnxopt import models
from onnxopt.analysis.channels import ChannelAnalysis
from onnxopt.graph import Graph
from onnxopt.runtime import random_feeds, resolve_input_shapes, run_model
from onnxopt.shrink import shrink
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
    from onnxopt.pipeline import Pipeline

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
