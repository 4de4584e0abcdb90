"""Recovery without training: refit each layer that lost input channels to the original outputs.

For a layer that read pruned channels, the original network's output of that layer Y (at its kept
output channels) is the target and the pruned network's input X (its kept channels, as the pruned
layers before it now compute them) the regressor; least squares gives new weights and a new bias:

    min_W,b ||Y - X W - b||^2 + lam ||W - W0||^2

(He et al. 2017, "Channel Pruning"; Luo et al. 2017, "ThiNet"). For a Conv, X holds the input patch
under each sampled output position (im2col), so kxk kernels are refit, not only Gemm. The bias
absorbs the mean of what the removed channels contributed. The ridge pulls towards the plainly
cut weights W0; its strength is chosen per layer on held-back calibration samples, among which
keeping W0 itself is a candidate: a refit never makes a layer worse on data it did not see.

Statistics are streamed (X'X and X'Y per layer), never whole activations; layers are refit in
topological stages so each stage sees the inputs of the stages before it, already refit.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from onnxopt.analysis.channels import ChannelAnalysis
from onnxopt.graph.core import Graph, Node
from onnxopt.pipeline.contract import PassContext, PassResult
from onnxopt.runtime.sessions import make_session, run_feeds

from ..reparam.branches import _pads as conv_pads
from ..reparam.kernels import Decline

MAX_STAGES = 8
ROWS_PER_LAYER = 16384          # sampled output positions per layer over all samples
RIDGE = (1e-6, 1e-4, 1e-2, 1e-1, 1.0)


@dataclasses.dataclass
class _Layer:
    node: Node
    ins: np.ndarray | None    # kept input positions (of the original input)
    outs: np.ndarray | None   # kept output positions (of the original output)
    bias: bool                # fit an intercept
    geometry: tuple | None    # Conv: (kernel, strides, pads_begin, dilations)
    fit: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0, []])  # A, B, yy, pending rows
    val: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0, []])
    targets: dict = dataclasses.field(default_factory=dict)  # feed index -> (positions, Y rows)


def _conv_geometry(graph: Graph, n: Node) -> tuple | str:
    w = graph.constant(n.input(1))
    x = graph.static_shape(n.input(0))
    if w.ndim != 4 or x is None:
        return "only 2-D convolutions are refit"
    kernel = tuple(w.shape[2:])
    strides = tuple(n.attr("strides", [1, 1]))
    dil = tuple(n.attr("dilations", [1, 1]))
    try:
        pads = conv_pads(graph, n, kernel, strides, dil)
    except Decline as exc:
        return str(exc)
    return kernel, strides, pads[:2], pads[2:], dil


def _layers(graph: Graph, analysis: ChannelAnalysis, plan: dict, result: PassResult) -> list[_Layer]:
    layers = []
    for n in graph.topological_nodes():
        ins = analysis.kept_positions(n.input(0), plan) if n.inputs else None
        if ins is None or n.op not in ("Conv", "Gemm", "MatMul"):
            continue
        outs = analysis.kept_positions(n.outputs[0], plan)
        if n.op == "Conv":
            if int(n.attr("group", 1)) != 1:
                continue  # depthwise convs follow their channels; grouped ones keep their cut weights
            geometry = _conv_geometry(graph, n)
            if isinstance(geometry, str):
                result.skip(n, f"not refit: {geometry}")
                continue
            layers.append(_Layer(n, ins, outs, True, geometry))
        elif n.op == "Gemm":
            if float(n.attr("alpha", 1.0)) != 1.0 or float(n.attr("beta", 1.0)) != 1.0:
                result.skip(n, "not refit: Gemm with alpha or beta other than 1")
                continue
            c = graph.constant(n.input(2)) if len(n.inputs) > 2 and n.input(2) else None
            if c is not None and c.ndim > 1 and c.shape[0] != 1:
                result.skip(n, "not refit: bias is not a vector")
                continue
            layers.append(_Layer(n, ins, outs, True, None))
        else:
            layers.append(_Layer(n, ins, outs, False, None))
    return layers


def _rows(x: np.ndarray, layer: _Layer, positions: np.ndarray) -> np.ndarray:
    """Regressor rows of `layer` at output positions `positions` ([P] flat indices; [N] for Gemm)."""
    if layer.geometry is None:
        return x[positions].astype(np.float64)
    kernel, strides, begin, end, dil = layer.geometry
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1])))
    oh_n, ow_n = output_size((h, w), layer.geometry)
    b, rest = np.divmod(positions, oh_n * ow_n)
    oh, ow = np.divmod(rest, ow_n)
    hi = oh[:, None] * strides[0] + np.arange(kernel[0]) * dil[0]
    wi = ow[:, None] * strides[1] + np.arange(kernel[1]) * dil[1]
    patches = xp[b[:, None, None, None], np.arange(c)[None, :, None, None], hi[:, None, :, None], wi[:, None, None, :]]
    return patches.reshape(len(positions), -1).astype(np.float64)


def _targets(y: np.ndarray, layer: _Layer, positions: np.ndarray) -> np.ndarray:
    if layer.geometry is None:
        rows = y[positions]
    else:
        flat = y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1])
        rows = flat[positions]
    return (rows if layer.outs is None else rows[:, layer.outs]).astype(np.float64)


def output_size(hw: tuple[int, int], geometry: tuple) -> tuple[int, int]:
    """A Conv's output height and width for input height and width `hw`."""
    kernel, strides, begin, end, dil = geometry
    return tuple((hw[i] + begin[i] + end[i] - (kernel[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in (0, 1))


def sample(total: int, per_feed: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `per_feed` of `total` rows (all of them when there are no more)."""
    if total <= per_feed:
        return np.arange(total)
    return np.sort(rng.choice(total, per_feed, replace=False))


def _sample_positions(y: np.ndarray, layer: _Layer, per_feed: int, rng: np.random.Generator) -> np.ndarray:
    total = y.shape[0] if layer.geometry is None else y.shape[0] * math.prod(y.shape[2:])
    return sample(total, per_feed, rng)


def _weights(graph: Graph, layer: _Layer) -> np.ndarray:
    """Current weights as a [D(+1), M] matrix matching the regressor rows."""
    n = layer.node
    w = graph.constant(n.input(1)).astype(np.float64)
    if n.op == "Conv":
        mat = w.reshape(w.shape[0], -1).T
    elif n.op == "Gemm" and int(n.attr("transB", 0)):
        mat = w.T
    else:
        mat = w
    if layer.bias:
        b = graph.constant(n.input(2)).astype(np.float64).ravel() if len(n.inputs) > 2 and n.input(2) else None
        if b is None or b.size == 1:
            b = np.full(mat.shape[1], 0.0 if b is None else float(b[0]))
        mat = np.vstack([mat, b[None, :]])
    return mat


def _store(graph: Graph, layer: _Layer, mat: np.ndarray) -> None:
    n = layer.node
    w_old = graph.constant(n.input(1))
    dtype = w_old.dtype
    body = mat[:-1] if layer.bias else mat
    if n.op == "Conv":
        w = body.T.reshape(w_old.shape)
    elif n.op == "Gemm" and int(n.attr("transB", 0)):
        w = body.T
    else:
        w = body
    graph.set_input_constant(n, 1, w.astype(dtype))
    if layer.bias:
        b = mat[-1].astype(dtype)
        if len(n.inputs) > 2 and n.input(2):
            old = graph.constant(n.input(2))
            graph.set_input_constant(n, 2, b.reshape(old.shape) if old.size == b.size else b)
        else:
            graph.set_input(n, 2, graph.add_constant(f"{n.name or n.op}.bias", b))


FLUSH_ROWS = 4096


def _accumulate(stats: list, x: np.ndarray | None, y: np.ndarray | None) -> None:
    """Add rows to X'X, X'Y and Y'Y; rows wait until there are FLUSH_ROWS of them (x=None flushes):
    a few large products instead of one per sample, which on a busy machine is the difference
    between BLAS threads helping and fighting."""
    pending = stats[3]
    if x is not None:
        pending.append((x, y))
    if not pending or (x is not None and sum(len(p) for p, _ in pending) < FLUSH_ROWS):
        return
    xs = np.concatenate([p for p, _ in pending])
    ys = np.concatenate([q for _, q in pending])
    pending.clear()
    stats[0] = stats[0] + xs.T @ xs
    stats[1] = stats[1] + xs.T @ ys
    stats[2] = stats[2] + float((ys * ys).sum())


def _error(stats: list, w: np.ndarray) -> float:
    a, b, yy = stats[:3]
    if isinstance(a, float):
        return math.nan
    return float(yy - 2 * (w * b).sum() + (w * (a @ w)).sum())


def _solve(layer: _Layer, w0: np.ndarray) -> tuple[np.ndarray, str, float, float]:
    """Best of W0 and ridge solutions by held-back error: (weights, choice, error before, after)."""
    a, b = layer.fit[:2]
    scale = float(np.mean(np.diag(a))) or 1.0
    eye = np.eye(len(a))
    best_w, best, choice = w0, _error(layer.val, w0), "kept"
    before = best
    for lam in RIDGE:
        try:
            w = np.linalg.solve(a + lam * scale * eye, b + lam * scale * w0)
        except np.linalg.LinAlgError:
            continue
        err = _error(layer.val, w)
        if math.isfinite(err) and (not math.isfinite(best) or err < best):
            best_w, best, choice = w, err, f"ridge {lam:g}"
    return best_w, choice, before, best


def recover(graph: Graph, original, analysis: ChannelAnalysis, plan: dict, calibration, ctx: PassContext,
            result: PassResult) -> int:
    """Refit the layers that read pruned channels; returns how many were refit."""
    layers = _layers(graph, analysis, plan, result)
    feeds = list(calibration)
    if not layers or len(feeds) < 2:
        if layers:
            result.notes.append("recovery needs at least 2 calibration samples; layers were not refit")
        return 0
    n_val = max(1, len(feeds) // 5)
    fit_idx = set(range(len(feeds) - n_val))
    rng = np.random.default_rng(ctx.seed)
    per_feed = max(1, math.ceil(ROWS_PER_LAYER / len(feeds)))
    # the original network's outputs of every refit layer, at sampled positions
    names = [ly.node.outputs[0] for ly in layers]
    orig_graph = Graph(original)
    session = make_session(orig_graph.to_model(extra_outputs=names),
                           threads=ctx.threads)
    for i, feed in enumerate(feeds):
        (out,) = run_feeds(session, [feed])
        for ly in layers:
            y = out[ly.node.outputs[0]]
            pos = _sample_positions(y, ly, per_feed, rng)
            ly.targets[i] = (pos, _targets(y, ly, pos))
        ctx.progress("prune: recovery targets", i + 1, len(feeds))
    del session
    stages = np.array_split(np.arange(len(layers)), min(MAX_STAGES, len(layers)))
    rows = []
    refit = 0
    for k, stage in enumerate(stages):
        members = [layers[j] for j in stage]
        inputs = list(dict.fromkeys(ly.node.input(0) for ly in members))
        model = graph.to_model(extra_outputs=inputs)
        session = make_session(model, threads=ctx.threads)
        for i, feed in enumerate(feeds):
            (out,) = run_feeds(session, [feed])
            for ly in members:
                pos, y = ly.targets[i]
                x = _rows(out[ly.node.input(0)], ly, pos)
                if ly.bias:
                    x = np.hstack([x, np.ones((len(x), 1))])
                _accumulate(ly.fit if i in fit_idx else ly.val, x, y)
        for ly in members:
            _accumulate(ly.fit, None, None)
            _accumulate(ly.val, None, None)
            w0 = _weights(graph, ly)
            w, choice, before, after = _solve(ly, w0)
            ly.targets.clear()
            ly.fit = ly.val = None
            if choice != "kept":
                _store(graph, ly, w)
                refit += 1
            rows.append({"layer": ly.node.label, "choice": choice, "held_back_error_before": before,
                         "held_back_error_after": after})
        ctx.progress("prune: recovery", k + 1, len(stages))
    result.details["recovery"] = rows
    gains = [r["held_back_error_after"] / r["held_back_error_before"] for r in rows
             if r["held_back_error_before"] and math.isfinite(r["held_back_error_before"])]
    if gains:
        result.notes.append(f"recovery: {refit} of {len(rows)} layers refit by least squares on {len(feeds) - n_val} "
                            f"samples; held-back layer error x{float(np.median(gains)):.3f} (median)")
    return refit
