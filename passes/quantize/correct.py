"""Bias correction: Nagel et al. 2019 (§4.2), with empirical input means.

Rounding weights to int8 gives each output channel an error E[(W_q - W) x] that does not average
out: in a depthwise layer a channel has nine weights, and their rounding errors shift its mean
output. That shift is computed from the weight error and the per-channel mean of the layer's input
as the quantized model sees it (measured on calibration samples), and taken off the float bias the
quantized model is built from. Each layer's correction depends only on its own weights and its
input, so corrections do not compound; a second round re-measures the inputs after the first.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx

from onnxopt.graph.core import Graph
from onnxopt.graph.probes import with_outputs
from onnxopt.pipeline.contract import PassContext, PassResult
from onnxopt.runtime.sessions import Feed, inputs_for, make_session

ROUNDS = 2
SAMPLES = 64


def channel_means(model: onnx.ModelProto, tensors: list[str], feeds: list[Feed], threads: int = 1) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) means of intermediate tensors over `feeds`, streamed."""
    wanted = list(dict.fromkeys(tensors))
    inputs = {i.name for i in model.graph.input}
    session = make_session(with_outputs(model, wanted).SerializeToString(), optimization="disabled", threads=threads)
    exposed = [t for t in wanted if t not in inputs]
    sums: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(exposed, session.run(exposed, inputs_for(session, feed))))
        values.update({t: np.asarray(feed[t]) for t in wanted if t in inputs})
        for t, value in values.items():
            axes = tuple(i for i in range(value.ndim) if i != 1)
            mean = value.astype(np.float64).mean(axis=axes) if value.ndim > 1 else value.astype(np.float64)
            sums[t] = sums.get(t, 0) + mean
    return {t: s / len(feeds) for t, s in sums.items()}


def _dequantized(graph: Graph, tensor: str) -> np.ndarray | None:
    """The float value of a DequantizeLinear of constants."""
    dq = graph.producer(tensor)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    q, scale, zero = (np.asarray(graph.constant(t)) for t in dq.inputs[:3])
    if q.ndim and scale.ndim == 1:
        shape = [1] * q.ndim
        shape[int(dq.attr("axis", 1))] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q.astype(np.float64) - zero.astype(np.float64)) * scale.astype(np.float64)


def _weight_error_shift(node, w: np.ndarray, wq: np.ndarray, mean_in: np.ndarray) -> np.ndarray | None:
    """E[(W_q - W) x] per output channel, for input channel means `mean_in`."""
    err = wq - w
    if node.op == "Conv":
        group = int(node.attr("group", 1))
        per = err.reshape(err.shape[0], err.shape[1], -1).sum(axis=2)  # [M, C/g]
        m, cg = per.shape
        if mean_in.size != cg * group:
            return None
        x = mean_in.reshape(group, cg)
        return np.einsum("gmc,gc->gm", per.reshape(group, m // group, cg), x).reshape(m)
    if node.op == "Gemm":
        return err @ mean_in if int(node.attr("transB", 0)) else mean_in @ err
    return None


def _set_bias(graph: Graph, node, bias: np.ndarray) -> None:
    if len(node.inputs) > 2 and node.input(2):
        graph.set_input_constant(node, 2, bias.astype(np.float32))
    else:
        graph.set_input(node, 2, graph.add_constant(f"{node.name or node.op}_bias", bias.astype(np.float32)))


def _original_bias(graph: Graph, node, channels: int) -> np.ndarray | None:
    if node.op == "Gemm" and (float(node.attr("beta", 1.0)) != 1.0 or int(node.attr("transA", 0))):
        return None
    if len(node.inputs) > 2 and node.input(2):
        b = np.asarray(graph.constant(node.input(2)), np.float64)
        if b.size not in (1, channels):
            return None
        return np.broadcast_to(b.reshape(-1), (channels,)).copy()
    return np.zeros(channels)


def correct_biases(builder, float_keys: set[str], samples, ctx: PassContext, result: PassResult) -> onnx.ModelProto:
    feeds = list(itertools.islice(samples.calibration(), SAMPLES))
    original = builder.float_model
    graph = Graph(original, input_shapes=builder.shapes)
    plan = builder.plan(graph, float_keys)
    layers = [u.node for u in plan.units.values() if u.kind == "weighted" and u.node.op in ("Conv", "Gemm")]
    if not layers or not feeds:
        result.notes.append("bias-correction: nothing to correct")
        return original
    outputs = [n.outputs[0] for n in layers]
    reference = channel_means(original, outputs, feeds, ctx.threads)
    base = {n.outputs[0]: _original_bias(graph, n, reference[n.outputs[0]].size) for n in layers}
    current, errors, tried = original, [], []
    for r in range(ROUNDS + 1):
        ctx.progress("quantize: bias correction", r, ROUNDS + 1)
        model, applied, _ = builder.build(float_keys, model=current)
        qgraph = Graph(model)
        by_output = {n.outputs[0]: n for n in qgraph.nodes()}
        qnodes = {t: by_output.get(applied.raw_outputs.get(t, t)) for t in outputs}
        inputs = [q.input(0) for q in qnodes.values() if q is not None]
        means = channel_means(model, inputs + [q.outputs[0] for q in qnodes.values() if q is not None], feeds,
                              ctx.threads)
        errors.append(float(np.mean([np.abs(means[q.outputs[0]] - reference[t]).mean()
                                     for t, q in qnodes.items() if q is not None])))
        tried.append(current)
        if r == ROUNDS:
            break
        g = Graph(current, input_shapes=builder.shapes)
        float_nodes = {n.outputs[0]: n for n in g.nodes()}
        corrected = 0
        for t, q in qnodes.items():
            node, b0 = float_nodes.get(t), base.get(t)
            if q is None or node is None or b0 is None:
                continue
            wq = _dequantized(qgraph, q.input(1))
            w = np.asarray(g.constant(node.input(1)), np.float64)
            if node.op == "Gemm":
                w = w * float(node.attr("alpha", 1.0))  # the quantized weight carries alpha
            shift = _weight_error_shift(node, w, wq, means[q.input(0)]) if wq is not None else None
            if shift is None or shift.shape != b0.shape:
                continue
            _set_bias(g, node, b0 - shift)
            corrected += 1
        current = g.to_model()
    # The measured shift also holds what activation rounding adds, which the correction does not
    # model; where removing the weight part uncovers more than it removes, keep the better round.
    best = int(np.argmin(errors))
    result.details["bias_correction"] = {"layers": corrected if best else 0, "samples": len(feeds),
                                         "mean_abs_channel_shift": errors, "kept_round": best}
    rounds = " -> ".join(f"{e:.3g}" for e in errors)
    if best == 0:
        result.notes.append(f"bias-correction: left the biases as they were: the mean |channel mean - float| of "
                            f"the quantized layers did not fall ({rounds} over {ROUNDS} rounds on {len(feeds)} samples)")
        return original
    result.count("biases corrected", corrected)
    result.notes.append(f"bias-correction: {corrected} layers on {len(feeds)} samples; mean |channel mean - float| "
                        f"{rounds} (round {best} kept)")
    return tried[best]
