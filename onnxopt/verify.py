"""Output fidelity between two models run on the same feeds.

max_rel is the largest absolute difference divided by the largest magnitude of the reference output
(per output): element-wise relative error is meaningless near zero, and this scale-normalized form
is what "max relative output error <= 1e-5" means throughout onnxopt.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .runtime import Feed


@dataclasses.dataclass(frozen=True)
class OutputFidelity:
    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None  # for [N, classes] outputs; None otherwise


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """Worst case over all outputs, plus each output's own numbers."""

    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None
    samples: int
    outputs: dict[str, OutputFidelity]

    def within(self, rtol: float) -> bool:
        return self.max_rel <= rtol and np.isfinite(self.max_abs)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(reference: Sequence[Feed], candidate: Sequence[Feed]) -> Fidelity:
    """Compare outputs sample by sample. Outputs are matched by position (names may differ after a
    rewrite only if a pass renamed a graph output, which onnxopt never does)."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate ran on different numbers of samples")
    names = list(reference[0]) if reference else []
    per: dict[str, OutputFidelity] = {}
    for k, name in enumerate(names):
        ref = np.concatenate([np.asarray(list(r.values())[k], dtype=np.float64).ravel() for r in reference])
        got = np.concatenate([np.asarray(list(c.values())[k], dtype=np.float64).ravel() for c in candidate])
        if ref.shape != got.shape:
            per[name] = OutputFidelity(float("inf"), float("inf"), 0.0, 0.0)
            continue
        diff = np.abs(ref - got)
        max_abs = float(diff.max()) if diff.size else 0.0
        if not np.all(np.isfinite(got)):
            max_abs = float("inf")
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        top1 = None
        first = np.asarray(list(reference[0].values())[k])
        if first.ndim == 2 and first.shape[1] > 1:
            agree = [np.argmax(np.asarray(list(r.values())[k]), 1) == np.argmax(np.asarray(list(c.values())[k]), 1)
                     for r, c in zip(reference, candidate)]
            top1 = float(np.concatenate(agree).mean())
        per[name] = OutputFidelity(max_abs, max_rel, _cosine(ref, got), top1)
    tops = [o.top1_agreement for o in per.values() if o.top1_agreement is not None]
    return Fidelity(
        max_abs=max((o.max_abs for o in per.values()), default=0.0),
        max_rel=max((o.max_rel for o in per.values()), default=0.0),
        cosine=min((o.cosine for o in per.values()), default=1.0),
        top1_agreement=min(tops) if tops else None,
        samples=len(reference),
        outputs=per,
    )
