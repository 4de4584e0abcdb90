"""Where Q/DQ go: exactly the patterns onnxruntime's CPU provider fuses into integer kernels.

onnxruntime turns `DQ -> op -> Q` node units into integer kernels at session start
(qdq_selector_action_transformer.cc): Conv -> QLinearConv, Gemm -> QGemm (a float output allowed),
MatMul -> QLinearMatMul, Add/Mul -> QLinearAdd/Mul, Concat -> QLinearConcat, AveragePool,
GlobalAveragePool, Sigmoid, LeakyRelu -> their QLinear forms; and it drops the Q/DQ around ops that
move int8 values unchanged (MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Resize,
Slice, Split) when input and output share their parameters. A Relu or Clip between a quantized op
and its Q is absorbed when the Q range starts at the activation's floor (ReluQuantFusion).
So the plan quantizes every input and output of the ops above, gives pass-through ops their
input's parameters, and treats `op -> Relu/Clip` as one unit whose output carries the range.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from onnxopt.graph.core import Graph, Node

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
BINARY = {"Add", "Mul"}
VARIADIC = {"Concat"}
REQUANT = {"AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu"}
PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Resize", "Slice", "Split"}
ACTIVATIONS = {"Relu", "Clip"}
SUPPORTED = WEIGHTED | BINARY | VARIADIC | REQUANT | PASS_THROUGH
# quantized only when op-types names them: onnxruntime's CPU provider has no integer kernel for them,
# so Q/DQ would only add work there (other runtimes, e.g. TensorRT, do fuse them)
OPT_IN = {"ConvTranspose": "onnxruntime's CPU provider has no integer ConvTranspose (op-types=ConvTranspose|... "
                           "quantizes it for runtimes that have one)"}
ALREADY_QUANTIZED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                     "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat"}
# the data inputs of each op (the rest are weights, shapes, scales, ...); None: all
_DATA_INPUTS = {"Reshape": 1, "Squeeze": 1, "Unsqueeze": 1, "Resize": 1, "Slice": 1, "Split": 1, "Conv": 1,
                "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclasses.dataclass
class Unit:
    """A quantized node, with the Relu/Clip absorbed into its output range, if any."""

    node: Node
    kind: str                         # weighted | binary | variadic | requant | pass-through
    activation: Node | None = None    # Relu/Clip folded into the output's range

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.activation.outputs[:1] if self.activation is not None else self.node.outputs


@dataclasses.dataclass
class Plan:
    units: dict[int, Unit]                 # node id -> unit
    tensors: dict[str, str]                # quantized tensor -> tensor whose range sets its parameters
    kept_float: dict[str, str]             # node label -> why it stays float

    @property
    def range_tensors(self) -> list[str]:
        return sorted(set(self.tensors.values()))


def data_inputs(node: Node) -> list[str]:
    n = _DATA_INPUTS.get(node.op)
    names = node.inputs if n is None else node.inputs[:n]
    return [t for t in names if t]


def matches(node: Node, patterns: tuple[str, ...]) -> bool:
    """A node matches a pattern that is its op type, its name, or a regex over its name."""
    for p in patterns:
        if p == node.op or p == node.name or (node.name and re.fullmatch(p, node.name)):
            return True
    return False


def _weight_axis_ok(graph: Graph, node: Node) -> str | None:
    """Why a weighted op cannot be quantized (None: it can)."""
    if len(node.inputs) < 2 or not graph.is_constant(node.input(1)):
        return "its weight is not a constant"
    if graph.is_constant(node.input(0)):
        return "its input is a constant"
    if node.op == "Gemm":
        if int(node.attr("transA", 0)):
            return "Gemm with transA"
        if len(node.inputs) > 2 and node.input(2):
            c = graph.constant_spec(node.input(2))
            if c is None:
                return "Gemm bias is not a constant"
            w = graph.constant_spec(node.input(1))
            n = w[0][0 if int(node.attr("transB", 0)) else 1] if w is not None and len(w[0]) == 2 else None
            if int(np.prod(c[0])) not in (1, n) or (len(c[0]) == 2 and c[0][0] != 1):
                return f"Gemm bias of shape {list(c[0])} is not one value per output (QGemm's int32 bias is)"
    if node.op == "MatMul":
        w = graph.constant_spec(node.input(1))
        if w is None or len(w[0]) != 2:
            return "MatMul weight is not a 2-D constant"
    if node.op in ("Conv", "ConvTranspose"):
        if len(node.inputs) > 2 and node.input(2) and not graph.is_constant(node.input(2)):
            return "bias is not a constant"
    return None


def _kind(graph: Graph, node: Node, op_types: tuple[str, ...] = ()) -> tuple[str | None, str | None]:
    """(kind, None) for a quantizable node; (None, reason) when it stays float."""
    if node.domain not in ("", "ai.onnx"):
        return None, f"custom op {node.domain}.{node.op}"
    if any(graph.dtype(t) not in (None, 1) for t in data_inputs(node)):
        return None, "not a float32 tensor"
    if node.op in WEIGHTED:
        if node.op in OPT_IN and node.op not in op_types:
            return None, OPT_IN[node.op]
        why = _weight_axis_ok(graph, node)
        return ("weighted", None) if why is None else (None, why)
    if node.op in BINARY | VARIADIC:
        if any(graph.is_constant(t) for t in node.inputs):
            return None, "a constant operand (no integer kernel takes it)"
        return ("binary" if node.op in BINARY else "variadic"), None
    if node.op in REQUANT:
        return "requant", None
    if node.op in PASS_THROUGH:
        if graph.is_constant(node.input(0)):
            return None, "constant input"
        if node.op == "MaxPool":
            if graph.opset < 12:
                return None, "onnxruntime has no int8 MaxPool before opset 12"
            if len(node.outputs) > 1 and node.outputs[1] and graph.is_used(node.outputs[1]):
                return None, "its Indices output is used (onnxruntime's int8 MaxPool has none)"
        if node.op == "Resize" and node.attr("mode", "nearest") != "nearest":
            return None, f"Resize mode {node.attr('mode')}: onnxruntime runs only nearest on int8"
        return "pass-through", None
    return None, "no integer kernel in onnxruntime for this op"


def _foldable(graph: Graph, producer: Node, keep_float: set[str]) -> Node | None:
    """The Relu/Clip that is the sole reader of `producer`'s output, if it can ride on its Q."""
    out = producer.outputs[0]
    if graph.is_graph_output(out):
        return None
    readers = graph.consumers(out)
    if len(readers) != 1:
        return None
    act = readers[0]
    if act.op not in ACTIVATIONS or act.outputs[0] in keep_float or act.input(0) != out:
        return None
    if act.op == "Clip" and any(t and not graph.is_constant(t) for t in act.inputs[1:]):
        return None
    return act


def make_plan(graph: Graph, *, exclude: tuple[str, ...] = (), op_types: tuple[str, ...] = (),
              float_nodes: set[str] = frozenset()) -> Plan:
    """Decide which nodes run quantized and which tensors get Q/DQ. `float_nodes` (nodes named by
    their first output, stable across copies of the graph) are held in float by a later decision
    (range mismatch, accuracy control); a Relu/Clip named there is not absorbed into a Q range."""
    units: dict[int, Unit] = {}
    kept_float: dict[str, str] = {}
    order = graph.topological_nodes()
    absorbed: set[int] = set()
    for node in order:
        if node.id in absorbed:
            continue
        if node.op in ACTIVATIONS:
            continue  # absorbed by its producer below, or float
        kind, why = _kind(graph, node, op_types)
        if kind is None:
            if node.op not in ("Constant", "Identity", "Shape", "Dropout") and why:
                kept_float[node.label] = why
            continue
        if (exclude and matches(node, exclude)) or (op_types and node.op not in op_types):
            kept_float[node.label] = "excluded"
            continue
        if node.outputs[0] in float_nodes:
            continue
        unit = Unit(node, kind)
        if kind in ("weighted", "binary", "variadic", "requant"):
            act = _foldable(graph, node, set(float_nodes))
            if act is not None and not (exclude and matches(act, exclude)):
                unit.activation = act
                absorbed.add(act.id)
        units[node.id] = unit

    # pass-through ops run on int8 only where their input is quantized anyway: resolved in order,
    # since one may feed the next (MaxPool -> Flatten)
    tensors: dict[str, str] = {}
    compute = {i: u for i, u in units.items() if u.kind != "pass-through"}
    consumed_by_unit = {}
    for u in compute.values():
        for t in data_inputs(u.node):
            consumed_by_unit.setdefault(t, []).append(u)
    for u in compute.values():
        for t in data_inputs(u.node):
            tensors.setdefault(t, t)
    for u in compute.values():
        if u.node.op in ("Gemm", "MatMul") and not any(t in consumed_by_unit for t in u.outputs):
            # QGemm / MatMulIntegerToFloat write float: no Q needed, and an activation after them
            # (a classifier's last Relu) simply runs in float on that output
            u.activation = None
            continue
        for t in u.outputs:
            tensors.setdefault(t, t)
    dropped = []
    for node in order:
        u = units.get(node.id)
        if u is None or u.kind != "pass-through":
            continue
        src = node.input(0)
        if src not in tensors:
            dropped.append(node.id)
            continue
        root = tensors[src]
        for t in (node.outputs if node.op == "Split" else node.outputs[:1]):
            tensors[t] = root  # same parameters in and out: onnxruntime drops the pair
    for i in dropped:
        units.pop(i)
    return Plan(units, tensors, kept_float)
