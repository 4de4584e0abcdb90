"""The pipeline contract (onnxopt/pipeline.py): the caller's model is never touched, every changed
result is checked and verified, exact passes that move outputs are rolled back, a failing pass does
not lose the run, and the report says what happened in a stable JSON schema.

The passes here are test-local Pass subclasses used directly in `Pipeline([...])`; none is
registered, so the global registry stays as the built-ins left it.
"""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

import onnxopt.pipeline.run as pipeline_module
from onnxopt.errors import DynamicShape, PreconditionError
from onnxopt.pipeline.contract import Pass, PassResult
from onnxopt.pipeline.run import Pipeline
from onnxopt.testing import count_ops, fidelity, parse_model

try:
    from onnxopt import models as zoo
    TINY = [n for n in zoo.available() if "-tiny" in n]
except Exception:  # noqa: BLE001 - the zoo is written concurrently; hand-built models still run
    zoo, TINY = None, []

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'
RNG = np.random.default_rng(11)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)

CONV_TEXT = OPSET + """
conv (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  y = Conv <pads = [1, 1, 1, 1]> (x, W)
}
"""

BN_TEXT = OPSET + """
convbn (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv <pads = [1, 1, 1, 1]> (x, W)
  b = BatchNormalization(c, g, beta, mean, var)
  k = Constant <value_float = 2.0> ()
  y = Mul(b, k)
}
"""


def conv_model() -> onnx.ModelProto:
    return parse_model(CONV_TEXT, W=W)


def bn_model() -> onnx.ModelProto:
    return parse_model(BN_TEXT, W=W, g=RNG.uniform(0.5, 1.5, 4).astype(np.float32),
                       beta=RNG.standard_normal(4).astype(np.float32),
                       mean=RNG.standard_normal(4).astype(np.float32),
                       var=RNG.uniform(0.5, 1.5, 4).astype(np.float32))


def weight(model: onnx.ModelProto, name: str = "W") -> np.ndarray:
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


# ---------------------------------------------------------------------------------------------
# Test-local passes


class ScaleConv(Pass):
    """Deliberately wrong 'exact' pass: scales the first Conv's weight."""

    name = "test-scale-conv"
    exact = True
    factor = 1.01

    def run(self, graph, ctx):
        conv = graph.nodes("Conv")[0]
        w = conv.input(1)
        graph.set_constant(w, graph.constant(w) * np.float32(self.factor))
        result = PassResult(changed=True)
        result.count("scaled")
        return result


class TinyScale(ScaleConv):
    name = "test-tiny-scale"
    factor = 1.00001  # max rel 1e-5: inside the default rtol 1e-4


class Recorder(Pass):
    """Changes nothing; records the Conv weights and context each time it runs."""

    name = "test-recorder"
    exact = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def run(self, graph, ctx):
        conv = graph.nodes("Conv")[0]
        y = graph.output_names[0]
        self.seen.append({"W": np.array(graph.constant(conv.input(1))), "shapes": dict(ctx.input_shapes),
                          "out_shape": graph.shape(y), "nodes": len(graph)})
        return PassResult()


class InsertIdentity(Pass):
    """A correct exact pass: an Identity between the graph input and its readers."""

    name = "test-insert-identity"
    exact = True

    def run(self, graph, ctx):
        x = graph.input_names[0]
        ident = graph.add_node("Identity", [x])
        graph.replace_all_uses(x, ident.outputs[0])
        graph.set_input(ident, 0, x)
        result = PassResult(changed=True)
        result.count("inserted")
        return result


class Boom(Pass):
    name = "test-boom"
    exact = True

    def run(self, graph, ctx):
        graph.set_constant(graph.nodes("Conv")[0].input(1), np.zeros_like(W))
        raise RuntimeError("boom")


class GraphBug(Pass):
    """Raises a GraphError (an OnnxoptError) halfway through its edits."""

    name = "test-graph-bug"
    exact = True

    def run(self, graph, ctx):
        graph.add_node("Relu", [graph.input_names[0]])
        graph.remove(graph.nodes("Conv")[0])  # its output is a graph output: refused
        return PassResult(changed=True)


class Dangling(Pass):
    """Makes the graph invalid: the Conv reads a tensor nothing produces."""

    name = "test-dangling"
    exact = True

    def run(self, graph, ctx):
        graph.set_input(graph.nodes("Conv")[0], 0, "nowhere")
        return PassResult(changed=True)


class LossyZeroChannel(Pass):
    """exact=False: zeroes output channel 0 and perturbs the rest of the Conv weight."""

    name = "test-lossy"
    exact = False

    def run(self, graph, ctx):
        conv = graph.nodes("Conv")[0]
        w = np.array(graph.constant(conv.input(1)))
        w[0] = 0
        w[1:] *= np.float32(1.05)
        graph.set_constant(conv.input(1), w)
        return PassResult(changed=True, stats={"zeroed": 1})


class Liar(Pass):
    """Edits the graph but reports changed=False."""

    name = "test-liar"
    exact = True

    def run(self, graph, ctx):
        graph.set_constant(graph.nodes("Conv")[0].input(1), np.zeros_like(W))
        graph.add_node("Relu", [graph.input_names[0]])
        return PassResult(changed=False)


class Skipper(Pass):
    name = "test-skipper"
    exact = True

    def run(self, graph, ctx):
        result = PassResult()
        result.skip(graph.nodes("Conv")[0], "weight is shared with another node")
        result.skip("W", "not a float tensor")
        result.notes.append("looked at 1 Conv")
        return result


class NeedsShapes(Pass):
    name = "test-needs-shapes"
    exact = True

    def requires(self, graph, ctx):
        raise PreconditionError("test-needs-shapes: needs static input shapes")

    def run(self, graph, ctx):  # pragma: no cover - requires() refuses first
        raise AssertionError("run() after a failed precondition")


# ---------------------------------------------------------------------------------------------
# The caller's model


def test_pipeline_never_mutates_the_input_model():
    model = bn_model()
    before = model.SerializeToString()
    passes = [ScaleConv(), Boom(), Dangling(), LossyZeroChannel(), InsertIdentity(), Liar(),
              *pipeline_module.Pipeline.parse("fold-bn,cleanup").passes]
    result = Pipeline(passes).run(model)
    assert model.SerializeToString() == before
    statuses = [p.status for p in result.report.passes]
    assert statuses == ["rolled-back", "failed", "rolled-back", "applied", "applied", "failed", "applied",
                        "applied"]
    assert "BatchNormalization" not in count_ops(result.model)
    # the result does not alias the caller's tensors either
    result.model.graph.initializer[0].raw_data = b"\0" * len(result.model.graph.initializer[0].raw_data)
    assert model.SerializeToString() == before


def test_all_unchanged_run_returns_the_same_bytes():
    model = conv_model()
    before = model.SerializeToString()
    rec = Recorder()
    result = Pipeline([rec, Skipper(), *Pipeline.parse("cleanup,fold-bn").passes]).run(model)
    assert [p.status for p in result.report.passes] == ["unchanged"] * 4
    assert result.model.SerializeToString() == before
    assert result.to_bytes() == before
    assert result.report.changed is False and result.report.problems == []
    assert result.report.fidelity is None
    assert result.report.after == result.report.before
    assert len(rec.seen) == 1


# ---------------------------------------------------------------------------------------------
# Rollback and failure


def test_wrong_exact_pass_is_rolled_back_and_later_passes_see_the_original():
    model = conv_model()
    rec = Recorder()
    result = Pipeline([ScaleConv(), rec]).run(model)
    scale, recorded = result.report.passes
    assert scale.status == "rolled-back"
    assert scale.stats == {"scaled": 1}  # what the pass claimed is still reported
    m = re.search(r"max rel error (\S+) > 0\.0001, worst output 'y'", scale.message)
    assert m, scale.message
    assert float(m.group(1)) == pytest.approx(0.01, rel=1e-2)
    assert scale.fidelity is not None and scale.fidelity.max_rel == pytest.approx(0.01, rel=1e-3)
    assert scale.fidelity.cosine == pytest.approx(1.0, abs=1e-9)  # a pure rescale keeps direction
    assert recorded.status == "unchanged"
    np.testing.assert_array_equal(rec.seen[0]["W"], W)
    assert result.model.SerializeToString() == model.SerializeToString()
    assert result.report.problems == [scale]
    assert result.report.changed is False and result.report.fidelity is None


def test_rtol_decides_rollback():
    model = conv_model()
    loose = Pipeline([TinyScale()]).run(model).report.passes[0]
    assert loose.status == "applied"
    assert 5e-6 < loose.fidelity.max_rel < 2e-5
    strict = Pipeline([TinyScale()], rtol=1e-6).run(model).report.passes[0]
    assert strict.status == "rolled-back"
    assert "> 1e-06" in strict.message


def test_failing_passes_are_reported_and_the_run_continues():
    model = conv_model()
    rec = Recorder()
    result = Pipeline([ScaleConv(), Boom(), GraphBug(), rec, InsertIdentity()]).run(model)
    scale, boom, bug, recorded, ident = result.report.passes
    assert scale.status == "rolled-back"
    assert boom.status == "failed"
    assert re.fullmatch(r"RuntimeError: boom \(test_run\.py:\d+\)", boom.message), boom.message
    assert bug.status == "failed"
    assert bug.message.startswith("GraphError: cannot remove Conv")
    np.testing.assert_array_equal(rec.seen[0]["W"], W)  # Boom's zeroed weight was discarded
    assert rec.seen[0]["nodes"] == 1  # GraphBug's Relu too
    assert ident.status == "applied" and ident.stats == {"inserted": 1}
    assert ident.fidelity.max_abs == 0.0
    assert count_ops(result.model) == {"Identity": 1, "Conv": 1}
    np.testing.assert_array_equal(weight(result.model), W)
    assert [p.name for p in result.report.problems] == ["test-scale-conv", "test-boom", "test-graph-bug"]


def test_precondition_error_stops_the_run():
    with pytest.raises(PreconditionError, match="needs static input shapes"):
        Pipeline([InsertIdentity(), NeedsShapes()]).run(conv_model())


def test_invalid_graph_is_rolled_back_with_the_checker_message():
    model = conv_model()
    result = Pipeline([Dangling(), InsertIdentity()]).run(model)
    dangling, ident = result.report.passes
    assert dangling.status == "rolled-back"
    assert dangling.message.startswith("onnx.checker rejected the result:")
    assert "nowhere" in dangling.message
    assert dangling.fidelity is None
    assert ident.status == "applied"
    assert result.model.graph.node[-1].input[0] != "nowhere"
    onnx.checker.check_model(result.model, full_check=True)


def test_invalid_graph_is_rolled_back_without_verification_too():
    model = conv_model()
    result = Pipeline([Dangling()], verify=False).run(model)
    assert result.report.passes[0].status == "rolled-back"
    assert result.model.SerializeToString() == model.SerializeToString()


class BadChannels(Pass):
    """Loads in onnxruntime but fails when run (kernel channels do not match the input)."""

    name = "test-bad-channels"
    exact = True

    def run(self, graph, ctx):
        graph.set_constant(graph.nodes("Conv")[0].input(1), np.ones((4, 2, 3, 3), np.float32))
        return PassResult(changed=True)


def test_result_that_fails_in_onnxruntime_is_rolled_back():
    result = Pipeline([BadChannels(), InsertIdentity()]).run(conv_model())
    assert [p.status for p in result.report.passes] == ["rolled-back", "applied"]
    np.testing.assert_array_equal(weight(result.model), W)


# ---------------------------------------------------------------------------------------------
# Lossy passes and fidelity


def test_lossy_pass_is_kept_and_reports_fidelity():
    model = conv_model()
    result = Pipeline([LossyZeroChannel()]).run(model)
    (lossy,) = result.report.passes
    assert lossy.status == "applied" and lossy.exact is False
    w = weight(result.model)
    assert np.all(w[0] == 0)
    np.testing.assert_allclose(w[1:], W[1:] * np.float32(1.05), rtol=1e-6)
    fid = lossy.fidelity
    assert fid is not None
    assert 0.5 < fid.cosine < 0.999
    assert fid.max_abs > 0.1 and fid.max_rel > 1e-2
    # the numbers are the ones an independent comparison on the same seeded inputs gives
    independent = fidelity(model, result.model, samples=2, seed=0)
    assert fid.max_abs == pytest.approx(independent.max_abs)
    assert fid.cosine == pytest.approx(independent.cosine)
    assert result.report.fidelity.max_abs == pytest.approx(independent.max_abs)
    assert result.report.problems == []


def test_final_fidelity_compares_against_the_original_model():
    model = conv_model()
    result = Pipeline([LossyZeroChannel(), LossyZeroChannel()]).run(model)
    first, second = result.report.passes
    independent = fidelity(model, result.model)
    assert result.report.fidelity.max_abs == pytest.approx(independent.max_abs)
    # each pass is compared with the model before it, the report with the original
    assert second.fidelity.max_abs < result.report.fidelity.max_abs
    np.testing.assert_allclose(weight(result.model)[1:], W[1:] * np.float32(1.05) ** 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Dynamic shapes


def test_symbolic_batch_resolves_to_one():
    model = parse_model(OPSET + """
    conv (float[N,3,8,8] x) => (float[N,4,8,8] y) {
      y = Conv <pads = [1, 1, 1, 1]> (x, W)
    }""", W=W)
    rec = Recorder()
    result = Pipeline([rec, InsertIdentity()]).run(model)
    assert result.report.input_shapes == {"x": (1, 3, 8, 8)}
    assert rec.seen[0]["shapes"] == {"x": (1, 3, 8, 8)}
    assert rec.seen[0]["out_shape"] == (1, 4, 8, 8)
    assert result.report.passes[1].status == "applied"
    # the written model keeps its symbolic batch
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


DYNAMIC_HW = OPSET + """
conv (float[1,3,H,W] x) => (float[1,4,H,W] y) {
  y = Conv <pads = [1, 1, 1, 1]> (x, Wt)
}
"""


def test_symbolic_non_batch_dim_needs_input_shapes():
    model = parse_model(DYNAMIC_HW, Wt=W)
    with pytest.raises(DynamicShape, match=r"--input-shape x:1,3,N,N"):
        Pipeline([InsertIdentity()]).run(model)
    rec = Recorder()
    result = Pipeline([rec, InsertIdentity()], input_shapes={"x": [1, 3, 6, 10]}).run(model)
    assert result.report.input_shapes == {"x": (1, 3, 6, 10)}
    assert rec.seen[0]["out_shape"] == (1, 4, 6, 10)
    ident = result.report.passes[1]
    assert ident.status == "applied" and ident.fidelity is not None and ident.fidelity.max_abs == 0.0


# ---------------------------------------------------------------------------------------------
# verify=False, lying passes, instruments


def test_verify_false_skips_onnxruntime(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("onnxruntime used with verify=False")

    monkeypatch.setattr(pipeline_module, "run_model", forbidden)
    monkeypatch.setattr(pipeline_module, "random_feeds", forbidden)
    model = conv_model()
    result = Pipeline([ScaleConv()], verify=False).run(model)
    (scale,) = result.report.passes
    assert scale.status == "applied"  # nothing compared, so nothing rolled back
    assert scale.fidelity is None
    assert result.report.verified is False and result.report.fidelity is None
    np.testing.assert_allclose(weight(result.model), W * np.float32(1.01), rtol=1e-7)


def test_pass_that_reports_no_change_has_its_edits_discarded():
    model = conv_model()
    rec = Recorder()
    result = Pipeline([Liar(), rec]).run(model)
    assert [p.status for p in result.report.passes] == ["failed", "unchanged"]
    assert "reported no change" in result.report.passes[0].message
    assert result.model.SerializeToString() == model.SerializeToString()
    np.testing.assert_array_equal(rec.seen[0]["W"], W)
    assert rec.seen[0]["nodes"] == 1
    assert result.report.changed is False


def test_instruments_see_each_pass_and_the_current_model():
    calls = []

    class Spy:
        def before_pass(self, p, model):
            calls.append(("before", p.name, len(model.graph.node)))

        def after_pass(self, p, model, report):
            calls.append(("after", p.name, len(model.graph.node), report.status))

    Pipeline([InsertIdentity(), ScaleConv()], instruments=[Spy()]).run(conv_model())
    assert calls == [
        ("before", "test-insert-identity", 1), ("after", "test-insert-identity", 2, "applied"),
        ("before", "test-scale-conv", 2), ("after", "test-scale-conv", 2, "rolled-back"),
    ]


# ---------------------------------------------------------------------------------------------
# The JSON report

PASS_KEYS = {"name", "spec", "status", "exact", "seconds", "stats", "skipped", "notes", "message", "fidelity", "details",
             "tolerance", "noise_floor"}


def test_report_as_dict_is_json_with_a_schema():
    model = conv_model()
    result = Pipeline([ScaleConv(), Boom(), Skipper(), InsertIdentity(), LossyZeroChannel()]).run(model)
    d = result.report.as_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    assert d["schema"] == "onnxopt.run/1"
    assert d["changed"] is True and d["verified"] is True
    assert d["input_shapes"] == {"x": [1, 3, 8, 8]}
    assert d["before"]["nodes"] == 1 and d["after"]["nodes"] == 2
    assert d["before"]["ops"] == {"Conv": 1} and d["after"]["ops"] == {"Conv": 1, "Identity": 1}
    assert d["before"]["params"] == W.size
    assert [p["status"] for p in d["passes"]] == ["rolled-back", "failed", "unchanged", "applied", "applied"]
    for p in d["passes"]:
        assert set(p) == PASS_KEYS
        assert isinstance(p["seconds"], float) and p["seconds"] >= 0
    scale, boom, skipper, ident, lossy = d["passes"]
    assert scale["stats"] == {"scaled": 1} and "max rel error" in scale["message"]
    assert scale["fidelity"]["max_rel"] == pytest.approx(0.01, rel=1e-3)
    assert skipper["skipped"] == [
        {"where": "Conv -> 'y'", "reason": "weight is shared with another node", "settled_by": None},
        {"where": "W", "reason": "not a float tensor", "settled_by": None}]
    assert skipper["notes"] == ["looked at 1 Conv"]
    assert ident["stats"] == {"inserted": 1} and ident["fidelity"]["max_abs"] == 0.0
    assert lossy["exact"] is False and lossy["fidelity"]["cosine"] < 1
    assert d["fidelity"]["max_abs"] == pytest.approx(lossy["fidelity"]["max_abs"])
    assert d["fidelity"]["samples"] == 2


class NaNWeight(Pass):
    name = "test-nan"
    exact = True

    def run(self, graph, ctx):
        w = np.array(W)
        w[0, 0, 0, 0] = np.nan
        graph.set_constant("W", w)
        return PassResult(changed=True)


def test_pass_producing_nan_is_rolled_back():
    result = Pipeline([NaNWeight()]).run(conv_model())
    (p,) = result.report.passes
    assert p.status == "rolled-back"
    assert "max rel error inf" in p.message


def test_report_is_strict_json_even_when_outputs_went_non_finite():
    result = Pipeline([NaNWeight()]).run(conv_model())
    json.dumps(result.report.as_dict(), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Built-in passes end to end


@pytest.mark.skipif(zoo is None, reason="onnxopt.models not importable yet")
def test_fold_bn_and_cleanup_on_resnet18_tiny():
    model = zoo.build("resnet18-tiny")
    before = model.SerializeToString()
    n_bn = count_ops(model)["BatchNormalization"]
    result = Pipeline.parse("fold-bn,cleanup").run(model)
    assert model.SerializeToString() == before
    ops = count_ops(result.model)
    assert "BatchNormalization" not in ops
    assert ops["Conv"] == count_ops(model)["Conv"]
    fold = result.report.passes[0]
    assert fold.status == "applied" and fold.stats["bn_folded"] == n_bn
    assert result.report.fidelity.max_rel <= 1e-5
    assert result.report.fidelity.top1_agreement == 1.0
    assert result.report.after.nodes == result.report.before.nodes - n_bn
    onnx.checker.check_model(result.model, full_check=True)


def test_fold_bn_on_a_hand_built_model():
    model = bn_model()
    result = Pipeline.parse("fold-bn,cleanup").run(model)
    assert count_ops(result.model) == {"Conv": 1}  # BN and the constant Mul both fold
    assert result.report.fidelity.max_rel <= 1e-5
    assert result.report.passes[0].stats["bn_folded"] == 1


@pytest.mark.skipif(not TINY, reason="onnxopt.models not importable yet")
@pytest.mark.parametrize("name", TINY or ["none"])
def test_every_registered_pass_on_every_tiny_zoo_model(name):
    """The suite test (style.md §10.4): each pass that needs no data, alone, through the verifying
    pipeline: nothing fails or is rolled back, exact passes keep outputs within 1e-5, and an
    idempotent pass run again on its own result changes nothing."""
    from onnxopt import available_passes

    model = zoo.build(name)
    for pass_name, cls in sorted(available_passes().items()):
        if cls.needs_data:
            continue
        result = Pipeline([cls()]).run(model)
        (report,) = result.report.passes
        assert report.status in ("applied", "unchanged"), f"{pass_name} on {name}: {report.message}"
        if report.status == "applied" and cls.exact:
            assert report.fidelity.max_rel <= 1e-5, f"{pass_name} on {name}"
        if report.status == "applied" and cls.idempotent:
            again = Pipeline([cls()]).run(result.model)
            assert again.report.passes[0].status == "unchanged", f"{pass_name} on {name} is not idempotent"
            assert again.model.SerializeToString() == result.model.SerializeToString()


# ---------------------------------------------------------------------------------------------
# Found in review


def test_outputs_that_are_nan_on_random_inputs_do_not_block_exact_passes():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,8] x) => (float[2,8] y) { l = Log(x)  y = Identity(l) }""")
    run = Pipeline.parse("cleanup").run(model)
    assert run.report.passes[0].status == "applied"


def test_cleanup_of_an_unused_input_still_verifies_and_says_the_interface_changed():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] spare) => (float[2] y) { r = Relu(x)  y = Identity(r) }""")
    run = Pipeline.parse("cleanup").run(model)
    p = run.report.passes[0]
    assert p.status == "applied" and p.stats["inputs_removed"] == 1
    assert any("interface changed" in n for n in p.notes)


def test_output_shape_change_is_not_exact():
    from onnxopt.runtime.fidelity import compare
    a = [{"y": np.arange(10, dtype=np.float32).reshape(1, 10)}]
    b = [{"y": np.arange(10, dtype=np.float32).reshape(10, 1)}]
    assert compare(a, b).max_rel == float("inf")


def test_calibration_samples_are_used_for_verification():
    model = conv_model()
    x = model.graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    calib = [{x.name: np.full(shape, float(i), np.float32)} for i in range(5)]
    run = Pipeline([LossyZeroChannel()], calibration=calib, samples=3).run(model)
    assert run.report.verified_on == "3 calibration samples"
    assert Pipeline([LossyZeroChannel()]).run(model).report.verified_on == "2 seeded random samples"


def test_declines_a_later_pass_settles_are_marked_and_summarised():
    """fold-bn declines RepVGG's identity BNs; reparam then merges them: the report says so instead
    of listing them as regions left alone."""
    from onnxopt import models
    from onnxopt.pipeline.report import format_run

    run = Pipeline.parse("fold-bn,reparam").run(models.build("repvgg_a0-tiny"))
    fold, reparam = run.report.passes
    assert len(fold.skipped) == 3 and all(s.settled_by == "reparam" for s in fold.skipped)
    assert fold.as_dict()["skipped"][0]["settled_by"] == "reparam"
    text = format_run(run.report)
    assert "declined (" not in text
    assert "3 region(s) declined by one pass were then handled by reparam" in text
    assert "[then: reparam]" in format_run(run.report, verbose=True)


def test_declines_that_still_describe_the_result_stay_open():
    from onnxopt import models
    from onnxopt.pipeline.report import format_run

    # ResNet's shortcut joins are declined by reparam and nothing later touches them
    run = Pipeline.parse("reparam,fold-bn").run(models.build("resnet18-tiny"))
    reparam = run.report.passes[0]
    assert len(reparam.skipped) == 3 and all(s.settled_by is None for s in reparam.skipped)
    assert "declined (3):" in format_run(run.report)
