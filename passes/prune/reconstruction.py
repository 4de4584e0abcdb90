"""Importance by reconstruction: which channels the next layers can best do without, after refit.

The layers that read a group's channels see inputs X (im2col rows for a Conv) and compute X W.
Removing a set of input channels and refitting W by least squares to the old outputs costs

    E(S) = min_W' ||X W - X_{-S} W'||^2,

a quadratic form in the Gram matrix H = X'X. Removing channels one at a time, each time the one
whose loss after the optimal refit of the rest is smallest, is Optimal Brain Surgeon's step
(Hassibi & Stork 1993) applied to whole input channels, as in Frantar & Alistarh 2022 ("Optimal
Brain Compression"): the loss of a channel with rows B is tr(W_B' [H^-1]_BB^-1 W_B), and H^-1 and
W are updated in closed form after each removal. It chooses channels for the same least-squares
refit `recover` then does (ThiNet, Luo et al. 2017, chose them greedily too, without the refit
in the choice); a group's readers vote together, each by its share of output energy.

A channel's score is its loss when the greedy order removed it, raised where needed to the
largest loss removed before it: the `keep` highest scores are the greedy choice at every width,
and the scores of the channels removed add up to (at least) what they lose together.

A loss at a layer is not yet a loss at the model's output: an early layer's error is carried
and amplified through every layer after it (on the digits MobileNet a quarter of the channels of
the second block cost 1.5 points, the same share of the fifth's 0.07, at about the same layer
loss). So each group is probed once: a quarter of its channels removed, its readers refit, the
model run on a few calibration samples; the relative error of the outputs over the layer loss is
the group's gain, and its scores are multiplied by it. Scores are then predicted output errors,
one unit for all groups, as the latency planner and a global ranking need to weigh groups against
each other (first-order: an error this small passes through the rest of the network linearly).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import numpy as np

from onnxopt.analysis.channels import ChannelAnalysis, Group
from onnxopt.graph.core import Graph, Node
from onnxopt.runtime.sessions import Feed, make_session, run_feeds, run_model

from . import select
from .recover import (FLUSH_ROWS, ROWS_PER_LAYER, _conv_geometry, _Layer, _rows, _store, _weights, output_size,
                      sample)
from .sensitivity import pruned_copy

MAX_ROWS = 4608           # a reader with a wider im2col row (e.g. 512 channels x 3x3) is too costly to invert
STEPS = 64               # joint updates per group at most
DAMP = 1e-3               # ridge on H, relative to its mean diagonal: a dead channel must not make H singular
PROBE_SHARE = 0.25        # of a group's channels removed to measure its gain at the output
PROBE_SAMPLES = 8         # calibration samples the probes run on: each probe runs the whole model (45 s of
                          # a 168 s prune of ResNet-50), and fewer are too noisy (the digits MobileNetV2 at
                          # a global ratio of 0.4 lost 1.18 points with 4, 0.73 with 8, 0.59 with 32)


def _dense_reader(graph: Graph, node: Node) -> _Layer | None:
    if node.op == "Conv":
        if int(node.attr("group", 1)) != 1 or graph.constant(node.input(1)) is None:
            return None
        geometry = _conv_geometry(graph, node)
        return None if isinstance(geometry, str) else _Layer(node, None, None, True, geometry)
    if node.op in ("Gemm", "MatMul") and graph.constant(node.input(1)) is not None:
        if node.op == "Gemm" and (float(node.attr("alpha", 1.0)) != 1.0 or float(node.attr("beta", 1.0)) != 1.0):
            return None
        return _Layer(node, None, None, node.op == "Gemm", None)
    return None


def _row_width(graph: Graph, layer: _Layer) -> int:
    """Width of the layer's regressor row: C*kh*kw for a Conv, the input features of a Gemm/MatMul."""
    w = graph.constant(layer.node.input(1))
    if layer.geometry is not None:
        return int(np.prod(w.shape[1:]))
    transposed = layer.node.op == "Gemm" and int(layer.node.attr("transB", 0))
    return int(w.shape[1] if transposed else w.shape[0])


def _rows_of(analysis: ChannelAnalysis, layer: _Layer, group: Group) -> list[np.ndarray] | None:
    """For each channel index of `group`, the rows of `layer`'s regressor that carry it."""
    per_position = 1
    if layer.geometry is not None:
        per_position = math.prod(layer.geometry[0])
    rows: list[list[int]] = [[] for _ in range(group.size)]
    for pos, idx in analysis.positions_of(layer.node.input(0), group):
        rows[idx].extend(range(pos * per_position, (pos + 1) * per_position))
    if any(not r for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return [np.array(r) for r in rows]


def _greedy(states: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]], size: int) -> np.ndarray:
    """Scores from the greedy removal order; `states` holds (H^-1, W, rows [size, b], energy) per reader.
    A wide group loses its channels in at most STEPS chunks of the cheapest ones, each chunk one
    joint update: one channel at a time would be size rank-b updates of a [D, D] matrix."""
    alive = np.ones(size, bool)
    scores = np.zeros(size)
    floor = 0.0
    chunk = max(1, math.ceil(size / STEPS))
    while alive.sum() > 1:
        idx = np.flatnonzero(alive)
        cost = np.zeros(len(idx))
        for hinv, w, rows, energy in states:
            b = rows[idx]                                            # [k, b]
            blocks = hinv[b[:, :, None], b[:, None, :]]              # [k, b, b]
            wb = w[b]                                                # [k, b, M]
            cost += np.einsum("kbm,kbm->k", wb, np.linalg.solve(blocks, wb)) / energy
        order = np.argsort(cost, kind="stable")[:min(chunk, len(idx) - 1)]
        for j in order:
            # a later removal never scores below an earlier one: the order stays the greedy order, and
            # the scores of the channels removed add up to (at least) their loss together
            floor = max(float(np.nextafter(floor, np.inf)), float(cost[j]))
            scores[idx[j]] = floor
        gone = idx[order]
        alive[gone] = False
        for hinv, w, rows, _ in states:
            b = rows[gone].ravel()
            col = hinv[:, b] @ np.linalg.inv(hinv[np.ix_(b, b)])    # [D, |b|]
            w -= col @ w[b]
            hinv -= col @ hinv[b, :]
            hinv[b, :] = 0.0
            hinv[:, b] = 0.0
    scores[np.flatnonzero(alive)] = 2 * floor + 1.0  # the last channel: removing it loses everything
    return scores


def reconstruction_scores(graph: Graph, analysis: ChannelAnalysis, groups: list[Group],
                          calibration: Iterable[Feed], *, threads: int = 1, seed: int = 0,
                          progress: Callable[[int], None] | None = None,
                          probing: Callable[[int, int], None] | None = None) -> dict[int, np.ndarray]:
    """Scores per group id, voted by the group's dense readers (Conv with group 1, Gemm, MatMul)
    whose regressor rows are at most MAX_ROWS wide; a group with no such reader is left out (the
    caller scores it another way). When every group is scored, each group's scores are multiplied by
    its gain at the output (see output_gains; the median gain where its probe cannot tell).
    `progress(samples read)` while the Gram matrices fill, `probing(groups probed, groups)` after."""
    readers: dict[str, _Layer] = {}
    plans: dict[int, list[tuple[_Layer, list[np.ndarray]]]] = {}
    for g in groups:
        dense = [r for r in g.readers if r.op in ("Conv", "Gemm", "MatMul")]
        parts = []
        for node in dense:
            layer = readers.get(node.id) or _dense_reader(graph, node)
            if layer is None or _row_width(graph, layer) > MAX_ROWS:
                continue
            rows = _rows_of(analysis, layer, g)
            if rows is not None:
                readers[node.id] = layer
                parts.append((layer, rows))
        if parts:
            plans[g.id] = parts
    if not plans:
        return {}
    feeds = list(calibration)
    used = {layer.node.id: layer for parts in plans.values() for layer, _ in parts}
    tensors = list(dict.fromkeys(layer.node.input(0) for layer in used.values()))
    session = make_session(graph.to_model(extra_outputs=tensors), threads=threads)
    rng = np.random.default_rng(seed)
    per_feed = max(1, math.ceil(ROWS_PER_LAYER / max(len(feeds), 1)))
    gram: dict[str, np.ndarray] = {}
    pending: dict[str, list[np.ndarray]] = {}
    for i, feed in enumerate(feeds):
        (out,) = run_feeds(session, [feed])
        for key, layer in used.items():
            x = out[layer.node.input(0)]
            if layer.geometry is None:
                x = x.reshape(-1, x.shape[-1]) if layer.node.op == "MatMul" else x.reshape(x.shape[0], -1)
                total = x.shape[0]
            else:
                total = x.shape[0] * math.prod(output_size(x.shape[2:], layer.geometry))
            rows = _rows(x, layer, sample(total, per_feed, rng))
            if layer.bias:
                rows = np.hstack([rows, np.ones((len(rows), 1))])
            pending.setdefault(key, []).append(rows)
            if sum(len(r) for r in pending[key]) >= FLUSH_ROWS:
                _flush(gram, pending, key)
        if progress:
            progress(i + 1)
    del session
    for key in list(pending):
        _flush(gram, pending, key)
    inverse: dict[str, np.ndarray] = {}
    energy: dict[str, float] = {}  # ||X W||^2 of each reader: what its losses are relative to
    scores: dict[int, np.ndarray] = {}
    for g in groups:
        if g.id not in plans:
            continue
        states = []
        for layer, rows in plans[g.id]:
            key = layer.node.id
            h = gram[key]
            w = _weights(graph, layer)
            if key not in inverse:
                inverse[key] = np.linalg.inv(h + _ridge(h) * np.eye(len(h)))
                energy[key] = float((w * (h @ w)).sum()) or 1.0
            states.append((inverse[key].copy(), w.copy(), np.stack(rows), energy[key]))
        scores[g.id] = _greedy(states, g.size)
    if len(plans) < len(groups):
        # some groups are scored another way, relative to their mean: a gain would cancel (see
        # importance.score_groups)
        return scores
    gains = output_gains(graph, groups, plans, gram, energy, scores, feeds[-PROBE_SAMPLES:], threads, probing)
    known = [v for v in gains.values() if v is not None]
    fallback = float(np.median(known)) if known else 1.0
    return {gid: s * (fallback if gains.get(gid) is None else gains[gid]) for gid, s in scores.items()}


def _ridge(h: np.ndarray) -> float:
    """The ridge added to the diagonal of a reader's Gram matrix (see DAMP)."""
    return DAMP * float(np.mean(np.diag(h)) or 1.0)


def _mixes_channels(graph: Graph, node: Node) -> bool:
    """Whether a reader adds channels together, so that cutting some loses what a refit must win
    back (a depthwise conv or an elementwise op loses nothing with the channels that go)."""
    if node.op in ("Gemm", "MatMul", "ConvTranspose"):
        return True
    if node.op == "Conv":
        w = graph.constant(node.input(1))
        return w is None or w.ndim < 2 or w.shape[1] > 1
    return False


def output_gains(graph: Graph, groups: list[Group], plans: dict[int, list[tuple[_Layer, list[np.ndarray]]]],
                 gram: dict[str, np.ndarray], energy: dict[str, float], scores: dict[int, np.ndarray],
                 feeds: list[Feed], threads: int,
                 progress: Callable[[int, int], None] | None = None) -> dict[int, float | None]:
    """Per group: the model's relative output error with PROBE_SHARE of the group's channels gone
    (the lowest-scoring) and its readers refit, over the readers' loss after that refit (their
    relative error, the unit of the scores; the scores of those channels add up to at least it:
    dividing by that sum instead lost more on the digits MobileNetV2, 1.11 points against 0.73 at a
    global ratio of 0.4). None where the probe cannot tell: a reader that mixes the
    group's channels is not refit here (so the error would be a plain cut's), a reader writes the
    same group, the probe would take the whole group, or the error is nil or not finite."""
    model = graph.to_model()
    reference = run_model(model, feeds, threads=threads)
    power = sum(float((np.asarray(v, np.float64) ** 2).sum()) for r in reference for v in r.values())
    gains: dict[int, float | None] = {}
    if not (math.isfinite(power) and power > 0):
        return gains
    for k, g in enumerate(groups):
        if progress is not None:  # a probe runs the model: tens of seconds over a ResNet-50's groups
            progress(k, len(groups))
        if g.id not in scores:
            continue
        gains[g.id] = None
        refit_here = {layer.node.id for layer, _ in plans[g.id]}
        if any(_mixes_channels(graph, r) and r.id not in refit_here for r in g.readers):
            continue
        gone = max(g.blocks, round(g.size * PROBE_SHARE) // g.blocks * g.blocks)
        if gone >= g.size:
            continue
        kept = select.choose(scores[g.id], g.size - gone, g.blocks)
        removed = np.setdiff1d(np.arange(g.size), kept)
        trial = pruned_copy(model, graph.input_shapes, g, kept)
        if trial is None:
            continue
        refits, loss = [], 0.0
        for layer, rows in plans[g.id]:
            node = trial.producer(layer.node.outputs[0])
            h = gram[layer.node.id]
            keep_rows = np.setdiff1d(np.arange(len(h)), np.concatenate([rows[i] for i in removed]))
            w = _weights(graph, layer)
            weight = trial.constant(node.input(1)) if node is not None and node.op == layer.node.op else None
            if weight is None or weight.size != (len(keep_rows) - layer.bias) * w.shape[1]:
                break  # the reader's own output channels went too: it writes the same group
            kept_gram = h[np.ix_(keep_rows, keep_rows)]
            target = h[keep_rows] @ w  # X_k' X W
            refit = np.linalg.solve(kept_gram + _ridge(h) * np.eye(len(keep_rows)), target)
            refits.append((dataclasses.replace(layer, node=node), refit))
            # ||X W - X_k W'||^2 over ||X W||^2, from the Gram matrix alone
            full = energy[layer.node.id]
            cross = float((refit * target).sum())
            kept_part = float((refit * (kept_gram @ refit)).sum())
            loss += max(full - 2 * cross + kept_part, 0.0) / full
        else:
            for layer, refit in refits:
                _store(trial, layer, refit)
            got = run_model(trial.to_model(), feeds, threads=threads)
            error = sum(float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum())
                        for r, c in zip(reference, got) for a, b in zip(r.values(), c.values()))
            gain = error / power / loss if loss > 0 else math.nan
            gains[g.id] = gain if math.isfinite(gain) and gain > 0 else None
    if progress is not None:
        progress(len(groups), len(groups))
    return gains


def _flush(gram: dict[str, np.ndarray], pending: dict[str, list[np.ndarray]], key: str) -> None:
    """Add the waiting rows to X'X in one product (one per row block would be BLAS-2 speed)."""
    rows = pending.pop(key, [])
    if rows:
        x = np.concatenate(rows)
        if key in gram:
            gram[key] += x.T @ x
        else:
            gram[key] = x.T @ x

