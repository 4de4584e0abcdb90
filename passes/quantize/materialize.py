"""Turn a plan and activation ranges into a QDQ graph: weights per channel, int32 biases with the
overflow guard, Relu/Clip folded where the Q range makes them redundant, Q/DQ on activations."""
from __future__ import annotations

import dataclasses

import numpy as np

from onnxopt.graph.core import Graph, Node
from onnxopt.graph.qdq import depthwise, dequantized_constant, insert_qdq

from .placement import Plan, Unit
from .scheme import QParams, activation_qparams, guard_bias, quantize_bias, quantize_weight, weight_qparams


@dataclasses.dataclass
class Applied:
    weights: int = 0            # weight tensors quantized
    per_channel: int = 0        # of which per channel
    widened_channels: int = 0   # weight scales widened so the int32 bias fits
    folded: list[str] = dataclasses.field(default_factory=list)  # Relu/Clip removed into a Q range
    kept_activations: list[str] = dataclasses.field(default_factory=list)
    activations: int = 0        # Q/DQ pairs on activations
    raw_outputs: dict[str, str] = dataclasses.field(default_factory=dict)  # weighted node output -> its name now


def weight_axis(graph: Graph, node: Node) -> int | None:
    """The output-channel axis of a weight: Conv [M, C/g, k..] 0; ConvTranspose [C, M/g, k..] 1
    (per tensor when grouped, since its output channels then span both axes); Gemm B 0 with transB
    else 1; MatMul B [K, N] 1."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1 if int(node.attr("group", 1)) == 1 else None
    if node.op == "Gemm":
        return 0 if int(node.attr("transB", 0)) else 1
    if node.op == "MatMul":
        return 1
    return None


def pairs_products(node: Node, w: np.ndarray) -> bool:
    """Whether onnxruntime's kernel for this op adds u8 x s8 products in int16 pairs without VNNI:
    not its depthwise convolutions (onnxopt.graph.qdq.depthwise), and not ConvTranspose, which has no
    integer kernel. Only those that do need the pair bound."""
    if node.op == "ConvTranspose":
        return False
    return not (node.op == "Conv" and depthwise(int(node.attr("group", 1)), w.shape))


def activation_is_exact(act: Node, graph: Graph, q: QParams) -> bool:
    """Whether Q(act(x)) == Q(x) for every x: the representable range lies inside the activation's."""
    lo, hi = q.representable()
    if act.op == "Relu":
        return lo >= 0.0
    cmin = graph.constant(act.input(1)) if len(act.inputs) > 1 and act.input(1) else None
    cmax = graph.constant(act.input(2)) if len(act.inputs) > 2 and act.input(2) else None
    if act.op == "Clip" and graph.opset < 11:
        cmin, cmax = act.attr("min", None), act.attr("max", None)
    floor = -np.inf if cmin is None else float(np.asarray(cmin))
    ceil = np.inf if cmax is None else float(np.asarray(cmax))
    return lo >= floor and hi <= ceil


def fit_activation(q: QParams, act: Node, graph: Graph) -> QParams:
    """The scale nudged down by an ulp or two when rounding put the top of the range just above a
    Clip's ceiling (Relu6 calibrated at exactly 6)."""
    scale = q.scale
    for _ in range(4):
        if activation_is_exact(act, graph, QParams(scale, q.zero_point)):
            return QParams(scale, q.zero_point)
        scale = np.nextafter(scale, np.float32(0)).astype(np.float32)
    return q


def _bias_vector(graph: Graph, node: Node, channels: int) -> np.ndarray | None:
    if len(node.inputs) < 3 or not node.input(2):
        return None
    b = np.asarray(graph.constant(node.input(2)), np.float64)
    if node.op == "Gemm":
        b = b * float(node.attr("beta", 1.0))
        if b.size == 1:
            return np.full(channels, float(b.ravel()[0]))
        b = b.reshape(-1)
        if b.size != channels:
            return None
    return b.ravel()


def _quantize_weighted(graph: Graph, unit: Unit, input_q: QParams, per_channel: bool, pair_bound: bool,
                       out: Applied) -> None:
    node = unit.node
    w = np.asarray(graph.constant(node.input(1)), np.float32)
    if node.op == "Gemm" and float(node.attr("alpha", 1.0)) != 1.0:
        # QGemm fuses only alpha = 1 with a bias: the scale goes into the weights
        w = (w.astype(np.float64) * float(node.attr("alpha", 1.0))).astype(np.float32)
        graph.set_attr(node, "alpha", None)
    axis = weight_axis(graph, node) if per_channel else None
    wq_params = weight_qparams(w, axis, pair_bound=pair_bound and pairs_products(node, w))
    channels = int(w.shape[axis]) if axis is not None else (
        int(w.shape[0 if node.op == "Gemm" and int(node.attr("transB", 0)) else -1]) if node.op in ("Gemm", "MatMul")
        else int(w.shape[0] if node.op == "Conv" else w.shape[1] * int(node.attr("group", 1))))
    bias = _bias_vector(graph, node, channels)
    if bias is not None:
        taps = int(np.prod(w.shape)) // max(channels, 1)  # products summed per output in the int32 accumulator
        wq_params, widened = guard_bias(bias, float(input_q.scale), wq_params, taps)
        out.widened_channels += widened
    dequantized_constant(graph, node, 1, quantize_weight(w, wq_params), wq_params.scale, wq_params.zero_point, axis)
    out.weights += 1
    out.per_channel += axis is not None
    if bias is not None:
        bq, bscale = quantize_bias(bias, float(input_q.scale), wq_params)
        if node.op == "Gemm" and float(node.attr("beta", 1.0)) != 1.0:
            graph.set_attr(node, "beta", None)
        dequantized_constant(graph, node, 2, bq, bscale, np.zeros(np.shape(bscale), np.int32), 0 if np.ndim(bscale) else None)


def apply_plan(graph: Graph, plan: Plan, ranges: dict[str, tuple[float, float]], *, dtype: str = "uint8",
               per_channel: bool = True, keep_activations: bool = False, pair_bound: bool = False) -> Applied:
    """Rewrite `graph` as the plan says. `ranges` holds a range for every plan.range_tensors entry;
    `pair_bound` bounds weights for CPUs whose u8 x s8 kernel saturates (see scheme.weight_qparams)."""
    out = Applied()
    params = {t: activation_qparams(*ranges[t], dtype) for t in plan.range_tensors}
    for unit in plan.units.values():  # the activation's floor/ceiling may shave an ulp off the scale
        if unit.activation is not None:
            t = unit.activation.outputs[0]
            params[t] = fit_activation(params[t], unit.activation, graph)
    tensor_q = {t: params[root] for t, root in plan.tensors.items()}
    raws: list[tuple[str, Unit]] = []
    for unit in plan.units.values():
        if unit.kind == "weighted":
            _quantize_weighted(graph, unit, tensor_q[unit.node.input(0)], per_channel, pair_bound, out)
            raws.append((unit.node.outputs[0], unit))
    for unit in plan.units.values():
        act = unit.activation
        if act is None:
            continue
        if not keep_activations and activation_is_exact(act, graph, tensor_q[act.outputs[0]]):
            out.folded.append(act.label)
            graph.bypass(act)
        else:
            out.kept_activations.append(act.label)
    for t in plan.tensors:
        q = tensor_q[t]
        insert_qdq(graph, t, q.scale, q.zero_point)
        out.activations += 1
    for orig, unit in raws:  # the Node is live: its output name after the fold and the Q/DQ edits
        out.raw_outputs[orig] = unit.node.outputs[0]
    return out
