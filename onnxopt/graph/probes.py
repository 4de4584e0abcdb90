"""Models built to ask onnxruntime something: a model with intermediate tensors exposed as outputs
(calibration and bias correction read them), and tiny models that probe a CPU's kernels."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


def with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs `tensors` (graph inputs and declared outputs are left as
    they are): one session then yields every intermediate value a pass wants to see."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    for t in dict.fromkeys(tensors):
        if t not in present:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    return probe


def conv_pair(channels: int) -> onnx.ModelProto:
    """Two 1x1 Convs of `channels` channels on a 4x4 input: what onnxruntime's NCHWc layout
    transformer takes or leaves tells the channel block of its Conv kernels on this CPU."""
    w = [numpy_helper.from_array(np.zeros((channels, channels, 1, 1), np.float32), f"w{i}") for i in range(2)]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w0"], ["y"]), helper.make_node("Conv", ["y", "w1"], ["z"])],
        "probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)], w)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def single_node(op: str, x_shape: Sequence[int], initializers: dict[str, np.ndarray] | None = None, *,
                attrs: dict | None = None, opset: int = 13, x_type: int = onnx.TensorProto.FLOAT,
                y_type: int = onnx.TensorProto.FLOAT) -> onnx.ModelProto:
    """One `op` node reading input `x` and then `initializers` in order, writing `y`: a layer
    timed alone, an empty model's run overhead, a kernel's arithmetic checked against numpy."""
    inits = [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()]
    node = helper.make_node(op, ["x", *(t.name for t in inits)], ["y"], **(attrs or {}))
    graph = helper.make_graph([node], op.lower(), [helper.make_tensor_value_info("x", x_type, list(x_shape))],
                              [helper.make_tensor_value_info("y", y_type, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
