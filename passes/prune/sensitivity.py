"""Dry run: how much the outputs move when one group alone is pruned, at a few ratios.

For each coupled group the model is pruned at each ratio with every other group left whole and
run on a few samples; the cosine of its outputs with the original's says which groups tolerate
pruning (a sensitivity scan in the manner of Li et al. 2016, Fig. 2). The centred cosine where the
original's outputs vary over the samples: what the input decides, which a plain cosine hides where
most of an output is the same for every input (runtime.fidelity.centred_cosine)."""
from __future__ import annotations

import numpy as np
import onnx

from onnxopt.analysis.channels import ChannelAnalysis, Group
from onnxopt.graph.core import Graph
from onnxopt.graph.shrink import shrink
from onnxopt.pipeline.contract import PassContext
from onnxopt.runtime.fidelity import compare, cosine_agreement
from onnxopt.runtime.sessions import random_feeds, run_model

from . import select

RATIOS = (0.25, 0.5, 0.75)
SAMPLES = 4


def sensitivity_table(graph: Graph, groups: list[Group], scores: dict[int, np.ndarray], limits: select.Limits,
                      ctx: PassContext, calibration=None) -> dict:
    model = graph.to_model()
    shapes = graph.input_shapes
    feeds = list(calibration.feeds.tail(SAMPLES)) if calibration is not None and hasattr(
        getattr(calibration, "feeds", None), "tail") else []
    if not feeds:
        feeds = random_feeds(model, shapes, seed=ctx.seed, count=SAMPLES)
    reference = run_model(model, feeds, threads=ctx.threads)
    rows = []
    for k, g in enumerate(groups):
        cosines = []
        for r in RATIOS:
            keep = select.legal_keep(g, g.size - int(g.size * r), limits)
            if keep >= g.size:
                cosines.append(None)
                continue
            trial = pruned_copy(model, shapes, g, select.choose(scores[g.id], keep, g.blocks))
            if trial is None:
                raise RuntimeError(f"{g.label}: not found again in the model")
            fid = compare(reference, run_model(trial.to_model(), feeds, threads=ctx.threads))
            cosines.append(round(cosine_agreement(fid)[1], 6))
        rows.append({"group": g.label, "channels": g.size, "cosine": cosines})
        ctx.progress("prune: sensitivity", k + 1, len(groups))
    return {"ratios": list(RATIOS), "samples": len(feeds), "rows": rows,
            "measure": cosine_agreement(compare(reference, reference))[0]}


def pruned_copy(model: onnx.ModelProto, shapes: dict, group: Group, keep: np.ndarray) -> Graph | None:
    """A fresh graph of `model` with only `group`'s channels outside `keep` removed (the group found
    again in it by its key; None where it is not)."""
    trial = Graph(model, input_shapes=shapes)
    analysis = ChannelAnalysis(trial)
    same = analysis.group_by_key(group.key)
    if same is None:
        return None
    shrink(trial, analysis, {same.id: keep})
    return trial
