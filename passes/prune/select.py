"""Which channels go: per-group ratios (local) or one ranking over all groups (global), then the
limits a deployment needs (max ratio per group, a minimum width, widths rounded to a multiple)."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from onnxopt.analysis.channels import Group


@dataclasses.dataclass(frozen=True)
class Limits:
    max_ratio: float = 1.0
    min_channels: int = 1
    round_to: int = 1


def matches(pattern: str, name: str) -> bool:
    """A node or op name matches a pattern that equals it or, as a regex, matches all of it."""
    if pattern == name:
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def group_names(group: Group) -> list[str]:
    names = []
    for space in group.spaces:
        if space.producer is not None:
            names += [space.producer.name, space.producer.op]
            if space.weight:
                names.append(space.weight)
    return [n for n in names if n]


def ratio_for(group: Group, default: float, overrides: list[tuple[str, float]]) -> float:
    """The first override whose pattern matches a layer of the group, else the default."""
    names = group_names(group)
    for pattern, ratio in overrides:
        if any(matches(pattern, n) for n in names):
            return ratio
    return default


def legal_keep(group: Group, keep: int, limits: Limits) -> int:
    """The smallest legal width >= keep: at least min_channels and (1 - max_ratio) of the group, a
    multiple of round_to and of the group's block count (grouped convs); the full width when no
    smaller legal width exists."""
    size = group.size
    floor = max(limits.min_channels, math.ceil(size * (1 - limits.max_ratio) - 1e-9), 1)
    keep = max(keep, floor)
    step = math.lcm(max(limits.round_to, 1), group.blocks)
    keep = math.ceil(keep / step) * step
    return size if keep >= size else keep


def choose(scores: np.ndarray, keep: int, blocks: int) -> np.ndarray:
    """Indices of the `keep` highest scores; with blocks, the same number from each block."""
    if blocks == 1:
        order = np.argsort(-scores, kind="stable")
        return np.sort(order[:keep])
    per, width = keep // blocks, len(scores) // blocks
    parts = [b * width + np.argsort(-scores[b * width:(b + 1) * width], kind="stable")[:per] for b in range(blocks)]
    return np.sort(np.concatenate(parts))


def local_plan(groups: list[Group], scores: dict[int, np.ndarray], ratios: dict[int, float],
               limits: Limits) -> dict[int, np.ndarray]:
    plan = {}
    for g in groups:
        r = ratios[g.id]
        if r <= 0:
            continue
        keep = legal_keep(g, g.size - int(math.floor(g.size * r + 1e-9)), limits)
        if keep < g.size:
            plan[g.id] = choose(scores[g.id], keep, g.blocks)
    return plan


def global_plan(groups: list[Group], scores: dict[int, np.ndarray], ratio: float, fixed: dict[int, float],
                limits: Limits) -> dict[int, np.ndarray]:
    """Remove the lowest-scoring channels of all groups together (scores in one unit across groups,
    as importance.score_groups gives them) until `ratio` of the channels are gone; groups in `fixed`
    (an override applies) are planned locally at their own ratio."""
    plan = local_plan([g for g in groups if g.id in fixed], scores, fixed, limits)
    free = [g for g in groups if g.id not in fixed]
    total = sum(g.size for g in free)
    budget = int(math.floor(total * ratio + 1e-9))
    if budget <= 0 or not free:
        return plan
    entries = []
    for g in free:
        entries += [(float(v), g.id, int(i)) for i, v in enumerate(scores[g.id])]
    entries.sort()
    limit = {g.id: g.size - legal_keep(g, 1, dataclasses.replace(limits, round_to=1)) for g in free}
    removed = {g.id: 0 for g in free}
    taken = 0
    for _, gid, _ in entries:
        if taken >= budget:
            break
        if removed[gid] < limit[gid]:
            removed[gid] += 1
            taken += 1
    for g in free:
        if removed[g.id]:
            keep = legal_keep(g, g.size - removed[g.id], limits)
            if keep < g.size:
                plan[g.id] = choose(scores[g.id], keep, g.blocks)
    return plan
