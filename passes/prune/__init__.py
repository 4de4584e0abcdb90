"""Structured filter pruning: whole output channels of Conv/Gemm layers go, and the graph shrinks.

Li et al. 2016, "Pruning Filters for Efficient ConvNets": rank each layer's filters by their norm
and remove the weakest with the feature maps they produce and the kernels that read them. On a
real graph channels are coupled (a residual Add makes the layers that feed it keep the same
channels, Concat stacks channels of several layers, a depthwise conv and a squeeze-excitation gate
follow the channels they read, a Flatten before a Gemm spreads each channel over H*W columns):
`onnxopt.analysis.channels` finds the coupled groups, each group keeps one set of indices, and
`onnxopt.graph.shrink` cuts every weight that touches them. Whatever the analysis does not understand
keeps its channels and is reported.

Without training, what the removed channels contributed is recovered from calibration data, if
given: every layer that read pruned channels is refit by least squares to the original network's
outputs of that layer (He et al. 2017, "Channel Pruning"; Luo et al. 2017, "ThiNet"), its bias
absorbing the mean of what was removed (see `recover`).
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Literal

import numpy as np

from onnxopt.analysis.channels import ChannelAnalysis, Group
from onnxopt.analysis.cost import node_macs
from onnxopt.graph.core import Graph
from onnxopt.graph.shrink import shrink
from onnxopt.pipeline.contract import Pass, PassContext, PassResult
from onnxopt.pipeline.options import check_patterns, option
from onnxopt.pipeline.registry import register_pass
from onnxopt.runtime.sessions import nchwc_block

from . import select
from .importance import score_groups
from .recover import recover
from .sensitivity import sensitivity_table

__all__ = ["Prune"]


def _parse_overrides(items: tuple[str, ...]) -> list[tuple[str, float]]:
    out = []
    for item in items:
        pattern, sep, value = item.rpartition("=")
        if not sep or not pattern:
            raise ValueError(f"ratios entry {item!r} is not PATTERN=RATIO")
        try:
            ratio = float(value)
        except ValueError:
            raise ValueError(f"ratios entry {item!r}: {value!r} is not a number") from None
        if not 0 <= ratio < 1:
            raise ValueError(f"ratios entry {item!r}: the ratio must be in [0, 1)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"ratios entry {item!r}: bad pattern ({exc})") from None
        out.append((pattern, ratio))
    return out


@register_pass
class Prune(Pass):
    name = "prune"
    summary = "remove whole Conv/Gemm output channels by importance, honouring every channel coupling"
    exact = False
    idempotent = False
    needs_static_shapes = True
    stage = 60

    @dataclasses.dataclass(frozen=True)
    class Options:
        ratio: float = option(0.3, "fraction of each group's channels to remove (of all channels with global)")
        criterion: Literal["auto", "l1", "l2", "bn", "data", "recon"] = option(
            "auto", "importance: filter norm l1/l2 (Li et al.), BN |gamma| (read before fold-bn), data (output "
                    "energy on --calib samples), recon (what the next layers lose after their least-squares refit, "
                    "on --calib samples: slower, more accurate); auto = data with --calib, else l1")
        global_ranking: bool = option(
            False, "rank channels of all groups together, scores normalized per group (recon: its predicted output "
                   "errors as they are; also: global=true)",
            aliases=("global",))
        ratios: tuple[str, ...] = option((), "per-layer overrides PATTERN=RATIO (node/weight name or regex, "
                                             "or op type), first match wins, e.g. 'layer1.*=0.1|fc=0'")
        max_ratio: float = option(1.0, "never remove more than this fraction of one group")
        min_channels: int = option(1, "never keep fewer channels than this in one group")
        round_to: int | Literal["auto"] = option(
            "auto", "keep a multiple of N channels per group; auto = the channel block of onnxruntime's CPU Conv "
                    "kernels on this machine (8 or 16, asked of onnxruntime; other widths run slower), 1 = no rounding")
        exclude: tuple[str, ...] = option((), "layers whose channels stay: node/weight names, regexes or op types")
        recover: bool = option(True, "refit the layers that read pruned channels by least squares (needs --calib)")
        samples: int = option(256, "calibration samples used for data importance and recovery")
        target_latency: float | None = option(
            None, "instead of ratio: reach this fraction of the model's measured latency (e.g. 0.6)")

        def __post_init__(self) -> None:
            if not 0 <= self.ratio < 1:
                raise ValueError(f"ratio must be in [0, 1), got {self.ratio:g}")
            if not 0 < self.max_ratio <= 1:
                raise ValueError(f"max-ratio must be in (0, 1], got {self.max_ratio:g}")
            if (self.round_to != "auto" and self.round_to < 1) or self.min_channels < 1 or self.samples < 1:
                raise ValueError("round-to, min-channels and samples must be at least 1")
            if self.target_latency is not None and not 0 < self.target_latency < 1:
                raise ValueError(f"target-latency must be in (0, 1), got {self.target_latency:g}")
            _parse_overrides(self.ratios)
            check_patterns("exclude", self.exclude)

    def needs_calibration(self) -> bool:
        return self.options.criterion in ("data", "recon")

    @property
    def _inert(self) -> bool:
        o = self.options
        return o.ratio == 0 and o.target_latency is None and not any(r > 0 for _, r in _parse_overrides(o.ratios))

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        o = self.options
        result = PassResult()
        if self._inert:
            return result
        analysis = ChannelAnalysis(graph)
        groups = self._candidates(graph, analysis, result)
        if not groups:
            result.notes.append("no prunable channel group")
            return result
        calibration = _Limited(ctx.calibration, o.samples) if ctx.calibration is not None else None
        criterion = o.criterion if o.criterion != "auto" else ("data" if calibration is not None else "l1")
        result.details["criterion"] = criterion
        if o.criterion == "auto":
            result.notes.append(f"importance: {criterion}" + (
                f" (output energy on {len(calibration)} calibration samples)" if criterion == "data" else
                " (filter norm; give --calib for data-driven importance and recovery)"))
        scores, notes = score_groups(graph, analysis, groups, criterion, calibration=calibration,
                                     threads=ctx.threads,
                                     progress=lambda i: ctx.progress("prune: importance", i, len(calibration)),
                                     probing=lambda i, n: ctx.progress("prune: output probes", i, n))
        result.notes += notes
        round_to = nchwc_block() if o.round_to == "auto" else o.round_to
        result.details["round_to"] = round_to
        limits = select.Limits(o.max_ratio, o.min_channels, round_to)
        overrides = _parse_overrides(o.ratios)
        for pattern, _ in overrides:
            if not any(select.matches(pattern, n) for g in analysis.groups for n in select.group_names(g)):
                result.notes.append(f"warning: ratios pattern '{pattern}' matches no layer")
        fixed = {g.id: r for g in groups if (r := select.ratio_for(g, -1.0, overrides)) >= 0}
        if o.target_latency is not None:
            from .latency import latency_plan
            fixed_plan = select.local_plan([g for g in groups if g.id in fixed], scores, fixed, limits)
            plan = latency_plan(graph, analysis, groups, scores, o.target_latency, limits, ctx, result,
                                fixed=fixed_plan, fixed_ids=set(fixed))
        elif o.global_ranking:
            plan = select.global_plan(groups, scores, o.ratio, fixed, limits)
        else:
            plan = select.local_plan(groups, scores, {g.id: fixed.get(g.id, o.ratio) for g in groups}, limits)
        macs = _group_macs(graph, analysis, groups)
        result.details["groups"] = [_group_row(g, scores[g.id], plan.get(g.id), macs) for g in groups]
        if ctx.dry_run:
            result.details["sensitivity"] = sensitivity_table(graph, groups, scores, limits, ctx, calibration)
        _tables(result)
        if not plan:
            result.notes.append("nothing to remove at this ratio (widths are already at their limits)")
            return result
        original = graph.to_model() if calibration is not None and o.recover else None
        shrink(graph, analysis, plan)
        removed = sum(next(g.size for g in groups if g.id == gid) - len(k) for gid, k in plan.items())
        result.changed = True
        result.count("groups pruned", len(plan))
        result.count("channels removed", removed)
        if original is not None:
            refit = recover(graph, original, analysis, plan, calibration, ctx, result)
            result.count("layers refit", refit)
        elif o.recover and calibration is None:
            result.notes.append("no calibration data: layers were not refit (give --calib for recovery)")
        return result

    def _candidates(self, graph: Graph, analysis: ChannelAnalysis, result: PassResult) -> list[Group]:
        told = set()
        for node, reason in analysis.unknown:
            result.skip(node, f"channels it reads stay: {reason}")
            told.add(node.id)
        exclude = self.options.exclude
        hit = set()
        groups = []
        frozen = result.details.setdefault("frozen", [])
        for g in analysis.groups:
            if g.size < 2 or not g.producers:
                continue
            if g.frozen is not None:
                frozen.append({"group": g.label, "channels": g.size, "why": g.frozen})
                # a classifier writing the graph output is expected to stay: not a decline
                if not g.frozen.startswith("reaches graph output") and not any(p.id in told for p in g.producers):
                    result.skip(g.producers[0], f"channels stay: {g.frozen}")
                continue
            names = select.group_names(g)
            matched = [p for p in exclude if any(select.matches(p, n) for n in names)]
            if matched:
                hit.update(matched)
                result.skip(g.producers[0], f"excluded by '{matched[0]}'")
                continue
            groups.append(g)
        for pattern in exclude:
            if pattern not in hit and not any(select.matches(pattern, n) for g in analysis.groups
                                              for n in select.group_names(g)):
                result.notes.append(f"warning: exclude pattern '{pattern}' matches no layer")
        return groups


class _Limited:
    """The first `n` feeds of a calibration set, re-iterable, with its held-back tail."""

    def __init__(self, feeds, n: int) -> None:
        if iter(feeds) is feeds:  # a generator: importance and recovery each read it, so keep it
            feeds = list(itertools.islice(feeds, n))
        self.feeds, self.n = feeds, n

    def __iter__(self):
        for i, feed in enumerate(self.feeds):
            if i >= self.n:
                return
            yield feed

    def __len__(self) -> int:
        try:
            return min(len(self.feeds), self.n)
        except TypeError:
            return self.n


def _group_macs(graph: Graph, analysis: ChannelAnalysis, groups: list[Group]) -> dict[int, float]:
    """Share of the model's MACs spent in layers that produce or read each group's channels."""
    ids = {g.id for g in groups}
    total, per = 0, dict.fromkeys(ids, 0)
    for n in graph.nodes():
        if n.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        m = node_macs(graph, n) or 0
        total += m
        touched = set()
        for t in (n.input(0), n.outputs[0]):
            roots = analysis.roots(t)
            if roots is not None:
                touched |= set(np.unique(roots).tolist())
        for gid in touched & ids:
            per[gid] += m
    return {gid: per[gid] / total if total else 0.0 for gid in ids}


def _group_row(g: Group, scores: np.ndarray, keep: np.ndarray | None, macs: dict[int, float]) -> dict:
    return {
        "group": g.label,
        "layers": [p.label for p in g.producers],
        "readers": [r.label for r in g.readers],
        "channels": g.size,
        "kept": int(len(keep)) if keep is not None else g.size,
        "mac_share": round(macs.get(g.id, 0.0), 4),
        "importance": {"min": float(scores.min()), "median": float(np.median(scores)), "max": float(scores.max())},
    }


def _tables(result: PassResult) -> None:
    rows = [[r["group"], str(len(r["layers"])), str(r["channels"]), str(r["kept"]), f"{r['mac_share']:.1%}",
             f"{r['importance']['min']:.2f}/{r['importance']['median']:.2f}"] for r in result.details["groups"]]
    tables = [{"title": "channel groups", "headers": ["group", "layers", "channels", "kept", "MACs touched",
                                                     "importance min/median"], "rows": rows}]
    sens = result.details.get("sensitivity")
    if sens:
        ratios = sens["ratios"]
        tables.append({"title": f"sensitivity: {sens.get('measure', 'output cosine')} vs original with only this "
                                "group pruned",
                       "headers": ["group", *[f"{r:.0%}" for r in ratios]],
                       "rows": [[row["group"], *[f"{c:.4f}" if c is not None else "-" for c in row["cosine"]]]
                                for row in sens["rows"]]})
    result.details["tables"] = tables

