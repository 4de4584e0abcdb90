"""simplify: onnxsim under onnxopt's verification."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passes import Simplify
from onnxopt.pipeline.run import Pipeline
from onnxopt.testing import apply, assert_exact, count_ops


def test_constant_subgraph_is_folded_and_exact():
    # y = x + (a * b): the Mul of two constants folds into one constant
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["x", "ab"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.full((2, 3), 2.0, np.float32), "a"),
         numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out, result = apply(Simplify(), model)
    assert result.changed and count_ops(out) == {"Add": 1}
    assert_exact(model, out)
    _, again = apply(Simplify(), out)
    assert not again.changed
    run = Pipeline([Simplify()]).run(model)
    assert run.report.passes[0].status == "applied" and run.report.fidelity.max_rel <= 1e-6


def test_keeps_batchnorm_for_fold_bn_by_default():
    from onnxopt import models
    model = models.build("resnet18-tiny")
    out, _ = apply(Simplify(), model)
    assert count_ops(out).get("BatchNormalization") == count_ops(model)["BatchNormalization"]
    assert onnx.checker.check_model(out, full_check=True) is None


def test_castlike_of_a_constant_becomes_a_folded_constant():
    # torch's dynamo exporter (optimize=False) builds a zero Conv bias at run time this way
    graph = helper.make_graph(
        [helper.make_node("CastLike", ["zero", "x"], ["z"]), helper.make_node("Add", ["x", "z"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(0.5, dtype=np.float64), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out, result = apply(Simplify(), model)
    assert result.stats["castlike_resolved"] == 1 and count_ops(out) == {"Add": 1}
    assert_exact(model, out)
