"""Least-squares recovery after pruning (passes/prune/recover.py): a reader refitted on calibration
data reproduces a removed duplicate channel, absorbs a constant channel into a new bias, and equals
a direct ridge solution of the same system."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis.channels import ChannelAnalysis
from onnxopt.graph.core import Graph
from onnxopt.graph.shrink import shrink
from onnxopt.passes.prune.recover import RIDGE, recover
from onnxopt.pipeline.contract import PassContext, PassResult
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
from onnxopt.testing import make_model

F32 = np.float32
N = helper.make_node
make = make_model


def w(rng, *shape):
    return (0.5 * rng.standard_normal(shape)).astype(F32)


def group_of(analysis, producer_name):
    (g,) = [g for g in analysis.groups if any(s.producer is not None and s.producer.name == producer_name
                                              for s in g.spaces)]
    return g


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
