"""Calibration/evaluation data: formats, batching, checks against the model, and the plumbing
from --calib to a pass that needs data."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from onnxopt import models
from onnxopt.cli import main
from onnxopt.data.files import load_feeds
from onnxopt.errors import BadData
from onnxopt.pipeline.contract import Pass, PassResult
from onnxopt.pipeline.run import Pipeline

MODEL = models.build("resnet18-tiny")  # input "input" [1, 3, 32, 32]


def images(n, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(dtype)


def test_npz_keyed_by_input_name_with_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, input=images(5), labels=np.arange(5))
    feeds = load_feeds(path, MODEL)
    assert len(feeds) == 5 and feeds.labels.tolist() == [0, 1, 2, 3, 4]
    batches = list(feeds)
    assert [b["input"].shape for b in batches] == [(1, 3, 32, 32)] * 5
    assert np.array_equal(batches[3]["input"][0], images(5)[3])
    assert len(list(feeds)) == 5  # re-iterable


def test_npy_and_folder_and_float64_are_accepted(tmp_path):
    np.save(tmp_path / "a.npy", images(2, np.float64))
    np.save(tmp_path / "b.npy", images(3))
    assert len(load_feeds(tmp_path / "a.npy", MODEL)) == 2
    folder = load_feeds(tmp_path, MODEL)
    assert len(folder) == 5 and next(iter(folder))["input"].dtype == np.float32


@pytest.mark.parametrize("arrays,words", [
    ({"input": np.zeros((2, 3, 16, 16), np.float32)}, "shape"),
    ({"input": np.zeros((2, 3, 32, 32), np.int64)}, "dtype"),
    ({"x": np.zeros((2, 3, 32, 32), np.float32), "y": np.zeros((2, 3, 32, 32), np.float32)}, "inputs"),
    ({"input": np.zeros((2, 3, 32, 32), np.float32), "labels": np.zeros(3)}, "labels"),
])
def test_mismatched_data_is_refused_in_one_line(tmp_path, arrays, words):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(BadData, match=words) as err:
        load_feeds(path, MODEL)
    assert "\n" not in str(err.value)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BadData, match="cannot read"):
        load_feeds(tmp_path / "bad.npz", MODEL)
    with pytest.raises(BadData, match="no such"):
        load_feeds(tmp_path / "none.npz", MODEL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadData, match="no .npy or .npz"):
        load_feeds(tmp_path / "empty", MODEL)


class CountSamples(Pass):
    """A data-hungry pass that records how many batches it saw (twice, to prove re-iteration)."""

    name = "count-samples"
    needs_data = True

    @dataclasses.dataclass(frozen=True)
    class Options:
        pass

    seen: list = []

    def run(self, graph, ctx):
        CountSamples.seen.append((sum(1 for _ in ctx.calibration), sum(1 for _ in ctx.calibration)))
        return PassResult()


def test_pass_that_needs_data_refuses_to_run_without_it():
    with pytest.raises(BadData, match="count-samples needs calibration data"):
        Pipeline([CountSamples()]).run(MODEL)


def test_calib_flag_reaches_the_pass(tmp_path, capsys, monkeypatch):
    from onnxopt.pipeline import registry

    monkeypatch.setitem(registry._REGISTRY, "count-samples", CountSamples)
    model_path, data_path = tmp_path / "m.onnx", tmp_path / "d.npz"
    model_path.write_bytes(MODEL.SerializeToString())
    np.savez(data_path, input=images(7))
    CountSamples.seen.clear()
    with pytest.raises(SystemExit) as code:
        main(["run", str(model_path), "--passes", "count-samples", "--calib", str(data_path), "-o",
              str(tmp_path / "o.onnx")])
    assert code.value.code == 0 and CountSamples.seen == [(7, 7)]
    with pytest.raises(SystemExit) as code:
        main(["run", str(model_path), "--passes", "count-samples", "-o", str(tmp_path / "o2.onnx")])
    assert code.value.code == 3 and "--calib" in capsys.readouterr().err
    assert not (tmp_path / "o2.onnx").exists()


@pytest.mark.parametrize("labels, ok", [
    (np.array([0, 1, 2, 1]), True),
    (np.array([[0], [1], [2], [1]]), True),           # [N, 1]
    (np.array([0.0, 1.0, 2.0, 1.0]), True),           # whole numbers stored as floats
    (np.eye(3)[[0, 1, 2, 1]], False),                 # one-hot
    (np.array([0.5, 1.0, 2.0, 1.0]), False),          # fractional
])
def test_labels_must_be_class_indices(tmp_path, labels, ok):
    from onnxopt.data.files import load_feeds
    from onnxopt.errors import BadData
    from onnxopt.models import build

    model = build("resnet18-tiny")
    path = tmp_path / "d.npz"
    np.savez(path, input=np.zeros((4, 3, 32, 32), np.float32), labels=labels)
    if ok:
        got = load_feeds(path, model).labels
        assert got.dtype == np.int64 and got.tolist() == [0, 1, 2, 1]
    else:
        with pytest.raises(BadData, match="labels` must be integer class indices of shape \\[N\\]"):
            load_feeds(path, model)
