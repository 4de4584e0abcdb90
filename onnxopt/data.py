"""Sample data for passes that calibrate (prune's data-driven criteria, quantize) and for accuracy.

A data file holds arrays whose first axis counts samples:
  .npz   one array per model input, keyed by input name (a single-input model may use any key;
         the key `labels` is reserved for class labels)
  .npy   one array, for a single-input model
  folder every .npz/.npy file in it, in name order, each as above
Samples are fed in batches of the model's static batch size (1 where the batch dim is dynamic);
samples left over after the last full batch are not used.
Iterating a FeedSet reads nothing new: it slices the arrays, so passes may iterate it many times.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from .errors import BadData
from .runtime import Feed, check_feeds, input_specs

LABELS = "labels"
RANDOM = "random"  # `--calib random`: seeded noise, for smoke tests only
RANDOM_SAMPLES = 32


class FeedSet:
    """A re-iterable sequence of feed dicts cut from whole arrays (plus optional labels)."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int = 1, labels: np.ndarray | None = None,
                 source: str = "data") -> None:
        counts = {len(a) for a in arrays.values()}
        if len(counts) != 1:
            raise BadData(f"{source}: inputs hold different numbers of samples {sorted(counts)}")
        self.arrays, self.batch, self.labels, self.source = arrays, batch, labels, source
        self.samples = counts.pop()
        if labels is not None and len(labels) != self.samples:
            raise BadData(f"{source}: {len(labels)} labels for {self.samples} samples")

    def __len__(self) -> int:
        return self.samples // self.batch

    def __iter__(self) -> Iterator[Feed]:
        for start in range(0, len(self) * self.batch, self.batch):
            yield {k: a[start:start + self.batch] for k, a in self.arrays.items()}

    def take(self, n: int) -> list[Feed]:
        return [feed for _, feed in zip(range(n), self)]

    def tail(self, n: int) -> list[Feed]:
        """The last n batches: verification judges lossy passes on these."""
        stop = len(self) * self.batch
        starts = range(max(0, stop - n * self.batch), stop, self.batch)
        return [{k: a[s:s + self.batch] for k, a in self.arrays.items()} for s in starts]


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadData(f"{path}: cannot read as .npy/.npz ({str(exc).splitlines()[0][:120]})") from None


def _class_labels(labels: np.ndarray, source: Path) -> np.ndarray:
    """Integer class indices [N] (or [N, 1]); one-hot rows or fractional values are refused, because
    top-1 accuracy compares them with an argmax."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    integral = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and bool(np.all(np.mod(labels, 1) == 0)))
    if labels.ndim != 1 or not integral:
        raise BadData(f"{source}: `labels` must be integer class indices of shape [N]; got {labels.dtype} "
                      f"{list(labels.shape)} (one-hot rows: take their argmax)")
    return labels.astype(np.int64)


def load_feeds(path: str | Path, model: onnx.ModelProto) -> FeedSet:
    """Read a data file or folder (see the module docstring) and check it against the model."""
    p = Path(path)
    if not p.exists():
        raise BadData(f"{p}: no such data file or folder")
    files = sorted(f for f in p.iterdir() if f.suffix in (".npy", ".npz")) if p.is_dir() else [p]
    if not files:
        raise BadData(f"{p}: no .npy or .npz files in this folder")
    if any(f.suffix not in (".npy", ".npz") for f in files):
        raise BadData(f"{p}: expected a .npz or .npy file (or a folder of them)")
    specs = input_specs(model)
    names = [s.name for s in specs]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    labels: list[np.ndarray] = []
    for f in files:
        arrays = _read(f)
        if LABELS in arrays:
            labels.append(_class_labels(arrays.pop(LABELS), f))
        if len(names) == 1 and len(arrays) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
        missing, extra = set(names) - set(arrays), set(arrays) - set(names)
        if missing or extra:
            raise BadData(f"{f}: holds arrays {sorted(arrays)}, the model's inputs are {names}")
        for n in names:
            parts[n].append(arrays[n])
    merged = {n: np.concatenate(v) if len(v) > 1 else v[0] for n, v in parts.items()}
    for s in specs:
        a = merged[s.name]
        if a.dtype != s.dtype and np.issubdtype(a.dtype, np.floating) and np.issubdtype(s.dtype, np.floating):
            merged[s.name] = a.astype(s.dtype)  # float64 arrays from numpy defaults are harmless
    batch = specs[0].shape[0] if specs and specs[0].shape and isinstance(specs[0].shape[0], int) and specs[0].shape[0] > 0 else 1
    feeds = FeedSet(merged, batch, np.concatenate(labels) if labels else None, str(p))
    if len(feeds) == 0:
        raise BadData(f"{p}: fewer samples ({feeds.samples}) than one batch of {batch}")
    check_feeds(model, feeds.take(1), str(p))
    return feeds


def random_calibration(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None, *,
                       samples: int = RANDOM_SAMPLES, seed: int = 0) -> FeedSet:
    """Seeded random inputs in place of calibration data. Ranges calibrated on noise say nothing
    about real inputs: this exists so a pipeline can be smoke-tested without data, when asked."""
    from .runtime import random_feeds, resolve_input_shapes

    resolved = resolve_input_shapes(model, shapes or {})
    feeds = random_feeds(model, resolved, seed=seed, count=samples)
    arrays = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    batch = next(iter(resolved.values()))[0] if resolved else 1
    return FeedSet(arrays, batch, None, f"{RANDOM} ({samples} seeded samples)")
