"""A third-party model as its exporter wrote it (models/fixtures/ppocrv5_cls.onnx: PP-OCR's text-line
orientation classifier from paddle2onnx, dynamic [N, 3, H, W] input, BN kept, hard-swish as
Add/Clip/Div/Mul): every pass runs on it from the command line, exact ones within their tolerance."""
from __future__ import annotations

import json

import onnx
import pytest

from onnxopt import models
from onnxopt.testing import assert_one_line_error, count_ops, run_cli

MODEL = models.fixture_path("ppocrv5_cls")
SHAPE = ("--input-shape", "x:1,3,48,192")


def _run(capsys, tmp_path, spec, *extra):
    report = tmp_path / "r.json"
    code, out, err = run_cli(capsys, "run", MODEL, "--passes", spec, *SHAPE, *extra, "-o", tmp_path / "o.onnx",
                             "--report", report)
    assert code == 0, err
    return json.loads(report.read_text()), onnx.load(str(tmp_path / "o.onnx"))


def test_the_fixture_is_what_the_exporter_wrote():
    model = onnx.load(str(MODEL))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value if d.HasField("dim_value") else "?" for d in dims] == ["?", 3, "?", "?"]
    assert count_ops(model)["BatchNormalization"] == 35
    assert (MODEL.parent / "ppocrv5_cls.LICENSE").read_text().lstrip().startswith("Apache License")


def test_its_dynamic_dims_ask_for_input_shape(capsys, tmp_path):
    got = run_cli(capsys, "run", MODEL, "--passes", "fold-bn", "-o", tmp_path / "o.onnx")
    assert_one_line_error(*got, 3, "input 'x' has dynamic dims [?, 3, ?, ?]", "--input-shape x:N,3,N,N")


def test_exact_passes_apply_within_their_tolerance(capsys, tmp_path):
    doc, out = _run(capsys, tmp_path, "fold-bn,reparam,cleanup")
    fold, reparam, _ = doc["passes"]
    assert fold["status"] == "applied" and fold["stats"]["bn_folded"] == 35
    assert reparam["status"] == "applied"
    for p in (fold, reparam):
        assert p["fidelity"]["max_rel"] <= p["tolerance"] == doc["verification"]["rtol"]  # its floor was not needed
    assert "BatchNormalization" not in count_ops(out)
    assert doc["fidelity"]["max_rel"] < 1e-5


@pytest.mark.parametrize("spec, what", [("fold-bn,prune:ratio=0.3", "prune"), ("fold-bn,quantize:speed=false", "quantize")])
def test_lossy_passes_run_and_report_as_deployed(capsys, tmp_path, spec, what):
    doc, out = _run(capsys, tmp_path, spec, "--calib", "random")
    p = doc["passes"][-1]
    assert p["name"] == what and p["status"] == "applied", p["message"]
    assert doc["fidelity_measured"].startswith("as deployed") and doc["fidelity"]["cosine"] > 0.9
    if what == "prune":
        assert doc["after"]["params"] < 0.8 * doc["before"]["params"]
    else:
        assert p["details"]["fusion"]["integer_ops"]
        # every op onnxruntime leaves in float between Q/DQ (hard-swish's Add/Clip/Div) is named in the report
        islands = {i["name"] or i["op"] for i in p["details"]["fusion"]["float_islands"]}
        assert islands <= {s["where"] for s in p["skipped"] if "runs in float in onnxruntime" in s["reason"]}
