"""Models whose inputs are not all batches of samples along a first axis, as voice-activity and
other recurrent models have them (silero-vad: audio [batch, 512], state [2, batch, 128], a scalar
sample rate): data files give such inputs whole per batch, their shapes fill the model's dynamic
dims, and a model that onnxruntime cannot run on seeded random inputs gets a one-line error that
names --calib instead of a traceback."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data.files import load_feeds, random_calibration
from onnxopt.errors import BadData
from onnxopt.pipeline.run import Pipeline
from onnxopt.runtime.sessions import run_model
from onnxopt.testing import assert_one_line_error, run_cli

F32 = np.float32
SAMPLES = 6


def _vad_like() -> onnx.ModelProto:
    """x [batch, 8] -> Reshape to [-1, sr / 2000] (valid only for sr = 16000, as silero-vad's
    branches are for 8000/16000) -> MatMul + the state's first slice -> Sigmoid; the new state is
    the state plus the projection. An Identity gives cleanup something to do."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(F32), "w"),
             numpy_helper.from_array(np.array(2000, np.int64), "k"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array(0, np.int64), "zero")]
    nodes = [helper.make_node("Div", ["sr", "k"], ["cols"]),
             helper.make_node("Unsqueeze", ["cols", "axis0"], ["cols1"]),
             helper.make_node("Concat", ["minus_one", "cols1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["x2"], allowzero=1),
             helper.make_node("Identity", ["x2"], ["x3"]),
             helper.make_node("MatMul", ["x3", "w"], ["h"]),
             helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
             helper.make_node("Add", ["h", "s0"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["prob"]),
             helper.make_node("Add", ["state", "h"], ["new_state"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    outputs = [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 4]),
               helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, "batch", 4])]
    graph = helper.make_graph(nodes, "vad", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _data(tmp_path, batch: int = 1, samples: int = SAMPLES):
    """x by sample; state and sr whole per batch (one more axis than the input)."""
    rng = np.random.default_rng(1)
    runs = samples // batch
    path = tmp_path / "vad.npz"
    np.savez(path, x=rng.standard_normal((samples, 8)).astype(F32),
             state=rng.standard_normal((runs, 2, batch, 4)).astype(F32), sr=np.full(runs, 16000, np.int64))
    return path


def test_whole_arrays_go_one_row_per_batch(tmp_path):
    model = _vad_like()
    feeds = load_feeds(_data(tmp_path), model)
    assert feeds.whole == {"state", "sr"} and len(feeds) == SAMPLES and feeds.samples == SAMPLES
    raw = np.load(tmp_path / "vad.npz")
    batches = list(feeds)
    assert [b["x"].shape for b in batches] == [(1, 8)] * SAMPLES
    assert [b["state"].shape for b in batches] == [(2, 1, 4)] * SAMPLES
    assert [b["sr"].shape for b in batches] == [()] * SAMPLES and int(batches[0]["sr"]) == 16000
    assert np.array_equal(batches[4]["state"], raw["state"][4]) and np.array_equal(batches[4]["x"], raw["x"][4:5])
    tail = feeds.tail(2)
    assert np.array_equal(tail[1]["state"], raw["state"][5]) and np.array_equal(tail[0]["x"], raw["x"][4:5])
    outs = run_model(model, batches[:1])[0]
    assert outs["prob"].shape == (1, 4) and outs["new_state"].shape == (2, 1, 4)


def test_whole_arrays_must_agree_with_the_sample_count(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((6, 8), F32), state=np.zeros((5, 2, 1, 4), F32), sr=np.full(6, 16000, np.int64))
    with pytest.raises(BadData, match=r"different numbers of samples \[5, 6\]") as err:
        load_feeds(path, _vad_like())
    assert "\n" not in str(err.value)


def test_a_scalar_given_as_one_value_is_refused_with_the_form_it_needs(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((6, 8), F32), state=np.zeros((6, 2, 1, 4), F32), sr=np.array(16000, np.int64))
    with pytest.raises(BadData, match=r"'sr' is a single value.*shape \[samples\]"):
        load_feeds(path, _vad_like())


def test_random_calibration_stacks_every_input_whole():
    """Seeded random inputs for a model whose state has its batch on axis 1 and whose sample rate
    is a scalar: each sample is one whole feed of the declared shapes."""
    feeds = random_calibration(_vad_like(), {"x": (1, 8), "state": (2, 1, 4), "sr": ()}, samples=3)
    got = list(feeds)
    assert len(got) == 3
    assert [(f["x"].shape, f["state"].shape, f["sr"].shape) for f in got] == [((1, 8), (2, 1, 4), ())] * 3
    assert not np.array_equal(got[0]["state"], got[1]["state"])


def test_calibration_shapes_fill_dynamic_dims_and_exact_passes_verify(tmp_path):
    """No --input-shape: the first calibration sample fixes `batch`, verification runs on the real
    samples (sr = 16000), cleanup removes the Identity with outputs unchanged."""
    model = _vad_like()
    run = Pipeline.parse("cleanup", calibration=load_feeds(_data(tmp_path), model)).run(model)
    report = run.report
    assert report.passes[0].status == "applied", report.passes[0]
    assert "Identity" not in {n.op_type for n in run.model.graph.node}
    assert report.fidelity.max_rel == 0.0
    assert report.input_shapes == {"x": (1, 8), "state": (2, 1, 4), "sr": ()}


def test_on_the_cli_with_batch_two(capsys, tmp_path):
    model_path, out, report = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(_vad_like(), model_path)
    code, _, err = run_cli(capsys, "run", model_path, "--passes", "cleanup", "--calib", _data(tmp_path, batch=2),
                           "--input-shape", "x:2,8", "--input-shape", "state:2,2,4", "-o", out, "--report", report)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["passes"][0]["status"] == "applied" and doc["fidelity"]["max_rel"] == 0.0
    assert doc["input_shapes"]["state"] == [2, 2, 4]


def test_a_model_onnxruntime_cannot_run_on_random_inputs_names_calib(capsys, tmp_path):
    """Seeded random sr (0..3) makes the Reshape impossible: one line, exit 3, the way out named;
    nothing written."""
    model_path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(_vad_like(), model_path)
    got = run_cli(capsys, "run", model_path, "--passes", "cleanup", "--input-shape", "x:1,8",
                  "--input-shape", "state:2,1,4", "-o", out)
    assert_one_line_error(*got, 3, "onnxruntime cannot run the input model on", "--calib DATA", "--no-verify")
    assert not out.exists()
    code, _, err = run_cli(capsys, "run", model_path, "--passes", "cleanup", "--input-shape", "x:1,8",
                           "--input-shape", "state:2,1,4", "--no-verify", "-o", out)
    assert code == 0, err


def test_bench_runs_whole_data_at_its_own_batch_only(capsys, tmp_path):
    model_path, report = tmp_path / "m.onnx", tmp_path / "b.json"
    onnx.save(_vad_like(), model_path)
    data = _data(tmp_path)
    code, out, err = run_cli(capsys, "bench", model_path, model_path, "--data", data, "--rounds", "5",
                             "--budget", "1", "--warmup", "1", "--session-sets", "1", "--no-memory", "--json", report)
    assert code == 0, err
    assert "inputs x 1x8, state 2x1x4, sr scalar" in out
    doc = json.loads(report.read_text())
    assert doc["inputs"] == {"x": [1, 8], "state": [2, 1, 4], "sr": []} and doc["fidelity_samples"] == SAMPLES
    assert doc["models"][1]["fidelity_vs_reference"]["outputs"]["new_state"]["max_rel"] == 0.0
    got = run_cli(capsys, "bench", model_path, "--data", data, "--batch", "4", "--rounds", "5")
    assert_one_line_error(*got, 2, "--batch", "sr, state whole per run", "batch 1 only")


def _if_model() -> onnx.ModelProto:
    """silero-vad's shape of graph: everything inside one If on the sample rate, a Conv per branch."""
    rng = np.random.default_rng(2)

    def branch(name: str) -> onnx.GraphProto:
        w = numpy_helper.from_array(rng.standard_normal((4, 1, 3)).astype(F32), f"w_{name}")
        out = helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None)
        return helper.make_graph([helper.make_node("Conv", ["x", f"w_{name}"], [f"y_{name}"], pads=[1, 1])],
                                 name, [], [out], [w])
    nodes = [helper.make_node("Equal", ["sr", "k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], then_branch=branch("k16"), else_branch=branch("k8"))]
    graph = helper.make_graph(nodes, "vad-if", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32])],
        [numpy_helper.from_array(np.array(16000, np.int64), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_quantize_says_which_ops_control_flow_hides(tmp_path):
    from onnxopt.graph.core import Graph
    model = _if_model()
    assert Graph(model).nested_ops() == {"Conv": 2}
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(3).standard_normal((40, 1, 1, 32)).astype(F32)[:, 0],
             sr=np.full(40, 16000, np.int64))
    run = Pipeline.parse("quantize", calibration=load_feeds(path, model)).run(model)
    q = run.report.passes[0]
    assert q.status == "unchanged"
    assert any(n.startswith("2 Conv inside If/Loop/Scan bodies stay float") for n in q.notes), q.notes
