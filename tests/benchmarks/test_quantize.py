"""benchmarks/quantize.py: its pure helpers, and its quick path on the smallest models (seconds)."""
from __future__ import annotations

import numpy as np
import pytest

from onnxopt.models import build
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes
from onnxopt.testing import load_benchmark

qz = load_benchmark("quantize")


def test_specs_reparameterize_repvgg_only():
    assert qz.float_spec("resnet18") == "fold-bn"
    assert qz.float_spec("repvgg_a0") == qz.float_spec("digits_repvgg") == "fold-bn,reparam"
    assert qz.quantize_spec("mobilenetv2") == "fold-bn,quantize"
    assert qz.quantize_spec("repvgg_a0-tiny", "cle=true,bias-correction=true") == \
        "fold-bn,reparam,quantize:cle=true,bias-correction=true"


def test_every_variant_spec_parses():
    from onnxopt.pipeline.spec import parse_spec

    for _, options in (*qz.B_VARIANTS, *qz.PER_TENSOR_VARIANTS, *qz.D_VARIANTS):
        passes = parse_spec(qz.quantize_spec("digits_mobilenetv2", options))
        assert [p.name for p in passes] == ["fold-bn", "quantize"]
    assert set(qz.B_VARIANTS_QUICK) <= set(qz.B_VARIANTS)
    assert qz.b_variants("digits_resnet", False) == qz.b_variants("digits_resnet", True) == qz.B_VARIANTS[:1]
    assert qz.b_variants("digits_mobilenetv2", False) == qz.B_VARIANTS + qz.PER_TENSOR_VARIANTS
    for name in qz.B_VARIANTS_BY_MODEL:
        assert qz.b_variants(name, True)[0] == qz.B_VARIANTS[0]  # the defaults always come first


def test_feed_stream_is_one_shot_seeded_and_lazy():
    model = build("mobilenetv2-tiny")
    stream = qz.feed_stream(model, 3, seed=7)
    assert iter(stream) is stream  # a generator: the pass must treat it as read-once
    feeds = list(stream)
    again = list(qz.feed_stream(model, 3, seed=7))
    assert len(feeds) == 3 and list(stream) == []
    shape = resolve_input_shapes(model)["input"]
    assert all(f["input"].shape == shape and f["input"].dtype == np.float32 for f in feeds)
    assert all(np.array_equal(a["input"], b["input"]) for a, b in zip(feeds, again))
    assert not np.array_equal(feeds[0]["input"], feeds[1]["input"])


def test_growth_is_judged_on_the_last_segment():
    # a reserve bounded by a sample count grows, then saturates: flat
    bounded = [{"samples": 32, "added_mb": 220.0}, {"samples": 128, "added_mb": 240.0},
               {"samples": 512, "added_mb": 241.0}]
    g = qz.growth(bounded)
    assert g["flat"] and g["first_to_last_mb"] == pytest.approx(21.0)
    assert g["last_segment_mb_per_100"] == pytest.approx(100 / 384)
    unbounded = [{"samples": 32, "added_mb": 130.0}, {"samples": 512, "added_mb": 193.0}]
    assert qz.growth(unbounded)["flat"] is False
    # a failed point is left out; one point is not enough to judge
    assert qz.growth([bounded[0], {"samples": 128, "error": "x"}])["flat"] is None


def _row(ratio: float, round_ratio: float | None = None, interval=None) -> dict:
    r = ratio if round_ratio is None else round_ratio
    return {"ratio_of_medians": ratio, "median_round_ratio": r, "interval": interval or [r - 0.005, r + 0.005]}


def test_beats_needs_more_than_the_noise_floor():
    aa = _row(1.004)
    assert qz.beats(_row(0.45), _row(0.49), aa)
    assert not qz.beats(_row(0.485), _row(0.49), aa)  # 1%: below MIN_FLOOR
    assert not qz.beats(_row(0.45), _row(0.49), _row(1.10))  # a 10% A/A control: nothing under 10% counts
    # one ratio agreeing is not enough
    assert not qz.beats(_row(0.45, 0.489), _row(0.49), aa)
    # nor is a wide interval reaching the other's median
    assert not qz.beats(_row(0.45, interval=[0.40, 0.50]), _row(0.49), aa)


def test_a_same_graph_control_raises_the_floor():
    rows = {"onnxopt quantize": {**_row(0.50), "nodes": 80}, "onnxopt twin": {**_row(0.48), "nodes": 80},
            "other": {**_row(0.47), "nodes": 81}}
    twin = qz.same_graph_floor(rows, "onnxopt quantize", "onnxopt twin")
    assert twin == pytest.approx(0.04)
    assert qz.same_graph_floor(rows, "onnxopt quantize", "other") is None  # not the same graph
    assert qz.same_graph_floor(rows, "onnxopt quantize", "missing") is None
    assert qz.beats(_row(0.45), _row(0.48), _row(1.0))
    assert not qz.beats(_row(0.45), _row(0.48), _row(1.0), twin * 2)


def test_best_row_takes_the_lowest_round_ratio_among_those_measured():
    rows = {"a": _row(0.5, 0.52), "b": _row(0.51, 0.49), "c": _row(0.3)}
    assert qz.best_row(rows, ["a", "b", "missing"]) == "b"
    assert qz.best_row(rows, ["missing"]) is None


def test_na_and_top1():
    assert qz.na("ValueError: boom") == "n/a (ValueError: boom)"
    out = [{"logits": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])}]
    assert qz.top1(out, np.array([1, 0, 0])) == pytest.approx(2 / 3)


def test_onnxopt_runs_and_failures_become_rows():
    model = build("resnet18-tiny")
    calib = random_feeds(model, resolve_input_shapes(model), seed=100, count=4)
    ok = qz.attempt("onnxopt", lambda: qz.run_onnxopt(model, qz.quantize_spec("resnet18", "speed=false"), calib))
    assert ok["status"] == "ok" and ok["fusion"]["float_islands"] == 0 and ok["fusion"]["integer_ops"] > 0
    assert ok["calibration"]["batches"] == 4 and "model" not in qz.public(ok)

    def boom():
        raise RuntimeError("not implemented yet\nsecond line")

    bad = qz.attempt("broken", boom)
    assert bad["status"] == "failed" and bad["error"] == "RuntimeError: not implemented yet"
    # no calibration sample: a failed row, never a float model shown as quantized
    empty = qz.attempt("empty", lambda: qz.run_onnxopt(model, qz.quantize_spec("resnet18"), []))
    assert empty["status"] == "failed" and "calibration" in empty["error"]


def test_section_a_quick_on_one_model_renders(monkeypatch):
    monkeypatch.setattr(qz, "budgets", lambda name, quick: {1: 0.1, 2: 0.1})
    m = qz.section_a_model("vgg16_bn", quick=True)
    assert m["model"] == "vgg16_bn-tiny" and m["labels"][:2] == [qz.FP32, qz.AA]
    for t in qz.THREADS:
        rows = m["bench"][str(t)]["rows"]
        assert {qz.ONNXOPT, qz.ONNXOPT_ALL, qz.ORT_U8S8, qz.ORT_DEFAULT} <= set(rows)
        assert rows[qz.FP32]["ratio_of_medians"] == 1.0
    assert m["fidelity"][qz.AA]["cosine"] == pytest.approx(1.0)
    assert 0.9 < m["fidelity"][qz.ONNXOPT_ALL]["cosine"] < 1.0  # int8 everywhere, whatever this CPU
    assert 0.9 < m["fidelity"][qz.ONNXOPT]["cosine"] <= 1.0     # where int8 does not pay here: the float model
    text = "\n".join(qz.markdown_a([m, {"model": "resnet50-tiny", "error": "RuntimeError: x"}]))
    assert "vgg16_bn-tiny | onnxopt quantize |" in text and "resnet50-tiny: failed" in text
    d = qz.section_d([m])
    assert "error" in d  # no MobileNetV2 among them


def test_section_b_rows_report_errors_instead_of_raising():
    b = qz.section_b_model("digits_repvgg", [("defaults", ""), ("bad", "method=nonsense")])
    labels = [r["label"] for r in b["rows"]]
    assert labels[:3] == [qz.FP32, qz.ONNXOPT, qz.ORT_U8S8]
    ok = {r["label"]: r for r in b["rows"]}
    assert ok[qz.ONNXOPT]["accuracy"] > 0.9 and ok[qz.ORT_U8S8]["accuracy"] > 0.9
    assert ok[f"{qz.ONNXOPT} bad"]["status"] == "failed"
    text = "\n".join(qz.markdown_b({"models": [b]}))
    assert "| digits_repvgg | onnxopt quantize bad | n/a (" in text


def test_memory_point_in_a_fresh_process():
    p = qz.memory_point("onnxopt", "mobilenetv2-tiny", 4)
    assert "error" not in p, p.get("error")
    assert p["calibrated"] == 4 and p["peak_mb"] >= p["before_mb"] > 0 and p["added_mb"] >= 0
    bad = qz.memory_point("onnxopt", "no-such-model", 4)
    assert bad["error"].startswith("exit ")
