"""prune:round-to=1, the pass and its options (ratio, limits, overrides, exclusions, global ranking, criteria),
recovery from calibration data, dry run, the report, and the CLI's one-line errors.

The coupling analysis and the channel surgery per op are covered by tests/test_channels.py."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt import models
from onnxopt.data.feeds import FeedSet
from onnxopt.errors import BadData, BadOption
from onnxopt.passes.prune import Prune
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import parse_spec
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
from onnxopt.testing import apply, assert_one_line_error, make_model, run_cli

F32 = np.float32


# ---------------------------------------------------------------------------------------------
# a small net: stem (10) -> layer1.conv (16) -> layer2.conv (24) -> GAP -> fc1 (32) -> fc2 (10, output)


make = make_model


WIDTHS = {"stem": 10, "layer1.conv": 16, "layer2.conv": 24, "fc1": 32}


def net(seed=0, spread_stem=False) -> onnx.ModelProto:
    """With spread_stem, half of the stem's filters are 20x weaker than the rest (uneven scores)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(F32)

    inits = {"stem.w": w(10, 3, 3, 3), "stem.b": w(10), "layer1.conv.w": w(16, 10, 3, 3), "layer1.conv.b": w(16),
             "layer2.conv.w": w(24, 16, 3, 3), "layer2.conv.b": w(24), "fc1.w": w(32, 24), "fc1.b": w(32),
             "fc2.w": w(10, 32), "fc2.b": w(10)}
    if spread_stem:
        inits["stem.w"][::2] *= 0.05
    nodes = [helper.make_node("Conv", ["x", "stem.w", "stem.b"], ["s"], name="stem", pads=[1] * 4),
             helper.make_node("Relu", ["s"], ["s_r"]),
             helper.make_node("Conv", ["s_r", "layer1.conv.w", "layer1.conv.b"], ["l1"], name="layer1.conv",
                              pads=[1] * 4),
             helper.make_node("Relu", ["l1"], ["l1_r"]),
             helper.make_node("Conv", ["l1_r", "layer2.conv.w", "layer2.conv.b"], ["l2"], name="layer2.conv",
                              pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["l2"], ["l2_r"]),
             helper.make_node("GlobalAveragePool", ["l2_r"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["f1"], name="fc1", transB=1),
             helper.make_node("Relu", ["f1"], ["f1_r"]),
             helper.make_node("Gemm", ["f1_r", "fc2.w", "fc2.b"], ["y"], name="fc2", transB=1)]
    return make(nodes, inits, [("x", [1, 3, 12, 12])], [("y", [1, 10])])


def widths(model) -> dict[str, int]:
    """Output channels of each prunable layer of `net`."""
    w = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return {"stem": w["stem.w"][0], "layer1.conv": w["layer1.conv.w"][0], "layer2.conv": w["layer2.conv.w"][0],
            "fc1": w["fc1.w"][0]}


def prune(model, **options):
    """Prune with rounding off unless the test asks for it (the small test nets have widths that
    round-to=auto, 8 or 16, would leave whole)."""
    out, result = apply(Prune(**{"round_to": 1, **options}), model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def finite_outputs(model):
    feeds = random_feeds(model, resolve_input_shapes(model), seed=3, count=2)
    return all(np.isfinite(v).all() for out in run_model(model, feeds) for v in out.values())


# ---------------------------------------------------------------------------------------------
# ratio 0, and the plain ratio


def test_ratio_zero_leaves_the_model_alone():
    model = net()
    run = Pipeline([Prune(round_to=1, ratio=0.0)]).run(model)
    (report,) = run.report.passes
    assert report.status == "unchanged" and report.stats == {}
    assert run.model is model
    assert run.model.SerializeToString() == model.SerializeToString()


def test_plain_ratio_removes_floor_of_each_group():
    out, result = prune(net(), ratio=0.3)
    assert widths(out) == {"stem": 7, "layer1.conv": 12, "layer2.conv": 17, "fc1": 23}
    assert result.stats["channels removed"] == 3 + 4 + 7 + 9
    assert result.stats["groups pruned"] == 4
    assert [row["kept"] for row in result.details["groups"]] == [7, 12, 17, 23]
    assert finite_outputs(out)


# ---------------------------------------------------------------------------------------------
# option validation


BAD = [({"ratio": 1.0}, "ratio"), ({"ratio": -0.1}, "ratio"), ({"ratio": "1.5"}, "ratio"),
       ({"max_ratio": 0}, "max-ratio"), ({"max-ratio": "1.5"}, "max-ratio"), ({"round_to": 0}, "round-to"),
       ({"min_channels": 0}, "min-channels"), ({"ratios": "x=abc"}, "x=abc"), ({"ratios": "=0.3"}, "=0.3"),
       ({"ratios": "conv1"}, "conv1"), ({"ratios": "conv1=1"}, "conv1=1"), ({"ratios": "([=0.2"}, "bad pattern"),
       ({"exclude": "layer[1"}, "layer[1"), ({"criterion": "l3"}, "criterion"), ({"ratio": "abc"}, "ratio"),
       ({"global": "maybe"}, "global")]


@pytest.mark.parametrize("values,word", BAD, ids=[str(v) for v, _ in BAD])
def test_bad_options_are_refused(values, word):
    with pytest.raises(BadOption) as err:
        Prune.from_values(values)
    message = str(err.value)
    assert message.startswith("prune: ") and word in message and "\n" not in message


@pytest.mark.parametrize("spec", ["prune:round-to=1,ratio=1.5", "prune:round-to=0", "prune:round-to=1,ratios=x=abc",
                                  "fold-bn,prune:round-to=1,exclude=layer[1"])
def test_bad_options_in_a_spec(spec):
    with pytest.raises(BadOption):
        parse_spec(spec)


def test_good_options_parse():
    (p,) = parse_spec("prune:ratio=0.4,global=true,round-to=8,ratios=layer1.*=0.1|fc=0,exclude=stem|Gemm")
    o = p.options
    assert (o.ratio, o.global_ranking, o.round_to) == (0.4, True, 8)
    assert o.ratios == ("layer1.*=0.1", "fc=0") and o.exclude == ("stem", "Gemm")


def test_bad_option_on_the_cli(capsys, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(net(), src)
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_cli(capsys, "run", src, "--passes", "prune:round-to=1,ratio=1.5", "-o", out)
    assert_one_line_error(code, stdout, stderr, 2, "ratio", "1.5")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ---------------------------------------------------------------------------------------------
# limits: round-to, min-channels, max-ratio


def test_round_to_keeps_multiples():
    out, _ = prune(net(), ratio=0.3, round_to=4)
    got = widths(out)
    # keep 7 -> 8, 12 -> 12, 17 -> 20, 23 -> 24 of 32
    assert got == {"stem": 8, "layer1.conv": 12, "layer2.conv": 20, "fc1": 24}
    assert all(v % 4 == 0 or v == WIDTHS[k] for k, v in got.items())


def test_round_to_larger_than_a_group_leaves_it_whole():
    out, _ = prune(net(), ratio=0.5, round_to=16)
    assert widths(out) == {"stem": 10, "layer1.conv": 16, "layer2.conv": 16, "fc1": 16}


def test_min_channels():
    out, _ = prune(net(), ratio=0.5, min_channels=12)
    assert widths(out) == {"stem": 10, "layer1.conv": 12, "layer2.conv": 12, "fc1": 16}


def test_max_ratio_caps_removal():
    out, _ = prune(net(), ratio=0.6, max_ratio=0.25)
    # never below ceil(size * 0.75)
    assert widths(out) == {"stem": 8, "layer1.conv": 12, "layer2.conv": 18, "fc1": 24}


# ---------------------------------------------------------------------------------------------
# per-layer ratios and exclusions


def test_ratios_overrides_first_match_wins():
    out, result = prune(net(), ratio=0.5, ratios=("layer1.*=0.25", "stem=0", "Conv=0.125"))
    # layer1.conv: 0.25; stem: kept; layer2.conv: the op-type pattern; fc1: the default 0.5
    assert widths(out) == {"stem": 10, "layer1.conv": 12, "layer2.conv": 21, "fc1": 16}
    assert not any(n.startswith("warning") for n in result.notes)


def test_ratios_override_alone_with_ratio_zero():
    out, result = prune(net(), ratio=0.0, ratios=("fc1=0.5",))
    assert result.changed
    assert widths(out) == {**WIDTHS, "fc1": 16}


def test_ratios_pattern_matching_nothing_warns():
    _, result = prune(net(), ratio=0.3, ratios=("nothing.*=0.5",))
    assert "warning: ratios pattern 'nothing.*' matches no layer" in result.notes


def test_exclude_by_node_name():
    out, result = prune(net(), ratio=0.5, exclude=("layer1.conv",))
    assert widths(out) == {"stem": 5, "layer1.conv": 16, "layer2.conv": 12, "fc1": 16}
    assert any(s.where == "Conv 'layer1.conv'" and s.reason == "excluded by 'layer1.conv'" for s in result.skipped)


def test_exclude_by_regex_and_by_op_type():
    out, _ = prune(net(), ratio=0.5, exclude=("layer.*",))
    assert widths(out) == {"stem": 5, "layer1.conv": 16, "layer2.conv": 24, "fc1": 16}
    out, result = prune(net(), ratio=0.5, exclude=("Conv",))
    assert widths(out) == {"stem": 10, "layer1.conv": 16, "layer2.conv": 24, "fc1": 16}
    assert sum(s.reason == "excluded by 'Conv'" for s in result.skipped) == 3


def test_exclude_pattern_matching_nothing_warns():
    out, result = prune(net(), ratio=0.5, exclude=("nothing", "stem"))
    assert "warning: exclude pattern 'nothing' matches no layer" in result.notes
    assert not any("'stem'" in n for n in result.notes)
    assert widths(out)["stem"] == 10


def test_exclude_warning_reaches_the_pipeline_report():
    run = Pipeline([Prune(round_to=1, ratio=0.5, exclude=("nothing",))]).run(net())
    assert any(n.startswith("warning") and "'nothing'" in n for n in run.report.passes[0].notes)


# ---------------------------------------------------------------------------------------------
# global ranking


def test_global_ranking_removes_the_ratio_overall_unevenly():
    model = net(spread_stem=True)
    total = sum(WIDTHS.values())
    local, _ = prune(model, ratio=0.3)
    out, result = prune(model, ratio=0.3, global_ranking=True)
    got = widths(out)
    removed = {k: WIDTHS[k] - got[k] for k in WIDTHS}
    assert sum(removed.values()) == int(total * 0.3) == result.stats["channels removed"]
    fractions = [removed[k] / WIDTHS[k] for k in WIDTHS]
    assert max(fractions) - min(fractions) >= 0.2
    # the stem's five weak filters go first: globally it loses them all, locally only 3
    assert removed["stem"] >= 5 and widths(local)["stem"] == 7
    kept_stem = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "stem.w"))
    strong = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "stem.w"))[1::2]
    assert all(any(np.array_equal(k, s) for k in kept_stem) for s in strong)
    assert finite_outputs(out)


def test_global_alias_and_overrides():
    (p,) = parse_spec("prune:round-to=1,global=true,ratio=0.3,ratios=fc1=0")
    out, _ = apply(p, net(spread_stem=True))
    got = widths(out)
    assert got["fc1"] == 32
    assert sum(WIDTHS[k] - got[k] for k in ("stem", "layer1.conv", "layer2.conv")) == int(50 * 0.3)


# ---------------------------------------------------------------------------------------------
# criteria


def bn_net(tiny=(1, 4, 6)) -> tuple[onnx.ModelProto, np.ndarray]:
    """conv (8) -> BN -> relu -> conv (6). The BN's `tiny` channels have |gamma| 0.01 but a tiny
    running variance too, so BN leaves them as loud as the others: only the bn criterion, which
    reads |gamma| alone, picks them."""
    rng = np.random.default_rng(5)
    gamma = rng.uniform(0.8, 1.2, 8).astype(F32)
    var = rng.uniform(0.8, 1.2, 8).astype(F32)
    gamma[list(tiny)] = 0.01
    var[list(tiny)] = 1e-5
    inits = {"c1.w": (0.3 * rng.standard_normal((8, 3, 3, 3))).astype(F32), "g": gamma, "b": rng.standard_normal(8).astype(F32),
             "m": rng.standard_normal(8).astype(F32), "v": var, "c2.w": (0.3 * rng.standard_normal((6, 8, 3, 3))).astype(F32)}
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Conv", ["r", "c2.w"], ["y"], name="c2", pads=[1] * 4)]
    return make(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 6, 8, 8])]), gamma


def kept_gammas(model) -> list[float]:
    return sorted(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "g")).tolist())


def test_criterion_bn_removes_the_smallest_gammas():
    model, gamma = bn_net()
    out, result = prune(model, ratio=0.375, criterion="bn")
    assert kept_gammas(out) == sorted(np.delete(gamma, [1, 4, 6]).tolist())
    assert not any("scored by l1" in n for n in result.notes)
    # l1 (scaled by gamma / sqrt(var)) keeps them: the criterion made the difference
    out_l1, _ = prune(model, ratio=0.375, criterion="l1")
    assert kept_gammas(out_l1) != kept_gammas(out)
    assert sum(g == pytest.approx(0.01) for g in kept_gammas(out_l1)) == 3


def test_criterion_bn_before_fold_bn_in_a_pipeline():
    model, gamma = bn_net()
    run = Pipeline.parse("prune:round-to=1,criterion=bn,ratio=0.375,fold-bn").run(model)
    assert [p.status for p in run.report.passes] == ["applied", "applied"]
    assert not any(n.op_type == "BatchNormalization" for n in run.model.graph.node)
    conv = {t.name: tuple(t.dims) for t in run.model.graph.initializer}
    assert conv["c1.w"] == (5, 3, 3, 3) and conv["c2.w"] == (6, 5, 3, 3)


def test_criterion_bn_without_bn_falls_back_to_l1_with_a_note():
    model, _ = bn_net()
    run = Pipeline.parse("fold-bn,prune:round-to=1,criterion=bn,ratio=0.375").run(model)
    notes = run.report.passes[1].notes
    assert any(n.startswith("criterion bn: 1 group(s) scored by l1 instead") for n in notes), notes


def l1_l2_net():
    """Filters 0 and 1: one big weight (l1 = l2 = 2); filters 2 and 3: 27 weights of 0.15
    (l1 = 4.05, l2 = 0.78); the others in between on both norms."""
    rng = np.random.default_rng(6)
    w = np.full((8, 3, 3, 3), 0.25, F32) * np.sign(rng.standard_normal((8, 3, 3, 3))).astype(F32)  # l1 6.75, l2 1.3
    w[0:2] = 0
    w[0:2, 0, 1, 1] = 2.0
    w[2:4] = 0.15
    inits = {"c1.w": w, "c2.w": (0.3 * rng.standard_normal((6, 8, 3, 3))).astype(F32)}
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "c2.w"], ["y"], name="c2", pads=[1] * 4)]
    return make(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 6, 8, 8])]), w


@pytest.mark.parametrize("criterion,gone", [("l1", [0, 1]), ("l2", [2, 3])])
def test_criterion_l1_vs_l2(criterion, gone):
    model, w = l1_l2_net()
    out, _ = prune(model, ratio=0.25, criterion=criterion)
    kept = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "c1.w"))
    np.testing.assert_array_equal(kept, np.delete(w, gone, axis=0))


def dead_net():
    """conv (8) -> relu -> conv (6): filters 2 and 5 are the largest but their bias is -100, so
    after the Relu they are always 0 on inputs in [0, 1): only the data criterion sees it."""
    rng = np.random.default_rng(7)
    w = (0.2 * rng.standard_normal((8, 3, 3, 3))).astype(F32)
    b = rng.uniform(0.1, 0.5, 8).astype(F32)
    w[[2, 5]] *= 10
    b[[2, 5]] = -100
    inits = {"c1.w": w, "c1.b": b, "c2.w": (0.3 * rng.standard_normal((6, 8, 3, 3))).astype(F32)}
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "c2.w"], ["y"], name="c2", pads=[1] * 4)]
    model = make(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 6, 8, 8])])
    data = np.random.default_rng(8).uniform(0, 1, (24, 3, 8, 8)).astype(F32)
    return model, w, data


def test_criterion_data_removes_dead_channels_exactly():
    model, w, data = dead_net()
    calib = FeedSet({"x": data}, batch=1)
    run = Pipeline([Prune(round_to=1, ratio=0.25, criterion="data", recover=False)], calibration=calib).run(model)
    (report,) = run.report.passes
    assert report.status == "applied", report.message
    kept = numpy_helper.to_array(next(t for t in run.model.graph.initializer if t.name == "c1.w"))
    np.testing.assert_array_equal(kept, np.delete(w, [2, 5], axis=0))
    # dead channels carried nothing: the outputs do not move
    assert run.report.fidelity.max_abs <= 1e-5
    # l1 would have removed others
    out_l1, _ = prune(model, ratio=0.25, criterion="l1")
    assert numpy_helper.to_array(next(t for t in out_l1.graph.initializer if t.name == "c1.w")).shape == (6, 3, 3, 3)
    assert not np.array_equal(numpy_helper.to_array(next(t for t in out_l1.graph.initializer if t.name == "c1.w")),
                              kept)


def test_criterion_data_without_calibration_is_bad_data():
    with pytest.raises(BadData, match="calibration"):
        Pipeline([Prune(round_to=1, criterion="data")]).run(net())


def test_criterion_data_without_calibration_on_the_cli(capsys, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(net(), src)
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_cli(capsys, "run", src, "--passes", "prune:round-to=1,criterion=data", "-o", out)
    assert_one_line_error(code, stdout, stderr, 3, "calib")
    assert not out.exists()


def redundant_net():
    """conv (8) -> relu -> conv (6): filters 6 and 7 are filters 0 and 1 times 3, the loudest of
    all, so after the Relu channels 6 and 7 are 3x channels 0 and 1: either of each pair can go
    with nothing lost once the next conv is refit. Norms and output energy rank them highest."""
    rng = np.random.default_rng(11)
    w = (0.3 * rng.standard_normal((8, 3, 3, 3))).astype(F32)
    b = rng.uniform(0.0, 0.2, 8).astype(F32)
    w[6:], b[6:] = 3 * w[:2], 3 * b[:2]
    inits = {"c1.w": w, "c1.b": b, "c2.w": (0.3 * rng.standard_normal((6, 8, 3, 3))).astype(F32),
             "c2.b": np.zeros(6, F32)}
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "c2.w", "c2.b"], ["y"], name="c2", pads=[1] * 4)]
    model = make(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 6, 8, 8])])
    data = np.random.default_rng(12).standard_normal((40, 3, 8, 8)).astype(F32)
    return model, w, FeedSet({"x": data}, batch=1)


def _kept_filters(model, w) -> list[int]:
    kept = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "c1.w"))
    return [int(np.flatnonzero((w == k).all(axis=(1, 2, 3)))[0]) for k in kept]


def test_criterion_recon_removes_what_the_next_layer_can_rebuild():
    model, w, calib = redundant_net()
    runs = {c: Pipeline([Prune(round_to=1, ratio=0.25, criterion=c)], calibration=calib).run(model)
            for c in ("recon", "data")}
    kept = _kept_filters(runs["recon"].model, w)
    # one of each copied pair went: the refit next conv reads the other at its scale
    assert len(kept) == 6 and sum(i in kept for i in (0, 6)) == 1 and sum(i in kept for i in (1, 7)) == 1, kept
    recon, data = runs["recon"].report.fidelity, runs["data"].report.fidelity
    assert recon.max_abs < 1e-3 * data.max_abs and recon.cosine > 0.999999, (recon, data)
    # output energy kept a loud pair whole and lost a channel nothing else carries
    kept_by_data = set(_kept_filters(runs["data"].model, w))
    assert ({0, 6} <= kept_by_data or {1, 7} <= kept_by_data) and data.cosine < 0.999, (kept_by_data, data)


def twin_branch_net():
    """Two identical branches, conv (8) -> relu -> conv (4), added: the second branch's last conv is
    the first's x 0.01, so its channels weigh 1e-4 of the first's at the output while every layer
    loss (relative to the layer's own output) is the same in both."""
    rng = np.random.default_rng(21)
    w = (0.3 * rng.standard_normal((8, 3, 3, 3))).astype(F32)
    b = rng.uniform(0.0, 0.2, 8).astype(F32)
    v = (0.3 * rng.standard_normal((4, 8, 3, 3))).astype(F32)
    inits = {"a1.w": w, "a1.b": b, "a2.w": v, "b1.w": w.copy(), "b1.b": b.copy(), "b2.w": (0.01 * v).astype(F32)}
    nodes = []
    for k in ("a", "b"):
        nodes += [helper.make_node("Conv", ["x", f"{k}1.w", f"{k}1.b"], [f"{k}1"], name=f"{k}1", pads=[1] * 4),
                  helper.make_node("Relu", [f"{k}1"], [f"{k}r"]),
                  helper.make_node("Conv", [f"{k}r", f"{k}2.w"], [f"{k}2"], name=f"{k}2", pads=[1] * 4)]
    nodes.append(helper.make_node("Add", ["a2", "b2"], ["y"]))
    model = make(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    data = np.random.default_rng(22).standard_normal((40, 3, 8, 8)).astype(F32)
    return model, FeedSet({"x": data}, batch=1)


def test_criterion_recon_weighs_groups_by_what_the_output_feels():
    model, calib = twin_branch_net()
    run = Pipeline([Prune(round_to=1, ratio=0.25, criterion="recon", global_ranking=True)], calibration=calib).run(model)
    widths = {t.name: t.dims[0] for t in run.model.graph.initializer if t.name in ("a1.w", "b1.w")}
    # all four channels a global ranking removes come from the branch the output hardly reads; per-group
    # means (or layer losses alone) see two equal groups and split them
    assert widths == {"a1.w": 8, "b1.w": 4}, widths


def test_criterion_recon_reports_its_output_probes_as_progress():
    model, calib = twin_branch_net()
    seen = []
    Pipeline([Prune(round_to=1, ratio=0.25, criterion="recon", global_ranking=True)], calibration=calib,
             progress=lambda what, done, total: seen.append((what, done, total))).run(model)
    probes = [(done, total) for what, done, total in seen if what == "prune: output probes"]
    assert probes == [(0, 2), (1, 2), (2, 2)], seen  # one probe per group (the two branches), then done


def test_criterion_recon_without_calibration_is_bad_data():
    with pytest.raises(BadData, match="calibration"):
        Pipeline([Prune(round_to=1, criterion="recon")]).run(net())


# ---------------------------------------------------------------------------------------------
# recovery on the digits fixtures


def _cosine(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def digits():
    calib = np.load(models.FIXTURES / "digits_calib.npz")
    test = np.load(models.FIXTURES / "digits_test.npz")
    return calib["input"], test["input"][:100], test["labels"][:100]


@pytest.mark.parametrize("name,min_cosine,min_accuracy", [("digits_resnet", 0.95, 0.95),
                                                          ("digits_mobilenetv2", 0.94, 0.9)])
def test_recovery_restores_what_pruning_lost(digits, name, min_cosine, min_accuracy):
    calib, x_test, labels = digits
    model = onnx.load(models.fixture_path(name))
    out_name = model.graph.output[0].name
    feeds = [{"input": x_test[i:i + 1]} for i in range(len(x_test))]

    def logits(m):
        return np.concatenate([o[out_name] for o in run_model(m, feeds)])

    reference = logits(model)
    assert (reference.argmax(1) == labels).mean() >= 0.95
    results = {}
    for recover in (True, False):
        run = Pipeline.parse(f"fold-bn,prune:round-to=1,ratio=0.3,samples=128,recover={str(recover).lower()}",
                             calibration=FeedSet({"input": calib}, batch=1)).run(model)
        report = run.report.passes[1]
        assert report.status == "applied", report.message
        assert ("layers refit" in report.stats) == recover
        y = logits(run.model)
        results[recover] = (_cosine(reference, y), (y.argmax(1) == labels).mean(), run.report.after.params)
    (cos_rec, acc_rec, params_rec), (cos_raw, _, params_raw) = results[True], results[False]
    assert params_rec == params_raw < 0.7 * Pipeline.parse("fold-bn").run(model).report.after.params
    assert cos_rec > min_cosine
    assert cos_rec > cos_raw + 0.5
    assert acc_rec >= min_accuracy


def test_recovery_without_calibration_says_so():
    _, result = prune(net(), ratio=0.3)
    assert "no calibration data: layers were not refit (give --calib for recovery)" in result.notes


# ---------------------------------------------------------------------------------------------
# dry run and the report


@pytest.fixture(scope="module")
def dry_run():
    return Pipeline([Prune(round_to=1, ratio=0.3)], dry_run=True).run(net())


def test_dry_run_groups_table(dry_run):
    details = dry_run.report.passes[0].details
    rows = details["groups"]
    assert [(r["group"], r["channels"], r["kept"]) for r in rows] == [
        ("Conv 'stem'", 10, 7), ("Conv 'layer1.conv'", 16, 12), ("Conv 'layer2.conv'", 24, 17), ("Gemm 'fc1'", 32, 23)]
    # the share of all MACs spent in the layers producing or reading the group (by hand: stem 38880,
    # layer1 207360, layer2 124416, fc1 768, fc2 320 MACs)
    total = 38880 + 207360 + 124416 + 768 + 320
    expected = [(38880 + 207360) / total, (207360 + 124416) / total, (124416 + 768) / total, (768 + 320) / total]
    assert [r["mac_share"] for r in rows] == [round(e, 4) for e in expected]
    assert all(r["importance"]["min"] <= r["importance"]["median"] <= r["importance"]["max"] for r in rows)
    assert [r["readers"] for r in rows] == [["Conv 'layer1.conv'"], ["Conv 'layer2.conv'"], ["Gemm 'fc1'"],
                                            ["Gemm 'fc2'"]]


def test_dry_run_mac_shares_of_disjoint_groups_sum_below_one(dry_run):
    rows = {r["group"]: r["mac_share"] for r in dry_run.report.passes[0].details["groups"]}
    # stem and layer2.conv touch no layer in common: their shares are disjoint parts of the MACs
    assert rows["Conv 'stem'"] + rows["Conv 'layer2.conv'"] <= 1.0


def test_dry_run_sensitivity(dry_run):
    sens = dry_run.report.passes[0].details["sensitivity"]
    assert sens["ratios"] == [0.25, 0.5, 0.75]
    assert [r["group"] for r in sens["rows"]] == ["Conv 'stem'", "Conv 'layer1.conv'", "Conv 'layer2.conv'",
                                                  "Gemm 'fc1'"]
    for row in sens["rows"]:
        assert len(row["cosine"]) == 3
        assert all(c is not None and -1.0 <= c <= 1.0 for c in row["cosine"])
        assert row["cosine"][0] < 1.0  # pruning a quarter of random filters moves the outputs
    # the outputs vary over the samples: the scan measures what the input decides, and says so
    assert sens["measure"] == "centred output cosine"
    titles = [t["title"] for t in dry_run.report.passes[0].details["tables"]]
    assert titles[0] == "channel groups" and titles[1].startswith("sensitivity: centred output cosine")


def test_report_is_strict_json(dry_run):
    text = json.dumps(dry_run.report.as_dict(), allow_nan=False)
    data = json.loads(text)
    prune_report = data["passes"][0]
    assert prune_report["name"] == "prune" and prune_report["details"]["groups"][0]["channels"] == 10


def test_report_with_recovery_is_strict_json():
    calib = FeedSet({"x": np.random.default_rng(9).standard_normal((12, 3, 12, 12)).astype(F32)}, batch=1)
    run = Pipeline([Prune(round_to=1, ratio=0.3, criterion="data")], calibration=calib, dry_run=True).run(net())
    data = json.loads(json.dumps(run.report.as_dict(), allow_nan=False))
    details = data["passes"][0]["details"]
    assert len(details["recovery"]) >= 3 and {"layer", "choice"} <= set(details["recovery"][0])


# ---------------------------------------------------------------------------------------------
# CLI: bad calibration data, dynamic shapes


@pytest.fixture
def digits_model(tmp_path):
    src = tmp_path / "digits.onnx"
    src.write_bytes(models.fixture_path("digits_resnet").read_bytes())
    return src


def _calib_error(capsys, tmp_path, src, arrays, *words):
    data = tmp_path / "calib.npz"
    np.savez(data, **arrays)
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_cli(capsys, "run", src, "--passes", "prune:round-to=1,criterion=data", "--calib", data, "-o", out)
    line = assert_one_line_error(code, stdout, stderr, 3, *words)
    assert not out.exists()
    return line


def test_calibration_with_wrong_input_names(capsys, tmp_path, digits_model):
    x = np.zeros((4, 1, 32, 32), F32)
    _calib_error(capsys, tmp_path, digits_model, {"image": x, "mask": x}, "image", "input")


def test_calibration_with_wrong_shape(capsys, tmp_path, digits_model):
    _calib_error(capsys, tmp_path, digits_model, {"input": np.zeros((4, 3, 32, 32), F32)}, "shape", "input")


def test_calibration_with_wrong_rank(capsys, tmp_path, digits_model):
    _calib_error(capsys, tmp_path, digits_model, {"input": np.zeros((4, 32, 32), F32)}, "input")


def test_dynamic_input_needs_input_shape(capsys, tmp_path):
    model = net()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    src = tmp_path / "dyn.onnx"
    onnx.save(model, src)
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_cli(capsys, "run", src, "--passes", "prune", "-o", out)
    assert_one_line_error(code, stdout, stderr, 3, "--input-shape", "x")
    assert not out.exists()
    # with it, the run succeeds
    code, stdout, stderr = run_cli(capsys, "run", src, "--passes", "prune:round-to=1,ratio=0.5", "--input-shape", "x:1,3,12,12",
                                   "-o", out)
    assert code == 0, stderr
    assert widths(onnx.load(out)) == {"stem": 5, "layer1.conv": 8, "layer2.conv": 12, "fc1": 16}


def test_dry_run_on_the_cli_writes_nothing(capsys, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(net(), src)
    code, stdout, stderr = run_cli(capsys, "run", src, "--passes", "prune:round-to=1,ratio=0.3", "--dry-run")
    assert code == 0, stderr
    assert "dry run: no model written" in stdout and "sensitivity" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    code, stdout, stderr = run_cli(capsys, "run", src, "--passes", "prune", "--dry-run", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, stdout, stderr, 2, "--dry-run")
    assert not (tmp_path / "o.onnx").exists()


def test_dry_run_on_the_cli_keeps_the_report(capsys, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(net(), src)
    report = tmp_path / "report.json"
    code, stdout, stderr = run_cli(capsys, "run", src, "--passes", "prune:round-to=1,ratio=0.3", "--dry-run", "--report", report)
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "report.json"]
    data = json.loads(report.read_text())
    assert [r["kept"] for r in data["passes"][0]["details"]["groups"]] == [7, 12, 17, 23]


def test_round_to_auto_is_the_cpu_conv_block():
    """By default widths are rounded to onnxruntime's NCHWc block on this machine (8 or 16 on x86):
    digits_resnet's 16..64-wide groups keep multiples of it, and the details say which."""
    from onnxopt.runtime.sessions import nchwc_block

    model = onnx.load(models.fixture_path("digits_resnet"))
    run = Pipeline.parse("fold-bn,prune:ratio=0.5", verify=False).run(model)
    report = run.report.passes[1]
    block = nchwc_block()
    assert report.details["round_to"] == block
    rows = report.details["groups"]
    assert any(r["kept"] < r["channels"] for r in rows)
    for r in rows:
        assert r["kept"] == r["channels"] or r["kept"] % block == 0, r
        if r["channels"] < 2 * block:
            assert r["kept"] == r["channels"], r  # 50% of a group narrower than two blocks rounds back up
