"""cleanup: removes exactly what does not reach an output, keeps graph-output names, idempotent."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passes import Cleanup
from onnxopt.testing import apply, assert_exact, count_ops


def make(nodes, inits=None, inputs=(("x", [1, 4]),), outputs=(("y", [1, 4]),)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_removes_dead_chain_identity_dropout_unused_constants_and_inputs():
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Dropout", ["i"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"]),
             helper.make_node("Neg", ["x"], ["dead1"]),           # dead chain of two
             helper.make_node("Mul", ["dead1", "k"], ["dead2"])]
    model = make(nodes, {"k": np.ones(4), "unused": np.zeros(3)},
                 inputs=(("x", [1, 4]), ("spare", [1, 4])))
    out, result = apply(Cleanup(), model)
    assert count_ops(out) == {"Relu": 1}
    assert result.stats == {"identity_removed": 1, "dropout_removed": 1, "dead_nodes_removed": 2,
                            "constants_removed": 2, "inputs_removed": 1}
    assert [i.name for i in out.graph.input] == ["x"] and not out.graph.initializer
    assert out.graph.output[0].name == "y"
    onnx.checker.check_model(out, full_check=True)
    _, second = apply(Cleanup(), out)
    assert not second.changed


def test_identity_that_names_a_graph_output_stays_when_it_must():
    # x -> Identity -> y: removing it would make the graph input itself the output; kept.
    model = make([helper.make_node("Identity", ["x"], ["y"])])
    out, result = apply(Cleanup(), model)
    assert not result.changed and out is model


def test_identity_before_graph_output_is_removed_by_renaming_the_producer():
    model = make([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])])
    out, result = apply(Cleanup(), model)
    assert count_ops(out) == {"Relu": 1} and out.graph.node[0].output[0] == "y"
    assert_exact(model, out)


def test_dropout_in_training_mode_or_with_used_mask_is_kept():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["y"])]
    model = make([helper.make_node("Relu", ["x"], ["y"])], {"ratio": np.array(0.5)})
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "train"))
    model.graph.node[0].CopyFrom(nodes[0])
    onnx.checker.check_model(model, full_check=True)
    out, result = apply(Cleanup(), model)
    assert "Dropout" in count_ops(out)
    nodes = [helper.make_node("Dropout", ["x"], ["y", "mask"])]
    model = make(nodes, outputs=(("y", [1, 4]),))
    model.graph.output.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 4]))
    out, result = apply(Cleanup(), model)
    assert "Dropout" in count_ops(out)


def test_inputs_option_keeps_unused_inputs():
    model = make([helper.make_node("Relu", ["x"], ["y"])], inputs=(("x", [1, 4]), ("spare", [1, 4])))
    out, result = apply(Cleanup(inputs=False), model)
    assert not result.changed and len(out.graph.input) == 2


@pytest.mark.parametrize("name", ["resnet18-tiny", "mobilenetv2-tiny"])
def test_zoo_models_are_already_clean(name):
    from onnxopt import models
    model = models.build(name)
    _, result = apply(Cleanup(), model)
    assert not result.changed, result.stats
