"""Shape arithmetic that ONNX shape inference leaves unknown, computed from the static input shapes.

Exporters build a Reshape's target at run time from the shape of another tensor: paddle2onnx writes
Shape -> Cast(int32) -> Slice -> Cast(int64) -> Concat, and ONNX's data propagation stops at the
Casts, so every shape after that Reshape (and every MAC count that needs one) is unknown though the
input shapes fix it. `resolve_computed_shapes` evaluates such small integer subgraphs with numpy and
hands back a copy of the model whose computed Reshape targets are constants, for inference only.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MAX_VALUES = 64  # a shape value is a handful of integers; anything larger is data, not shape arithmetic
_INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
_OPS = {"Shape", "Identity", "Cast", "Concat", "Gather", "Unsqueeze", "Squeeze", "Slice", "Add", "Sub", "Mul", "Div"}


def shape_values(model: onnx.ModelProto, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Integer tensors of the main graph computable from constants and the static `shapes`
    (Shape, Cast, Slice, Concat, Gather, Unsqueeze, Squeeze, Identity and elementwise arithmetic),
    by name. Nodes are read in the graph's order, which to_model() keeps topological."""
    g = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in g.initializer
              if t.data_type in _INT_TYPES and np.prod(t.dims, dtype=np.int64) <= MAX_VALUES}
    for node in g.node:
        try:
            out = _evaluate(node, values, shapes)
        except (ValueError, IndexError, TypeError, KeyError):  # not shape arithmetic we can follow
            continue
        if out is not None and out.size <= MAX_VALUES and out.dtype.kind in "iu":
            values[node.output[0]] = out
    return values


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], shapes: dict[str, tuple]) -> np.ndarray | None:
    op = node.op_type
    if op not in _OPS or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op == "Shape":
        dims = shapes.get(node.input[0])
        if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        start, end = attrs.get("start", 0), attrs.get("end", len(dims))
        return np.asarray(dims[start:end], dtype=np.int64)
    inputs = [values.get(name) if name else None for name in node.input]
    if not node.input or inputs[0] is None:
        return None
    x = inputs[0]
    if op == "Identity":
        return x
    if op == "Cast":
        return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Concat":
        return None if any(v is None for v in inputs) else np.concatenate(inputs, axis=attrs["axis"])
    if op == "Gather":
        return None if inputs[1] is None else np.take(x, inputs[1], axis=attrs.get("axis", 0))
    if op in ("Unsqueeze", "Squeeze"):
        if len(inputs) > 1 and inputs[1] is None:  # axes computed from what is not known
            return None
        axes = attrs.get("axes") if len(inputs) < 2 else inputs[1]
        if axes is None:
            return np.squeeze(x) if op == "Squeeze" else None
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(int(a) for a in np.atleast_1d(axes)))
        for a in sorted(int(a) % (x.ndim + len(np.atleast_1d(axes))) for a in np.atleast_1d(axes)):
            x = np.expand_dims(x, a)
        return x
    if op == "Slice":
        if len(inputs) < 3 or inputs[1] is None or inputs[2] is None:
            return None
        starts, ends = inputs[1], inputs[2]
        axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else np.arange(len(starts))
        steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else np.ones(len(starts), dtype=np.int64)
        if np.any(steps < 0):  # ONNX clamps a reversed slice unlike Python; not shape arithmetic anyway
            return None
        index = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a)] = slice(int(s), int(e), int(st))
        return x[tuple(index)]
    if op in ("Add", "Sub", "Mul", "Div"):
        if len(inputs) < 2 or inputs[1] is None:
            return None
        a, b = x, inputs[1]
        if op == "Div":  # integer Div truncates toward zero (onnxruntime, as C does)
            if np.any(b == 0):
                return None
            return (np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)).astype(np.result_type(a, b))
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b)
    return None


def resolve_computed_shapes(model: onnx.ModelProto, shapes: dict[str, tuple]) -> onnx.ModelProto | None:
    """A copy of `model` whose Reshape targets computed at run time from static shapes are
    constants (inference then follows them), or None if there is none to resolve."""
    constants = {t.name for t in model.graph.initializer}

    def static(name: str) -> bool:
        return shapes.get(name) is not None and None not in shapes[name]
    # refresh_shapes calls this on every refresh: most models have no such Reshape, and pay for
    # no evaluation
    unresolved = [n for n in model.graph.node if n.op_type == "Reshape" and len(n.input) > 1
                  and n.input[1] not in constants and not static(n.output[0])]
    if not unresolved:
        return None
    known = shape_values(model, shapes)
    # a target with -1 or 0 needs the data's shape too: without it, inference could not follow
    targets = {n.input[1] for n in unresolved
               if n.input[1] in known and (np.all(known[n.input[1]] > 0) or static(n.input[0]))}
    if not targets:
        return None
    resolved = onnx.ModelProto()
    resolved.CopyFrom(model)
    for name in sorted(targets):
        resolved.graph.initializer.append(numpy_helper.from_array(known[name].astype(np.int64), name))
    # the nodes that computed them now write tensors nobody needs: dropped, so that no name has
    # two producers
    resolved_outputs = set(targets)
    kept = [n for n in resolved.graph.node if not set(n.output) & resolved_outputs]
    del resolved.graph.node[:]
    resolved.graph.node.extend(kept)
    return resolved
