"""Dims exporters write in ways onnxruntime and shape inference read differently."""
from __future__ import annotations

import onnx


def named_dynamic_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every dim declared as 0 or -1 (PaddlePaddle's way of saying "dynamic") on its
    inputs, outputs and value_info renamed to a symbolic dim (`x_dim2`): onnxruntime takes -1 as
    dynamic but 0 literally, shape inference keeps them, and the ONNX spec has neither. The same
    model when there is nothing to rename."""
    def infos(m: onnx.ModelProto):
        inits = {t.name for t in m.graph.initializer}
        return [vi for vi in (*m.graph.input, *m.graph.output, *m.graph.value_info) if vi.name not in inits]

    def bad(vi) -> bool:
        return any(d.HasField("dim_value") and d.dim_value <= 0 for d in vi.type.tensor_type.shape.dim)

    if not any(bad(vi) for vi in infos(model)):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in infos(model):
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
                d.dim_param = f"{vi.name}_dim{axis}"
    return model
