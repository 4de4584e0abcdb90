"""Activation ranges from calibration samples, streamed: memory does not grow with the samples.

One pass over the data keeps, per tensor, the min and max, the mean of per-batch minima and maxima,
and a fixed-size histogram over a symmetric range [-R, R] that doubles (merging neighbouring bins,
no resampling) whenever a batch goes beyond it. Every range method reads these statistics, so a
saved cache serves any method without running the model again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxopt.errors import BadData, first_line
from onnxopt.graph.probes import with_outputs
from onnxopt.runtime.sessions import Feed, inputs_for, make_session

BINS = 4096  # even: zero sits on a bin edge at every doubling
LEVELS = 256  # 8-bit activations, uint8 or int8 alike
HISTOGRAM_METHODS = ("percentile", "entropy", "mse")
CACHE_SCHEMA = "onnxopt.ranges/1"


@dataclasses.dataclass
class TensorStats:
    lo: float = np.inf
    hi: float = -np.inf
    sum_lo: float = 0.0
    sum_hi: float = 0.0
    batches: int = 0                 # samples seen (the first axis of a tensor counts them)
    half_width: float = 0.0          # R: the histogram covers [-R, R]
    hist: np.ndarray | None = None   # int64[BINS]
    histogram: bool = True           # off: min/max only (minmax and mean-minmax need no more)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if x.ndim >= 2 and x.shape[0] > 1:  # mean-minmax averages the extremes of each sample, not batch
            rows = x.reshape(x.shape[0], -1)  # all finite here: non-finite values left x flattened
            self.sum_lo += float(rows.min(axis=1).sum())
            self.sum_hi += float(rows.max(axis=1).sum())
            self.batches += x.shape[0]
        else:
            self.sum_lo += lo
            self.sum_hi += hi
            self.batches += 1
        if self.histogram:
            self._histogram(x, max(-lo, hi))

    def _histogram(self, x: np.ndarray, absmax: float) -> None:
        if self.hist is None:
            self.hist = np.zeros(BINS, np.int64)
            self.half_width = 2.0 ** np.ceil(np.log2(absmax)) if absmax > 0 else 2.0 ** -20
        while absmax > self.half_width:  # double the range: bin j of the new histogram holds old bins 2j, 2j+1
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros(BINS, np.int64)
            self.hist[BINS // 4: 3 * BINS // 4] = merged
            self.half_width *= 2
        width = 2 * self.half_width / BINS
        idx = ((x.ravel().astype(np.float32) + np.float32(self.half_width)) / np.float32(width)).astype(np.int64)
        np.clip(idx, 0, BINS - 1, out=idx)
        self.hist += np.bincount(idx, minlength=BINS)

    @property
    def seen(self) -> bool:
        return self.batches > 0

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"scalars": np.array([self.lo, self.hi, self.sum_lo, self.sum_hi, self.batches, self.half_width]),
                "hist": self.hist if self.hist is not None else np.zeros(0, np.int64)}

    @classmethod
    def from_arrays(cls, scalars: np.ndarray, hist: np.ndarray) -> "TensorStats":
        lo, hi, sum_lo, sum_hi, batches, half = (float(v) for v in scalars)
        return cls(lo, hi, sum_lo, sum_hi, int(batches), half, hist if hist.size else None)


# -- range methods ------------------------------------------------------------------------------

def _centers(st: TensorStats) -> np.ndarray:
    width = 2 * st.half_width / BINS
    return -st.half_width + width * (np.arange(BINS) + 0.5)


def _percentile(st: TensorStats, pct: float) -> tuple[float, float]:
    cum = np.cumsum(st.hist)
    total = cum[-1]
    edges = np.linspace(-st.half_width, st.half_width, BINS + 1)
    lo_idx = int(np.searchsorted(cum, total * (1 - pct / 100.0), side="right"))
    hi_idx = int(np.searchsorted(cum, total * pct / 100.0, side="left"))
    lo = max(st.lo, float(edges[lo_idx])) if st.lo < 0 else st.lo
    hi = min(st.hi, float(edges[min(hi_idx + 1, BINS)])) if st.hi > 0 else st.hi
    return lo, hi


def _fake_quant_error(centers: np.ndarray, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      levels: int) -> np.ndarray:
    """Expected squared error of quantizing a histogram with ranges [lo_k, hi_k] (one per candidate)."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.maximum((hi - lo) / (levels - 1), 1e-30)[:, None]
    zero = np.rint(-lo[:, None] / scale)
    q = np.clip(np.rint(centers[None, :] / scale) + zero, 0, levels - 1)
    err = (centers[None, :] - (q - zero) * scale) ** 2
    return (err * counts[None, :]).sum(axis=1)


def _mse(st: TensorStats, levels: int) -> tuple[float, float]:
    """The range that minimizes the expected squared quantization error (clipping plus rounding)
    over the histogram: each end shrunk from the extreme on its own (coordinate descent), since an
    outlier on one side should not cost the other side its range."""
    keep = st.hist > 0
    centers, counts = _centers(st)[keep], st.hist[keep].astype(np.float64)
    lo, hi = min(st.lo, 0.0), max(st.hi, 0.0)
    alphas = np.linspace(0.02, 1.0, 99)
    for _ in range(3):
        if hi > 0:
            err = _fake_quant_error(centers, counts, np.full(alphas.size, lo), max(st.hi, 0.0) * alphas, levels)
            hi = float(max(st.hi, 0.0) * alphas[int(np.argmin(err))])
        if lo < 0:
            err = _fake_quant_error(centers, counts, min(st.lo, 0.0) * alphas, np.full(alphas.size, hi), levels)
            lo = float(min(st.lo, 0.0) * alphas[int(np.argmin(err))])
    return (lo if st.lo < 0 else st.lo), (hi if st.hi > 0 else st.hi)


def _kl_threshold(hist: np.ndarray, width: float, levels: int) -> float:
    """TensorRT's entropy calibration on a one-sided histogram (bins of `width` from 0): the clip
    threshold whose quantized distribution diverges least from the original. The first bin is left
    out: after a Relu it holds every exact zero, which any range represents exactly, and spread over
    its quantization bucket it would outweigh everything else and pull the threshold down."""
    hist = hist.copy()
    hist[0] = 0
    nonzero = np.flatnonzero(hist)
    if nonzero.size == 0:
        return width
    last = int(nonzero[-1]) + 1
    if last <= levels:
        return last * width
    best, best_kl = last, np.inf
    for stop in np.unique(np.linspace(levels, last, 64).astype(int)):
        p = hist[:stop].astype(np.float64).copy()
        p[-1] += hist[stop:].sum()
        chunks = np.array_split(np.arange(stop), levels)
        q = np.zeros(stop)
        src = hist[:stop].astype(np.float64)
        for idx in chunks:
            nz = src[idx] > 0
            if nz.any():
                q[idx[nz]] = src[idx].sum() / nz.sum()
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-30)
        mask = ps > 0
        kl = float(np.sum(ps[mask] * np.log(ps[mask] / np.maximum(qs[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = stop, kl
    return best * width


def _entropy(st: TensorStats, levels: int) -> tuple[float, float]:
    half = BINS // 2
    width = 2 * st.half_width / BINS
    pos, neg = st.hist[half:], st.hist[:half][::-1]
    if st.lo >= 0:
        return st.lo, min(st.hi, _kl_threshold(pos, width, levels))
    t = _kl_threshold(pos + neg, width, levels // 2)
    return max(st.lo, -t), min(st.hi, t)


def compute_range(st: TensorStats, method: str, *, percentile: float = 99.999) -> tuple[float, float]:
    if not st.seen:
        raise ValueError("no statistics")
    if method == "minmax":
        return st.lo, st.hi
    if st.hist is None and method in HISTOGRAM_METHODS:
        raise ValueError(f"method {method} needs histograms, and these statistics were collected without")
    if method == "mean-minmax":
        return st.sum_lo / st.batches, st.sum_hi / st.batches
    if method == "percentile":
        return _percentile(st, percentile)
    if method == "mse":
        return _mse(st, LEVELS)
    if method == "entropy":
        return _entropy(st, LEVELS)
    raise ValueError(f"unknown range method {method!r}")


# -- collection ---------------------------------------------------------------------------------

def fingerprint(model: onnx.ModelProto) -> str:
    """What the ranges depend on: the graph and its weights."""
    return hashlib.sha1(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def collect(model: onnx.ModelProto, tensors: Sequence[str], feeds: Iterable[Feed], *, threads: int = 1,
            histograms: bool = True, progress: Callable[[int], None] | None = None) -> tuple[dict[str, TensorStats], int]:
    """Run `model` over `feeds` and stream statistics of `tensors` (graph inputs, intermediate
    tensors or outputs). Returns the statistics and the number of batches seen."""
    inputs = {i.name for i in model.graph.input}
    wanted = [t for t in dict.fromkeys(tensors)]
    exposed = [t for t in wanted if t not in inputs]
    session = make_session(with_outputs(model, exposed).SerializeToString(), optimization="disabled", threads=threads)
    names = [o.name for o in session.get_outputs()]
    stats = {t: TensorStats(histogram=histograms) for t in wanted}
    count = 0
    for feed in feeds:
        try:
            outs = session.run(exposed, inputs_for(session, feed)) if exposed else []
        except Exception as exc:  # noqa: BLE001 - ORT's own error types; the data did not fit
            raise BadData(f"calibration sample {count}: onnxruntime could not run it "
                          f"({first_line(exc, 160)})") from None
        for t, value in zip(exposed, outs):
            stats[t].update(value)
        for t in wanted:
            if t in inputs and t in feed:
                stats[t].update(np.asarray(feed[t]))
        count += 1
        if progress:
            progress(count)
    del names
    return stats, count


def save_cache(path: str | Path, stats: dict[str, TensorStats], meta: dict) -> None:
    import io

    from onnxopt.graph.io import atomic_write_bytes

    arrays = {"__meta__": np.frombuffer(json.dumps({"schema": CACHE_SCHEMA, **meta}).encode(), np.uint8)}
    for i, (name, st) in enumerate(stats.items()):
        for key, value in st.as_arrays().items():
            arrays[f"{i}/{key}"] = value
    arrays["__names__"] = np.frombuffer(json.dumps(list(stats)).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_cache(path: str | Path) -> tuple[dict[str, TensorStats], dict]:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            names = json.loads(bytes(data["__names__"]).decode())
            stats = {n: TensorStats.from_arrays(data[f"{i}/scalars"], data[f"{i}/hist"]) for i, n in enumerate(names)}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same answer
        raise BadData(f"{path}: not an onnxopt range cache ({first_line(exc, 100)})") from None
    if meta.get("schema") != CACHE_SCHEMA:
        raise BadData(f"{path}: not an onnxopt range cache (schema {meta.get('schema')!r})")
    return stats, meta
