"""Output fidelity between two models run on the same feeds.

max_rel is the largest absolute difference divided by the largest magnitude of the reference output
(per output): element-wise relative error is meaningless near zero, and this scale-normalized form
is what "max relative output error <= 1e-5" means throughout onnxopt.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from .sessions import Feed


@dataclasses.dataclass(frozen=True)
class OutputFidelity:
    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None  # for [N, classes] outputs; None otherwise
    centred_cosine: float | None = None  # what the input decides (centred_cosine()); None: cannot be centred


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """Worst case over all outputs, plus each output's own numbers."""

    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None
    samples: int  # runs compared: samples where the caller split batched runs (per_sample), else batches
    outputs: dict[str, OutputFidelity]
    centred_cosine: float | None = None  # as centred_cosine() takes it: None where no output can be centred

    def within(self, rtol: float) -> bool:
        return self.max_rel <= rtol and np.isfinite(self.max_abs)

    @property
    def worst(self) -> str | None:
        """The output that moved most (by max_rel)."""
        return max(self.outputs, key=lambda k: self.outputs[k].max_rel, default=None)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def top1(outputs: Sequence[Feed], labels: np.ndarray, fed: int | None = None) -> float:
    """Top-1 accuracy over runs of a model against one integer label per sample fed (`fed`: the
    samples the runs took, when labels hold more), read from the first output shaped [N, classes]
    ([N, classes, 1, 1] of a 1x1-conv head too, or [classes] where each run took one sample): name
    the logits first where another output has that shape. Raises ValueError, saying why, where the
    number would mean nothing: no such output (a detector's boxes, a segmentation map: an argmax over
    them is no class), other than one prediction per sample, labels other than [N] or [N, 1]."""
    if not outputs:
        raise ValueError("no runs to score")
    labels = np.asarray(labels)
    if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
        raise ValueError(f"labels shaped {list(labels.shape)}: top-1 needs one class index per sample "
                         "(for one-hot rows, their argmax)")
    labels = labels.reshape(-1)
    names = list(outputs[0])
    for name in names:
        first = np.asarray(outputs[0][name])
        if first.ndim == 1 and first.size > 1:  # a batch-1 model's squeezed [classes]: a sample per run
            predicted = np.array([int(np.argmax(o[name])) for o in outputs])
        # [N, classes], or with unit dims about the classes ([N, classes, 1, 1] of a 1x1-conv head)
        elif first.ndim >= 2 and max(first.shape[1:]) > 1 and np.prod(first.shape[1:]) == max(first.shape[1:]):
            predicted = np.concatenate([np.asarray(o[name]).reshape(len(o[name]), -1).argmax(1) for o in outputs])
        else:
            continue
        wanted = len(labels) if fed is None else fed
        if len(predicted) != wanted or wanted > len(labels):
            raise ValueError(f"output {name!r} gave {len(predicted)} predictions for {wanted} samples "
                             f"({len(labels)} labels): top-1 needs one [classes] row per sample")
        return float(np.mean(predicted == labels[:wanted]))
    shapes = ", ".join(f"{k} {list(np.shape(outputs[0][k]))}" for k in names)
    raise ValueError(f"top-1 needs an output shaped [N, classes]; the model gives {shapes}")


def top1_accuracy(outputs: Sequence[Feed], labels: np.ndarray) -> float | None:
    """top1(), or None where it means nothing (a side-by-side table shows no accuracy there)."""
    try:
        return top1(outputs, labels)
    except ValueError:
        return None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(reference: Sequence[Feed], candidate: Sequence[Feed]) -> Fidelity:
    """Compare outputs sample by sample, matched by position (onnxopt never renames graph outputs).

    A shape change counts as total disagreement. Positions where both models give the same
    non-finite value (NaN and NaN, inf and inf: Log of a negative random input) agree; the error
    is measured over the finite rest, and a non-finite value on one side only is an infinite error."""
    per: dict[str, OutputFidelity] = {}
    for name, refs, gots in _output_runs(reference, candidate):
        if any(r.shape != g.shape for r, g in zip(refs, gots)):
            per[name] = OutputFidelity(float("inf"), float("inf"), 0.0, 0.0, 0.0 if len(refs) >= 2 else None)
            continue
        ref, got = _flat(refs), _flat(gots)
        same_nonfinite = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
        finite = np.isfinite(ref) & np.isfinite(got)
        if np.any(~(finite | same_nonfinite)):
            max_abs = float("inf")
        else:
            max_abs = float(np.abs(ref[finite] - got[finite]).max()) if finite.any() else 0.0
        scale = float(np.abs(ref[finite]).max()) if finite.any() else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        top1 = None
        if refs[0].ndim == 2 and refs[0].shape[1] > 1:
            top1 = float(np.concatenate([np.argmax(r, 1) == np.argmax(g, 1) for r, g in zip(refs, gots)]).mean())
        per[name] = OutputFidelity(max_abs, max_rel, _cosine(ref[finite], got[finite]), top1,
                                   _centred_or_lost(refs, gots))
    tops = [o.top1_agreement for o in per.values() if o.top1_agreement is not None]
    return Fidelity(
        max_abs=max((o.max_abs for o in per.values()), default=0.0),
        max_rel=max((o.max_rel for o in per.values()), default=0.0),
        cosine=min((o.cosine for o in per.values()), default=1.0),
        top1_agreement=min(tops) if tops else None,
        samples=len(reference),
        outputs=per,
        centred_cosine=_worst_centred([(o.centred_cosine, o.cosine) for o in per.values()]),
    )


def _centred_or_lost(refs: list[np.ndarray], gots: list[np.ndarray]) -> float | None:
    """One output's centred cosine (same shapes on both sides): 0 where the candidate lost a value the
    reference has, None where it cannot be centred (fewer than two runs, or see _centred_one)."""
    if len(refs) < 2:
        return None
    if any(np.any(np.isfinite(r) & ~np.isfinite(g)) for r, g in zip(refs, gots)):
        return 0.0
    return _centred_one(refs, gots)


def _worst_centred(outputs: list[tuple[float | None, float]]) -> float | None:
    """Over (centred, plain) cosines of the outputs: the worst, an output that cannot be centred
    counting by its plain cosine; None where none can be centred."""
    if not any(centred is not None for centred, _ in outputs):
        return None
    return min(plain if centred is None else centred for centred, plain in outputs)


def agreement(reference: Sequence[Feed], candidate: Sequence[Feed]) -> tuple[str, float]:
    """(what agreement measures on these outputs, its value), higher is better: top-1 agreement for
    [N, classes] outputs, else cosine_agreement(). The default metric of `onnxopt search` and of
    quantize's max-drop."""
    fid = compare(reference, candidate)
    if fid.top1_agreement is not None:
        return "top-1 agreement", float(fid.top1_agreement)
    return cosine_agreement(fid)


def agreement_measure(reference: Sequence[Feed]) -> str:
    """What agreement() measures on these outputs of the reference, for a report."""
    return agreement(reference, reference)[0]


def cosine_agreement(fid: Fidelity) -> tuple[str, float]:
    """(its name, its value): the centred cosine, else the plain one where no output varies over the
    samples. A continuous measure: it ranks where top-1 on a few samples ties."""
    if fid.centred_cosine is None:
        return "output cosine", float(fid.cosine)
    return "centred output cosine", float(fid.centred_cosine)


def per_sample(reference: Sequence[Feed], candidate: Sequence[Feed],
               batches: Sequence[int]) -> tuple[list[Feed], list[Feed]]:
    """Both sides' batched runs as one run per sample (run i fed batches[i] samples), so that
    compare() can centre over the samples of a single batched run. Decided once for both: only where
    every output of every run, on both sides, leads with its batch size; otherwise the runs as they
    are (an output that is not batched cannot be split, and one side split alone would not match)."""
    def batched(runs: Sequence[Feed]) -> bool:
        return len(runs) == len(batches) and all(np.ndim(v) >= 1 and np.shape(v)[0] == b
                                                 for run, b in zip(runs, batches) for v in run.values())

    def split(runs: Sequence[Feed]) -> list[Feed]:
        return [{k: np.asarray(v)[i:i + 1] for k, v in run.items()} for run, b in zip(runs, batches) for i in range(b)]

    if batched(reference) and batched(candidate):
        return split(reference), split(candidate)
    return list(reference), list(candidate)


def _output_runs(reference: Sequence[Feed], candidate: Sequence[Feed]) -> Iterator[tuple[str, list, list]]:
    """Each output's name and its arrays run by run, the reference's and the candidate's, matched by
    position (onnxopt never renames graph outputs)."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate ran on different numbers of samples")
    for k, name in enumerate(list(reference[0]) if reference else []):
        yield name, [np.asarray(list(r.values())[k]) for r in reference], [np.asarray(list(c.values())[k]) for c in candidate]


def _flat(runs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([r.astype(np.float64).ravel() for r in runs])


VARYING_FLOOR = 1e-6  # a reference output varying less than this share across the feeds: nothing to centre


def centred_cosine(reference: Sequence[Feed], candidate: Sequence[Feed]) -> float | None:
    """The cosine of what the input decides, worst over outputs: each output less the reference's
    mean over the feeds (the part common to every input), on both sides. A plain cosine rewards a
    model that kept only that common part: the outputs of a detector's anchor grid, or of a net
    with random weights on white noise (one vector common to every input held 95% of MobileNetV2's
    outputs' sum of squares, 98% of ResNet-50's; pruned models that kept nothing else scored 0.83 to
    0.94). An output that cannot be centred (the same for every feed, a shape that changes from feed
    to feed, a non-finite reference) counts by its plain cosine; None where no output can be centred
    (or fewer than two feeds): the caller keeps compare()'s cosine. A changed shape, or a non-finite
    value where the reference has one, is total disagreement (0). compare() carries the same number."""
    return compare(reference, candidate).centred_cosine


def _centred_one(refs: list[np.ndarray], gots: list[np.ndarray]) -> float | None:
    """One output's centred cosine over the runs, or None where it cannot be centred."""
    if (len({r.shape for r in refs}) > 1 or any(np.iscomplexobj(r) for r in refs)
            or not all(np.isfinite(r).all() for r in refs)):
        return None
    mean = np.zeros(refs[0].shape, np.float64)
    for r in refs:
        mean += r
    mean /= len(refs)
    dot = ref_sq = got_sq = total_sq = 0.0
    for r, g in zip(refs, gots):
        dr, dg = r - mean, g - mean
        dot += float(np.vdot(dr, dg))
        ref_sq += float(np.vdot(dr, dr))
        got_sq += float(np.vdot(dg, dg))
        total_sq += float(np.vdot(r.astype(np.float64), r))
    if np.sqrt(ref_sq) <= VARYING_FLOOR * np.sqrt(total_sq):
        return None
    return dot / (np.sqrt(ref_sq) * np.sqrt(got_sq)) if got_sq > 0 else 0.0
