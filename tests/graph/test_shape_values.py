"""Reshape targets computed at run time from shapes the inputs fix: followed where ONNX's own data
propagation stops (paddle2onnx's Shape -> Cast(int32) -> Slice -> Cast(int64) -> Concat)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analysis.cost import model_stats
from onnxopt.graph.core import Graph
from onnxopt.graph.shape_values import shape_values
from onnxopt.runtime.sessions import run_model


def _paddle_like_head(batch_dim: str | int = "p2o.DynamicDimension.0") -> onnx.ModelProto:
    """x [N, 8, 4, 4] -> GlobalAveragePool -> Reshape to [N, -1] built from Shape at run time -> MatMul [8, 3]."""
    inits = [numpy_helper.from_array(np.array([0], np.int64), "starts"),
             numpy_helper.from_array(np.array([1], np.int64), "ends"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(8, 3) / 24, "w")]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Shape", ["g"], ["shape"]),
             helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),
             helper.make_node("Slice", ["shape32", "starts", "ends"], ["batch32"]),
             helper.make_node("Cast", ["batch32"], ["batch"], to=TensorProto.INT64),
             helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["g", "target"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_onnx_inference_alone_leaves_the_reshape_unknown():
    # what the resolution below is for: were ONNX to follow it, this test would say so
    model = _paddle_like_head(2)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    flat = next((vi for vi in inferred.graph.value_info if vi.name == "flat"), None)
    tt = flat.type.tensor_type if flat is not None else None
    assert tt is None or not tt.HasField("shape") or any(not d.HasField("dim_value") for d in tt.shape.dim)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_reshape_target_built_from_shapes_is_followed(batch):
    model = _paddle_like_head()
    graph = Graph(model, input_shapes={"x": (batch, 8, 4, 4)})
    assert graph.static_shape("flat") == (batch, 8)
    assert graph.static_shape("y") == (batch, 3)
    # as onnxruntime runs it
    x = np.random.default_rng(0).standard_normal((batch, 8, 4, 4)).astype(np.float32)
    assert run_model(model, [{"x": x}])[0]["y"].shape == (batch, 3)
    # and MACs, which needed that shape: batch x 8 x 3 for the MatMul (GlobalAveragePool counts none)
    assert model_stats(model, {"x": (batch, 8, 4, 4)}).macs == batch * 8 * 3


def test_shape_values_follow_cast_slice_concat_gather_and_arithmetic():
    inits = [numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array(2, np.int64), "two")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["c"], axis=0),
             helper.make_node("Mul", ["c", "two"], ["c2"]),
             helper.make_node("Div", ["c2", "two"], ["c3"]),
             helper.make_node("Unsqueeze", ["two", "one_axis"], ["u"]),
             helper.make_node("Concat", ["c3", "u"], ["out"], axis=0)]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "one_axis"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 7])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    values = shape_values(model, {"x": (5, 7)})
    assert values["out"].tolist() == [7, 2]
    # a dim that is not static is not guessed
    assert "out" not in shape_values(model, {"x": (5, None)})


def test_a_target_built_from_a_resolved_reshape_is_followed_in_the_next_round():
    model = _paddle_like_head()
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array([2], np.int64), "two"),
                          numpy_helper.from_array(np.array([0], np.int64), "zero")])
    g.node.extend([helper.make_node("Shape", ["flat"], ["flat_shape"]),  # known only once "flat" is
                   helper.make_node("Slice", ["flat_shape", "starts", "ends"], ["n"]),
                   helper.make_node("Concat", ["n", "two", "minus_one"], ["target2"], axis=0),
                   helper.make_node("Reshape", ["flat", "target2"], ["pairs"]),
                   helper.make_node("Div", ["two", "zero"], ["nonsense"])])
    g.output.append(helper.make_tensor_value_info("pairs", TensorProto.FLOAT, None))
    graph = Graph(model, input_shapes={"x": (3, 8, 4, 4)})
    assert graph.static_shape("pairs") == (3, 2, 4)
    assert "nonsense" not in shape_values(model, {"x": (3, 8, 4, 4)})  # a division by zero is not a value
