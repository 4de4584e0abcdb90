"""What onnxruntime actually runs in integer arithmetic: the fusion audit of a QDQ model.

A QDQ file only suggests integer kernels; onnxruntime fuses `DQ -> op -> Q` units at session start
and leaves the rest in float between a DequantizeLinear and a QuantizeLinear. Those float islands
are why "the quantized model is not faster". The audit lets onnxruntime optimize the model (the
level that runs the QDQ fusions, before layout changes blur op names), reads the graph it wrote
(SessionOptions.optimized_model_filepath) and lists every float op still fed by a DequantizeLinear:
an island when what it computes goes on to a QuantizeLinear, the model's float tail (a Softmax
after the last layer) when it only reaches graph outputs.

Which units fuse depends on the platform onnxruntime was built for: ARM builds fuse units with
int8 activations; x86 builds rewrite the int8 pairs they can to uint8 (a QuantizeLinear with one
reader) and leave the rest in float, such as a residual branch read twice. So an int8-activation
model audited on x86 shows islands that ARM does not run. An audit for another platform sets that
platform's rule (`int8_fused`), the session option onnxruntime offers for exporting to one.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import tempfile

import onnx
import onnxruntime as ort

from ..errors import BadModel, first_line
from ..graph.qdq import depthwise, worst_same_sign_pair

QDQ = {"QuantizeLinear", "DequantizeLinear"}
INTEGER = {"QGemm", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


@dataclasses.dataclass
class Island:
    op: str
    name: str
    inputs_from: str  # which inputs come from a DequantizeLinear

    def __str__(self) -> str:
        return f"{self.op} {self.name!r} runs in float ({self.inputs_from})"


@dataclasses.dataclass
class FusionAudit:
    ops: dict[str, int]                    # op histogram of onnxruntime's optimized graph
    islands: list[Island]
    quantize: int                          # QuantizeLinear left
    dequantize: int                        # DequantizeLinear left
    tail: list[Island] = dataclasses.field(default_factory=list)  # float ops after the last DQ, feeding no Q
    integer_nodes: dict[str, str] = dataclasses.field(default_factory=dict)  # node name -> its integer kernel
    # integer kernels whose u8 x s8 product pairs can leave int16: they saturate on x86 without VNNI
    saturating: list[str] = dataclasses.field(default_factory=list)

    @property
    def integer_ops(self) -> dict[str, int]:
        return {k: v for k, v in self.ops.items() if _is_integer(k)}

    @property
    def quantized(self) -> bool:
        return bool(self.integer_ops) or self.dequantize > 0

    def as_dict(self) -> dict:
        return {"integer_ops": self.integer_ops, "float_islands": [dataclasses.asdict(i) for i in self.islands],
                "float_tail": [dataclasses.asdict(i) for i in self.tail],
                "quantize_linear": self.quantize, "dequantize_linear": self.dequantize, "ops": self.ops,
                "saturating": list(self.saturating)}

    def summary(self) -> str:
        ints = sum(self.integer_ops.values())
        tail = f", float after the last DequantizeLinear: {', '.join(i.op for i in self.tail)}" if self.tail else ""
        return (f"{ints} integer ops, {len(self.islands)} float island{'s' * (len(self.islands) != 1)}, "
                f"{self.quantize} Q / {self.dequantize} DQ left{tail}")


def audit(model: onnx.ModelProto | bytes, *, threads: int = 1, int8_fused: bool | None = None) -> FusionAudit:
    """The audit as onnxruntime on this CPU runs the model, or, with `int8_fused`, as it runs it on a
    platform that does (ARM) or does not (x86) fuse QDQ units with int8 activations."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="onnxopt-audit-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = path
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        if int8_fused is not None:
            so.add_session_config_entry("session.qdqisint8allowed", "1" if int8_fused else "0")
        try:
            ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types
            raise BadModel(f"onnxruntime cannot load the model: {first_line(exc, 200)}") from None
        optimized = onnx.load(path, load_external_data=False)
    producer = {t: n for n in optimized.graph.node for t in n.output}
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in optimized.graph.node:
        for t in n.input:
            readers[t].append(n)
    islands, tail = [], []
    for n in optimized.graph.node:
        if n.op_type in QDQ:
            continue
        fed = [i for i, t in enumerate(n.input) if t in producer and producer[t].op_type == "DequantizeLinear"]
        if fed:
            which = ", ".join(f"input {i}" for i in fed)
            found = Island(n.op_type, n.name, f"{which} from DequantizeLinear")
            (islands if _requantized(n, readers) else tail).append(found)
    ops = collections.Counter(n.op_type for n in optimized.graph.node)
    kernels = {n.name: n.op_type for n in optimized.graph.node if n.name and _is_integer(n.op_type)}
    return FusionAudit(dict(sorted(ops.items())), islands, ops.get("QuantizeLinear", 0), ops.get("DequantizeLinear", 0),
                       tail, kernels, saturating(optimized))


# integer kernel -> (activation zero point input or None: always uint8, weight input, weight's
# output-channel axis or None: by transB)
_WEIGHTED = {"QLinearConv": (2, 3, 0), "QLinearMatMul": (2, 3, 1), "QGemm": (2, 3, None),
             "ConvInteger": (2, 1, 0), "MatMulInteger": (2, 1, 1), "MatMulIntegerToFloat": (4, 1, 1),
             "DynamicQuantizeMatMul": (None, 1, 1)}


def saturating(model: onnx.ModelProto) -> list[str]:
    """Integer kernels (by name, or op type) that read uint8 activations and int8 weights where two
    weights of the same sign in one output channel have |w1| + |w2| > 128: 255 * that leaves int16,
    and x86 CPUs without VNNI add product pairs in int16 with saturation (VPMADDUBSW). Which two the
    kernel pairs depends on its packing, so any two count; depthwise convolutions, whose kernels
    widen to int32 first, do not. A missing activation zero point means uint8 (onnxruntime's
    dynamic quantization)."""
    import numpy as np

    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for n in model.graph.node:
        spec = _WEIGHTED.get(n.op_type)
        if spec is None or len(n.input) <= spec[1] or n.input[spec[1]] not in inits:
            continue
        zero, weight, axis = spec
        activation_zp = inits.get(n.input[zero]) if zero is not None and len(n.input) > zero and n.input[zero] else None
        if activation_zp is not None and activation_zp.data_type != onnx.TensorProto.UINT8:
            continue  # int8 activations: not the u8 x s8 kernel
        w = onnx.numpy_helper.to_array(inits[n.input[weight]])
        if w.dtype != np.int8 or w.ndim < 1:
            continue
        if "Conv" in n.op_type and depthwise(next((a.i for a in n.attribute if a.name == "group"), 1), w.shape):
            continue
        if axis is None:
            axis = 0 if any(a.name == "transB" and a.i for a in n.attribute) else 1
        per_channel = np.moveaxis(w.astype(np.int32), axis, 0).reshape(w.shape[axis], -1)
        if per_channel.shape[1] > 1 and int(worst_same_sign_pair(per_channel).max()) > 128:
            found.append(n.name or n.op_type)
    return found


def _is_integer(op: str) -> bool:
    return op.startswith("QLinear") or op in INTEGER


def _requantized(node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]]) -> bool:
    """Whether what `node` computes in float reaches a QuantizeLinear (through float ops): then it
    sits between a DequantizeLinear and a QuantizeLinear, an island. Otherwise it is the float tail
    of the model (a Softmax after the last layer), float by design."""
    seen, frontier = set(), list(node.output)
    while frontier:
        t = frontier.pop()
        for r in readers.get(t, ()):
            if r.op_type == "QuantizeLinear":
                return True
            if id(r) not in seen:
                seen.add(id(r))
                frontier.extend(r.output)
    return False
