"""How much each channel of a coupled group matters, one score per channel index.

- `l1` / `l2`: the norm of each filter (Li et al. 2016). A filter followed by BatchNormalization is
  measured as BN leaves it (scaled by |gamma / sqrt(var + eps)|): BN rescales channels freely, so
  the raw norm of a conv before BN says little.
- `bn`: |gamma| of the BatchNormalization after each producer (Liu et al. 2017, "Network
  Slimming"); read before fold-bn removes the BN. Groups without a BN fall back to `l1`.
- `data`: the output energy each channel feeds into the layers that read it, measured on the
  calibration samples: sqrt(E[x_c^2] * ||W[:, c]||^2) summed over readers.
- `recon`: what the readers lose once refit without the channel, chosen greedily (see
  `reconstruction`); groups it cannot score fall back to `data`.

Scores of the layers in one group are each divided by their mean before they are averaged, so no
layer dominates by scale alone.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from onnxopt.analysis.channels import ChannelAnalysis, Group
from onnxopt.graph.core import Graph, Node
from onnxopt.runtime.sessions import Feed, make_session, run_feeds

from ..fold_bn import _bn_affine
from .reconstruction import reconstruction_scores


def _normalized_mean(rows: list[np.ndarray]) -> np.ndarray:
    rows = [r / r.mean() if r.mean() > 0 else r for r in rows]
    return np.mean(rows, axis=0)


def _following_bn(graph: Graph, producer: Node) -> Node | None:
    reader = graph.sole_consumer(producer.outputs[0])
    return reader if reader is not None and reader.op == "BatchNormalization" else None


def _bn_scale(graph: Graph, bn: Node) -> np.ndarray | None:
    """|gamma / sqrt(var + eps)|: fold-bn's per-channel scale of the BN, None where it declines."""
    affine = _bn_affine(graph, bn)
    return None if isinstance(affine, str) else np.abs(affine.scale)


def filter_norms(graph: Graph, group: Group, p: int) -> np.ndarray:
    rows = []
    for space in group.spaces:
        if space.producer is None or space.weight is None:
            continue
        rows_of = slice(space.offset, space.offset + space.size)
        w = np.moveaxis(graph.constant(space.weight).astype(np.float64), space.axis, 0)
        w = w.reshape(w.shape[0], -1)[rows_of]
        norm = np.abs(w).sum(axis=1) if p == 1 else np.sqrt((w * w).sum(axis=1))
        bn = _following_bn(graph, space.producer)
        scale = _bn_scale(graph, bn) if bn is not None else None
        scale = scale[rows_of] if scale is not None else None
        rows.append(norm * scale if scale is not None and scale.shape == norm.shape else norm)
    return _normalized_mean(rows) if rows else np.ones(group.size)


def bn_gammas(graph: Graph, group: Group) -> np.ndarray | None:
    rows = []
    for space in group.spaces:
        bn = _following_bn(graph, space.producer) if space.producer is not None else None
        gamma = graph.constant(bn.input(1)) if bn is not None else None
        if gamma is not None and gamma.ndim == 1:
            part = gamma[space.offset:space.offset + space.size]
            if part.shape == (group.size,):
                rows.append(np.abs(part.astype(np.float64)))
    return _normalized_mean(rows) if rows else None


def _reader_weight_energy(graph: Graph, reader: Node) -> np.ndarray | None:
    """||W[:, p]||^2 per input position of a dense reader."""
    w = graph.constant(reader.input(1))
    if w is None:
        return None
    w = w.astype(np.float64)
    if reader.op == "Conv":
        if int(reader.attr("group", 1)) != 1:
            return None
        return (w * w).sum(axis=(0, *range(2, w.ndim)))
    if reader.op == "ConvTranspose":
        return (w * w).reshape(w.shape[0], -1).sum(axis=1)
    if reader.op == "Gemm" and int(reader.attr("transB", 0)):
        return (w * w).sum(axis=0)
    return (w * w).sum(axis=1)  # MatMul / Gemm without transB: [K, M]


def channel_energy(graph: Graph, tensors: list[str], calibration: Iterable[Feed], *, threads: int = 1,
                   limit: int | None = None, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """E[x^2] per channel position of each tensor over the calibration samples (streamed)."""
    model = graph.to_model(extra_outputs=tensors)
    session = make_session(model, threads=threads)
    sums = {t: None for t in tensors}
    counts = dict.fromkeys(tensors, 0)
    for i, feed in enumerate(calibration):
        if limit is not None and i >= limit:
            break
        (out,) = run_feeds(session, [feed])
        for t in tensors:
            x = out[t].astype(np.float64)
            axes = (0, *range(2, x.ndim))
            s = (x * x).sum(axis=axes)
            sums[t] = s if sums[t] is None else sums[t] + s
            counts[t] += x.size // x.shape[1]
        if progress:
            progress(i + 1)
    return {t: sums[t] / max(counts[t], 1) for t in tensors if sums[t] is not None}


def data_scores(graph: Graph, analysis: ChannelAnalysis, group: Group,
                energy: dict[str, np.ndarray]) -> np.ndarray | None:
    rows = []
    for reader in group.readers:
        t = reader.input(0)
        w_energy = _reader_weight_energy(graph, reader)
        if t not in energy or w_energy is None:
            continue
        row = np.zeros(group.size)
        for pos, idx in analysis.positions_of(t, group):
            row[idx] += energy[t][pos] * w_energy[pos]
        rows.append(np.sqrt(row))
    return _normalized_mean(rows) if rows else None


def reader_inputs(groups: list[Group]) -> list[str]:
    return list(dict.fromkeys(r.input(0) for g in groups for r in g.readers))


def score_groups(graph: Graph, analysis: ChannelAnalysis, groups: list[Group], criterion: str, *,
                 calibration: Iterable[Feed] | None = None, threads: int = 1, limit: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 probing: Callable[[int, int], None] | None = None) -> tuple[dict[int, np.ndarray], list[str]]:
    """Scores per group id, in one unit across groups (the latency planner and a global ranking
    compare them as they are), and notes on fallbacks. recon's are predicted output errors where it
    scored every group; every other criterion's are relative to the group's mean (a filter norm or
    an output energy says which channels of a layer matter least, not how much a layer matters
    against another), and so are recon's where some group is scored another way."""
    notes: list[str] = []
    energy = {}
    recon = {}
    if criterion == "recon":
        recon = reconstruction_scores(graph, analysis, groups, list(calibration or ()), threads=threads,
                                      progress=progress, probing=probing)
    # output energy scores `data`, and the groups `recon` could not score: only their readers are run for it
    unscored = [g for g in groups if g.id not in recon]
    if criterion == "recon" and unscored and recon:
        notes.append(f"criterion recon: {len(unscored)} of {len(groups)} group(s) have no dense reader to refit and "
                     f"are scored by output energy, e.g. {unscored[0].label}; groups are weighed against each "
                     "other by their mean score")
    if criterion in ("data", "recon") and unscored:
        energy = channel_energy(graph, reader_inputs(unscored), calibration or (), threads=threads, limit=limit,
                                progress=progress)
    scores: dict[int, np.ndarray] = {}
    fell_back = []
    for grp in groups:
        s = None
        if criterion == "bn":
            s = bn_gammas(graph, grp)
        elif criterion == "recon" and grp.id in recon:
            s = recon[grp.id]
        elif criterion in ("data", "recon"):
            s = data_scores(graph, analysis, grp, energy)
        if s is None and criterion in ("bn", "data", "recon"):
            fell_back.append(grp.label)
        scores[grp.id] = s if s is not None else filter_norms(graph, grp, 2 if criterion == "l2" else 1)
    if fell_back:
        why = "no BatchNormalization after its layers" if criterion == "bn" else "no dense layer reads it"
        notes.append(f"criterion {criterion}: {len(fell_back)} group(s) scored by l1 instead ({why}), "
                     f"e.g. {fell_back[0]}")
    if criterion != "recon" or unscored:
        scores = {gid: _normalized_mean([s]) for gid, s in scores.items()}
    return scores, notes
