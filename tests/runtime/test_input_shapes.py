"""Inputs whose dims are dynamic in any of the ways exporters write them: a symbolic name, '?' (no
value), 0, -1 (PaddlePaddle), or no declared shape at all. `--input-shape` fixes any dynamic dim;
only a fixed positive dim that differs is an error, naming the input and the dim."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import BadData, DynamicShape
from onnxopt.pipeline.run import Pipeline
from onnxopt.runtime.sessions import input_specs, resolve_input_shapes
from onnxopt.testing import assert_one_line_error, run_cli

F32 = np.float32


def _model(dims) -> onnx.ModelProto:
    """Conv -> BatchNormalization (something for fold-bn) on an input declared with `dims`: a list of
    ints/str/None (None: a dim without value), or None for no shape at all."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(F32), "w"),
             *(numpy_helper.from_array(v, k) for k, v in {
                 "g": rng.uniform(0.5, 1.5, 4).astype(F32), "b": rng.standard_normal(4).astype(F32),
                 "m": rng.standard_normal(4).astype(F32), "v": rng.uniform(0.5, 1.5, 4).astype(F32)}.items())]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    if dims is not None:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [d if d is not None else "" for d in dims])
        for d, proto in zip(dims, x.type.tensor_type.shape.dim):
            if d is None:
                proto.Clear()  # a dim with neither value nor name: '?'
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


FORMS = {"paddle -1": [-1, 3, -1, -1], "zero": [0, 3, 0, 0], "question marks": [None, 3, None, None],
         "symbolic": ["batch", 3, "height", "width"]}


@pytest.mark.parametrize("form", FORMS)
def test_any_dynamic_dim_takes_input_shape_in_python(form):
    model = _model(FORMS[form])
    spec = input_specs(model)[0]
    assert spec.shape[1] == 3 and spec.shape[2] in (None, "height")
    assert resolve_input_shapes(model, {"x": (2, 3, 16, 20)}) == {"x": (2, 3, 16, 20)}
    run = Pipeline.parse("fold-bn", input_shapes={"x": (1, 3, 16, 20)}).run(model)
    assert run.report.passes[0].status == "applied" and run.report.fidelity.max_rel < 1e-5
    with pytest.raises(DynamicShape, match="--input-shape x:"):
        resolve_input_shapes(model)


@pytest.mark.parametrize("form", FORMS)
def test_any_dynamic_dim_takes_input_shape_on_the_cli(capsys, tmp_path, form):
    path, report = tmp_path / "m.onnx", tmp_path / "r.json"
    onnx.save(_model(FORMS[form]), path)
    code, out, err = run_cli(capsys, "run", path, "--passes", "fold-bn", "--input-shape", "x:1,3,48,192",
                             "-o", tmp_path / "o.onnx", "--report", report)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["input_shapes"] == {"x": [1, 3, 48, 192]} and doc["passes"][0]["status"] == "applied"
    assert doc["fidelity"]["max_rel"] < 1e-5
    out = onnx.load(str(tmp_path / "o.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert out[1].dim_value == 3 and not any(d.HasField("dim_value") and d.dim_value <= 0 for d in out)


def test_only_a_fixed_dim_that_differs_is_an_error(capsys, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model([-1, 3, -1, -1]), path)
    got = run_cli(capsys, "run", path, "--passes", "fold-bn", "--input-shape", "x:1,4,48,192", "-o", tmp_path / "o.onnx")
    assert_one_line_error(*got, 3, "--input-shape x: [1, 4, 48, 192] does not fit", "[?, 3, ?, ?]",
                          "dim 1 is fixed at 3, got 4")
    got = run_cli(capsys, "run", path, "--passes", "fold-bn", "--input-shape", "x:1,3,48", "-o", tmp_path / "o.onnx")
    assert_one_line_error(*got, 3, "does not fit", "3 dims given, the model declares 4")
    with pytest.raises(BadData, match="dim 1 is fixed at 3"):
        resolve_input_shapes(_model(["n", 3, "h", "w"]), {"x": (1, 1, 8, 8)})


def test_without_input_shape_the_error_names_the_flag(capsys, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model([-1, 3, -1, -1]), path)
    got = run_cli(capsys, "run", path, "--passes", "fold-bn", "-o", tmp_path / "o.onnx")
    assert_one_line_error(*got, 3, "input 'x' has dynamic dims [?, 3, ?, ?]", "--input-shape x:N,3,N,N")
    with pytest.raises(DynamicShape, match="input 'x' declares no shape; give one with --input-shape x:"):
        resolve_input_shapes(_model(None))
    assert resolve_input_shapes(_model(None), {"x": (1, 3, 8, 8)}) == {"x": (1, 3, 8, 8)}  # any rank


def test_inspect_shows_dynamic_dims(capsys, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model([-1, 3, -1, -1]), path)
    code, out, err = run_cli(capsys, "inspect", "--json", path)
    assert code == 0, err
    assert json.loads(out)["inputs"][0]["shape"] == ["?", 3, "?", "?"]
