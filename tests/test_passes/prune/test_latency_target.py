"""prune:target-latency with measured layer timings replaced by a fake: it honours exclude and
per-layer ratio overrides while planning widths."""
from __future__ import annotations

import types

import numpy as np
import pytest
from onnx import helper

from onnxopt.passes.prune import Prune, latency
from onnxopt.testing import apply, make_model

F32 = np.float32
N = helper.make_node
make = make_model


def w(rng, *shape):
    return (0.5 * rng.standard_normal(shape)).astype(F32)


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


def test_target_latency_honours_exclude(rng, fake_timings):
    out, result = apply(Prune(round_to=1, target_latency=0.5, exclude=("stem",)), small_net(rng))
    assert result.changed and out_widths(out)["stem"] == 10


def test_target_latency_honours_ratios_overrides(rng, fake_timings):
    out, result = apply(Prune(round_to=1, target_latency=0.5, ratios=("stem=0",)), small_net(rng))
    assert result.changed
    assert out_widths(out)["stem"] == 10


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
