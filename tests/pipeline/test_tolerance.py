"""Exact passes judged against the model's own float noise: the floor is what onnxruntime's basic
optimizations alone move the outputs by; exact passes may move them by FLOOR_MULTIPLE times that
(never less than rtol). A sensitive model's correct fold is no longer rolled back, and wrong rewrites
are still caught on every zoo model with the tolerance this gives them."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxopt.passes.reparam as reparam
from onnxopt import models
from onnxopt.passes import fold_bn
from onnxopt.passes.reparam import kernels
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.tolerance import DEFAULT_RTOL, FLOOR_MULTIPLE
from onnxopt.testing import make_model, run_cli

F32 = np.float32


def sensitive(offset: float = 2e4) -> onnx.ModelProto:
    """Conv with a large bias, then a BN whose mean takes it away again (a detector head's shape of
    cancellation): the unfused reference rounds at the bias's magnitude, so any fusion, onnxruntime's
    own included, moves the sigmoid output by about 3e-4 of its range."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], {}, "x"
    for i in range(2):
        inits.update({f"w{i}": rng.standard_normal((8, 8, 3, 3)).astype(F32), f"cb{i}": np.full(8, offset, F32),
                      f"g{i}": rng.uniform(0.5, 1.5, 8).astype(F32), f"b{i}": rng.standard_normal(8).astype(F32),
                      f"m{i}": (offset + rng.standard_normal(8)).astype(F32), f"v{i}": rng.uniform(20, 80, 8).astype(F32)})
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"cb{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"y{i}"])]
        x = f"y{i}"
    nodes.append(helper.make_node("Sigmoid", [x], ["out"]))
    return make_model(nodes, inits, [("x", [1, 8, 16, 16])], [("out", [1, 8, 16, 16])])


def test_a_sensitive_models_correct_fold_is_kept():
    model = sensitive()
    fixed = Pipeline.parse("fold-bn", rtol=DEFAULT_RTOL).run(model).report
    assert fixed.passes[0].status == "rolled-back"  # what a fixed 1e-4 did
    run = Pipeline.parse("fold-bn").run(model)
    p, v = run.report.passes[0], run.report.verification
    assert p.status == "applied", p.message
    assert v["noise_floor"] > DEFAULT_RTOL and not v["rtol_given"] and p.noise_floor == v["noise_floor"]
    assert p.tolerance == pytest.approx(FLOOR_MULTIPLE * p.noise_floor)
    assert p.fidelity.max_rel <= p.tolerance
    assert p.fidelity.max_rel < 2 * v["noise_floor"]  # the fold is as exact as onnxruntime's own fusion


def test_the_json_report_states_floor_error_and_tolerance(capsys, tmp_path):
    path, report = tmp_path / "m.onnx", tmp_path / "r.json"
    onnx.save(sensitive(), path)
    code, out, err = run_cli(capsys, "run", path, "--passes", "fold-bn", "-o", tmp_path / "o.onnx", "--report", report)
    assert code == 0, err
    doc = json.loads(report.read_text())
    v, p = doc["verification"], doc["passes"][0]
    assert v["noise_floor"] > DEFAULT_RTOL and v["floor_multiple"] == FLOOR_MULTIPLE
    assert p["status"] == "applied" and p["tolerance"] == pytest.approx(FLOOR_MULTIPLE * p["noise_floor"])
    assert p["tolerance"] >= p["fidelity"]["max_rel"] and p["noise_floor"] == v["noise_floor"]
    assert "exact passes held to max rel error: fold-bn" in out and "noise floor" in out
    code, out, err = run_cli(capsys, "run", path, "--passes", "fold-bn", "--rtol", "1e-4", "-o", tmp_path / "o.onnx",
                             "--report", report)  # --rtol overrides the floor
    doc = json.loads(report.read_text())
    assert doc["verification"]["rtol_given"] and doc["passes"][0]["status"] == "rolled-back"


ZOO = ["resnet18-tiny", "resnet50-tiny", "mobilenetv2-tiny", "vgg16_bn-tiny", "repvgg_a0-tiny", "mobileone_s0-tiny",
       "senet_concat-tiny"]


def _flipped_sign(graph, bn):
    affine = ORIGINAL_AFFINE(graph, bn)
    if isinstance(affine, str):
        return affine
    return fold_bn._Affine(affine.scale, -affine.shift)


ORIGINAL_AFFINE = fold_bn._bn_affine


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("bug", ["sign flip", "dropped bias"])
def test_a_wrong_fold_is_still_rolled_back_on_every_zoo_model(monkeypatch, name, bug):
    if bug == "sign flip":
        monkeypatch.setattr(fold_bn, "_bn_affine", _flipped_sign)
    else:
        monkeypatch.setattr(fold_bn, "_set_bias", lambda graph, node, index, value: None)
    run = Pipeline.parse("fold-bn").run(models.build(name))
    p, v = run.report.passes[0], run.report.verification
    assert p.status == "rolled-back", (p.message, v)
    assert p.fidelity.max_rel > 10 * p.tolerance  # caught with a wide margin, not by luck
    assert p.tolerance == pytest.approx(max(DEFAULT_RTOL, FLOOR_MULTIPLE * (p.noise_floor or 0)))


@pytest.mark.parametrize("name", ["repvgg_a0-tiny", "mobileone_s0-tiny"])
def test_a_wrong_reparam_kernel_centre_is_still_rolled_back(monkeypatch, name):
    merge = kernels.merge

    def off_centre(found, channels_in):
        k = merge(found, channels_in)
        k.weight = np.roll(k.weight, 1, axis=-1)  # every tap one column to the right
        return k
    monkeypatch.setattr(reparam, "merge", off_centre)  # where the pass calls it
    run = Pipeline.parse("fold-bn,reparam").run(models.build(name))
    p = run.report.passes[1]
    assert p.name == "reparam" and p.status == "rolled-back", p.message
    assert p.fidelity.max_rel > 10 * p.tolerance


# -- per-region rollback ----------------------------------------------------------------------------

def _wrong_for(names: set[str]):
    """fold-bn's affine with the shift's sign flipped for the BNs named here only."""
    def affine(graph, bn):
        found = ORIGINAL_AFFINE(graph, bn)
        if isinstance(found, str) or bn.name not in names:
            return found
        return fold_bn._Affine(found.scale, -found.shift - 1.0)
    return affine


@pytest.mark.parametrize("wrong", [1, 2])
def test_one_wrong_rewrite_of_many_is_rolled_back_alone(monkeypatch, wrong):
    model = models.build("resnet18-tiny")
    bns = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) >= 16
    bad = set(bns[5:5 + wrong])
    monkeypatch.setattr(fold_bn, "_bn_affine", _wrong_for(bad))
    run = Pipeline.parse("fold-bn").run(model)
    p = run.report.passes[0]
    assert p.status == "applied", p.message
    assert p.stats["bn_folded"] == len(bns) - wrong
    left = [n.name for n in run.model.graph.node if n.op_type == "BatchNormalization"]
    assert set(left) == bad
    declined = [s for s in p.skipped if "rolled back alone" in s.reason]
    assert sorted(s.where for s in declined) == sorted(f"BatchNormalization '{b}'" for b in bad)
    for s in declined:
        error = float(s.reason.split("max rel error ")[1].split(" >")[0])
        assert error > 10 * p.tolerance
    assert p.fidelity.max_rel <= p.tolerance and run.report.fidelity.max_rel <= p.tolerance
    assert any(f"{wrong} of {len(bns)} rewrites failed verification" in n for n in p.notes)


def _homogeneous_chain(layers: int = 4) -> onnx.ModelProto:
    """Conv -> BN -> Relu, `layers` times, with no shifts anywhere: scaling one BN's output scales the
    model's output by exactly the same factor, so errors of two folds compound predictably."""
    rng = np.random.default_rng(1)
    nodes, inits, x = [], {}, "x"
    for i in range(layers):
        inits.update({f"w{i}": rng.standard_normal((4, 4, 3, 3)).astype(F32), f"g{i}": rng.uniform(0.5, 1.5, 4).astype(F32),
                      f"b{i}": np.zeros(4, F32), f"m{i}": np.zeros(4, F32), f"v{i}": rng.uniform(0.5, 1.5, 4).astype(F32)})
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"],
                                   name=f"bn{i}"),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    return make_model(nodes, inits, [("x", [1, 4, 8, 8])], [(x, [1, 4, 8, 8])])


def test_rewrites_wrong_only_together_lose_only_one_of_them(monkeypatch):
    """Two folds each 0.7% off, the tolerance 1%: each alone verifies, both together (1.4%) do not.
    Holding back the later one is enough: it is rolled back alone, the other kept."""
    def affine(graph, bn):
        found = ORIGINAL_AFFINE(graph, bn)
        if isinstance(found, str) or bn.name not in ("bn1", "bn3"):
            return found
        return fold_bn._Affine(found.scale * 1.007, found.shift)

    monkeypatch.setattr(fold_bn, "_bn_affine", affine)
    run = Pipeline.parse("fold-bn", rtol=1e-2).run(_homogeneous_chain())
    p = run.report.passes[0]
    assert p.status == "applied", p.message
    assert [s.where for s in p.skipped if "rolled back alone" in s.reason] == ["BatchNormalization 'bn3'"]
    assert p.stats["bn_folded"] == 3 and p.fidelity.max_rel == pytest.approx(0.007, rel=1e-3)
    assert run.report.problems == [p]  # --strict still fails on it


def test_a_rewrite_that_needs_an_earlier_one_is_found(monkeypatch):
    """Conv -> BN a -> BN b -> BN c: b folds only once a is gone. A wrong b is found and rolled back
    alone, a kept (tested in halves, b would never fold without a and the search would blame nothing)."""
    rng = np.random.default_rng(0)
    nodes, inits = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])], {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(F32)}
    x = "c"
    for name in ("bn_a", "bn_b", "bn_c"):
        inits.update({f"{name}_{k}": v for k, v in {"g": rng.uniform(0.5, 1.5, 4), "b": rng.standard_normal(4),
                                                    "m": rng.standard_normal(4), "v": rng.uniform(0.5, 1.5, 4)}.items()})
        nodes.append(helper.make_node("BatchNormalization", [x, *(f"{name}_{k}" for k in "gbmv")], [name], name=name))
        x = name
    nodes.append(helper.make_node("Relu", [x], ["y"], name="relu"))
    inits = {k: np.asarray(v, F32) for k, v in inits.items()}
    model = make_model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    monkeypatch.setattr(fold_bn, "_bn_affine", _wrong_for({"bn_b"}))
    run = Pipeline.parse("fold-bn").run(model)
    p = run.report.passes[0]
    left = {n.name for n in run.model.graph.node if n.op_type == "BatchNormalization"}
    assert p.status == "applied", p.message
    assert [s.where for s in p.skipped if "rolled back alone" in s.reason] == ["BatchNormalization 'bn_b'"]
    assert "bn_a" not in left and "bn_b" in left and run.report.fidelity.max_rel <= p.tolerance
    # a wrong first BN: what needed it cannot fold either, so nothing is left to keep
    monkeypatch.setattr(fold_bn, "_bn_affine", _wrong_for({"bn_a"}))
    assert Pipeline.parse("fold-bn").run(model).report.passes[0].status == "rolled-back"


def test_a_pass_that_raises_while_isolating_rolls_back_whole(monkeypatch):
    model = models.build("resnet18-tiny")
    bns = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    calls = []

    def affine(graph, bn):
        calls.append(bn.name)
        if len(calls) > len(bns):  # the re-runs of the isolation search
            raise KeyError("only on a subset")
        return _wrong_for({bns[4]})(graph, bn)

    monkeypatch.setattr(fold_bn, "_bn_affine", affine)
    run = Pipeline.parse("fold-bn").run(model)
    assert run.report.passes[0].status == "rolled-back"


def test_an_argmax_output_does_not_count_as_float_noise(monkeypatch):
    """A discrete output that flips under onnxruntime's optimizations says nothing of float noise: the
    floor comes from float outputs only, so a wrong fold is still rolled back."""
    model = sensitive()
    g = model.graph
    g.node.append(helper.make_node("ArgMax", ["out"], ["cls"], axis=1))
    g.output.append(helper.make_tensor_value_info("cls", onnx.TensorProto.INT64, [1, 1, 16, 16]))
    run = Pipeline.parse("fold-bn").run(model)
    assert run.report.passes[0].status == "applied"
    assert run.report.verification["noise_floor"] < 0.05  # the sigmoid's floor, not an index flip (0.3-0.7)
    monkeypatch.setattr(fold_bn, "_bn_affine", _wrong_for({n.name for n in g.node if n.op_type == "BatchNormalization"}
                                                          | {""}))
    assert Pipeline.parse("fold-bn").run(model).report.passes[0].status == "rolled-back"


def test_outputs_declared_with_minus_one_are_named_too():
    model = sensitive()
    for d in model.graph.output[0].type.tensor_type.shape.dim:
        d.Clear()
        d.dim_value = -1 if d is model.graph.output[0].type.tensor_type.shape.dim[0] else 0
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[1].dim_value = 8
    run = Pipeline.parse("fold-bn").run(model)
    assert run.report.passes[0].status == "applied"
    out = run.model.graph.output[0].type.tensor_type.shape.dim
    assert out[1].dim_value == 8 and all(d.dim_param for i, d in enumerate(out) if i != 1)


def test_verification_uses_every_core_and_passes_keep_the_threads_asked_for(monkeypatch):
    from onnxopt.pipeline import run as pipeline_module
    monkeypatch.setattr(pipeline_module, "verification_threads", lambda: 6)
    default = Pipeline([])
    assert (default.threads, default.verify_threads) == (1, 6)
    told = Pipeline([], threads=3)
    assert (told.threads, told.verify_threads) == (3, 3)


def test_the_thread_count_moves_outputs_far_less_than_the_tolerance():
    # verification runs a model and its rewrite at the same count, but the count differs between
    # machines: what it moves (a reduction split differently) must stay far below what a pass may
    from onnxopt.runtime.fidelity import compare
    from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
    for name in ("resnet18-tiny", "mobilenetv2-tiny"):
        model = models.build(name, seed=0)
        feeds = random_feeds(model, resolve_input_shapes(model), seed=0, count=2)
        moved = compare(run_model(model, feeds, threads=1), run_model(model, feeds, threads=4))
        assert moved.max_rel < DEFAULT_RTOL / 10, (name, moved.max_rel)
