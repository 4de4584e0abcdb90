"""Latency-aware ratios (placeholder until the measured planner lands)."""
from __future__ import annotations


def latency_plan(graph, analysis, groups, scores, target, limits, ctx, result):
    raise NotImplementedError("target-latency is not implemented yet")
