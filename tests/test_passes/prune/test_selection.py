"""Channel selection (passes/prune/select.py): legal keep-sets under round-to, min-channels and
max-ratio limits, and a global plan that removes exactly its budget."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest

from onnxopt.passes.prune import select


def fake_group(size, blocks=1):
    return types.SimpleNamespace(size=size, blocks=blocks, id=0)


@pytest.mark.parametrize("size,keep,limits,blocks,want", [
    (10, 3, select.Limits(), 1, 3),
    (10, 3, select.Limits(round_to=4), 1, 4),
    (10, 9, select.Limits(round_to=4), 1, 10),        # no legal width below 10: stays whole
    (10, 1, select.Limits(max_ratio=0.5), 1, 5),
    (3, 1, select.Limits(max_ratio=1 / 3), 1, 2),     # float: 3 * (1 - 1/3) is 2.0000000000000004
    (10, 1, select.Limits(min_channels=12), 1, 10),
    (12, 5, select.Limits(round_to=4), 3, 12),        # lcm(4, 3) = 12
    (24, 5, select.Limits(round_to=4), 3, 12),
    (8, 1, select.Limits(), 4, 4),
])
def test_legal_keep(size, keep, limits, blocks, want):
    assert select.legal_keep(fake_group(size, blocks), keep, limits) == want


def test_global_plan_removes_the_budget_exactly_without_rounding():
    groups = [types.SimpleNamespace(size=s, blocks=1, id=i) for i, s in enumerate((8, 16, 24))]
    rng = np.random.default_rng(3)
    scores = {g.id: rng.uniform(0.1, 1, g.size) for g in groups}
    plan = select.global_plan(groups, scores, 0.25, {}, select.Limits())
    removed = sum(g.size - len(plan.get(g.id, np.arange(g.size))) for g in groups)
    assert removed == math.floor(48 * 0.25)
    assert all(len(k) >= 1 for k in plan.values())
