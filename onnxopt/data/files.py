"""Sample data for passes that calibrate (prune's data-driven criteria, quantize) and for accuracy.

A data file holds arrays whose first axis counts samples:
  .npz   one array per model input, keyed by input name (a single-input model may use any key;
         the key `labels` is reserved for class labels). Loaded whole: numpy cannot memory-map
         the arrays inside a .npz, so a large data set is better kept as .npy files.
  .npy   one array, for a single-input model; memory-mapped, so only the batches in use are read
  folder every .npz/.npy file in it, in name order, each as above; the files are read one at a
         time while the batches are iterated (only their headers and labels are read up front)
  images a folder of .png/.jpg/.jpeg/.bmp/.ppm/.pgm files with a preprocessing spec (size,
         layout, mean/std, RGB/BGR, scale; see onnxopt.data.images), decoded one batch at a time
Samples are fed in batches of the model's static batch size (1 where the batch dim is dynamic);
samples left over after the last full batch are not used. An array with one axis more than its
input holds one whole input per batch instead (for inputs whose batch axis is not the first, such
as an RNN state [2, batch, 128], or that have none, such as a scalar sample rate): its row i goes
with the i-th batch of the others, and where the model's batch is dynamic, samples per whole row
set the batch.
A FeedSet is re-iterable (passes may iterate it many times); memory holds a batch, plus for a
folder the file being read, never the whole data set.
"""
from __future__ import annotations

import bisect
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import BadData, BadOption
from ..runtime.sessions import check_feeds, input_specs
from .feeds import FeedSet, LazyArray, _static_batch

LABELS = "labels"
RANDOM = "random"  # `--calib random`: seeded noise, for smoke tests only
RANDOM_SAMPLES = 32
DATA_SUFFIXES = (".npy", ".npz")


class _Cast(LazyArray):
    """A memory-mapped array served in another dtype (float64 files for float32 models), or
    C-contiguous (Fortran-order files), a batch at a time."""

    def __init__(self, array: np.ndarray, dtype: np.dtype) -> None:
        self.array, self.shape, self.dtype = array, array.shape, np.dtype(dtype)

    def _rows(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[start:stop], dtype=self.dtype)


class _Files(LazyArray):
    """One input's samples spread over the files of a folder, read file by file: a slice loads the
    files it covers (.npy memory-mapped, one .npz array whole) and keeps only the last one."""

    def __init__(self, parts: list[tuple[Path, str, int]], sample_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.parts = parts  # (file, array name in it, samples)
        self.starts = np.cumsum([0] + [n for _, _, n in parts]).tolist()
        self.shape, self.dtype = (self.starts[-1], *sample_shape), np.dtype(dtype)
        self._open: tuple[int, np.ndarray] | None = None

    def _file(self, i: int) -> np.ndarray:
        if self._open is None or self._open[0] != i:
            self._open = None  # let the previous file go before reading the next
            path, key, _ = self.parts[i]
            self._open = (i, _read_array(path, key))
        return self._open[1]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        i = bisect.bisect_right(self.starts, start) - 1
        while start < stop and i < len(self.parts):
            end = min(stop, self.starts[i + 1])
            if end > start:
                local = self.starts[i]
                pieces.append(np.ascontiguousarray(self._file(i)[start - local:end - local], dtype=self.dtype))
            start, i = end, i + 1
        if not pieces:
            return np.empty((0, *self.shape[1:]), self.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _cannot_read(path: Path, exc: Exception) -> BadData:
    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
    return BadData(f"{path}: cannot read as .npy/.npz ({why})")


_READ_ERRORS = (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError)


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every array of one file: a .npy memory-mapped, a .npz read whole."""
    try:
        if path.suffix == ".npy":
            return {"": _load_npy(path)}
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        for k, a in arrays.items():
            if not isinstance(a, np.ndarray):  # numpy returns a member that is not .npy as bytes
                raise ValueError(f"'{k}' is not a .npy array")
        return arrays
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # numpy refuses to map some files (e.g. empty ones): read them
        return np.load(path, allow_pickle=False)


def _read_array(path: Path, key: str) -> np.ndarray:
    """One array of one file, for a folder read lazily."""
    try:
        if path.suffix == ".npy":
            return _load_npy(path)
        with np.load(path, allow_pickle=False) as data:
            return data[key]
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None


def _header(fp, size: int | None = None) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fp)
    else:
        shape, _, dtype = fmt._read_array_header(fp, version)
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    if size is not None and fp.tell() + int(np.prod(shape)) * dtype.itemsize > size:
        raise ValueError(f"the file is shorter than its header says ({list(shape)} {dtype})")
    return tuple(shape), dtype


def _headers(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype]], np.ndarray | None]:
    """The shape and dtype of every array in a file, without reading the arrays; and its labels."""
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as fp:
                return {"": _header(fp, path.stat().st_size)}, None
        heads, labels = {}, None
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                key = member.removesuffix(".npy")
                with zf.open(member) as fp:
                    if key == LABELS:
                        labels = np.lib.format.read_array(fp, allow_pickle=False)
                    else:
                        heads[key] = _header(fp)
        return heads, labels
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None


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


def _is_image(path: Path) -> bool:
    from .images import IMAGE_SUFFIXES
    return path.suffix.lower() in IMAGE_SUFFIXES


def _for_inputs(arrays: dict, names: list[str], where: Path) -> dict:
    """A file's arrays keyed by the model's input names (a single array feeds a single input)."""
    if len(names) == 1 and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing, extra = set(names) - set(arrays), set(arrays) - set(names)
    if missing or extra:
        raise BadData(f"{where}: holds arrays {sorted(arrays)}, the model's inputs are {names}")
    return arrays


def _model_dtype(dtype: np.dtype, wanted: np.dtype) -> np.dtype:
    """float64 arrays from numpy defaults are served as the model's float type; other mismatches
    are left for check_feeds to report."""
    if dtype != wanted and np.issubdtype(dtype, np.floating) and np.issubdtype(wanted, np.floating):
        return wanted
    return dtype


def load_feeds(path: str | Path, model: onnx.ModelProto, preprocess: Any = None) -> FeedSet:
    """Read a data file or folder (see the module docstring) and check it against the model.
    `preprocess`: for images, a spec string such as "size=224,mean=0.485|0.456|0.406,..." or an
    onnxopt.data.images.Preprocess (see there)."""
    p = Path(path)
    if preprocess is not None:
        from .images import parse_preprocess
        preprocess = parse_preprocess(preprocess)  # a bad spec is reported before any file is read
    if not p.exists():
        raise BadData(f"{p}: no such data file or folder")
    if p.is_dir():
        entries = sorted(p.iterdir())
        files = [f for f in entries if f.suffix in DATA_SUFFIXES]
        pictures = [f for f in entries if _is_image(f) and not f.is_dir()]
        if files and pictures:
            raise BadData(f"{p}: holds both images and .npy/.npz files; keep one kind of data per folder")
    else:
        files, pictures = ([], [p]) if _is_image(p) else ([p], [])
    if pictures:
        if preprocess is None:
            raise BadData(f"{p}: images need a preprocessing spec (--preprocess, e.g. "
                          "size=224,mean=0.485|0.456|0.406,std=0.229|0.224|0.225,scale=255)")
        from .images import image_feeds
        feeds = image_feeds(pictures, model, preprocess, str(p))
        check_feeds(model, feeds.take(1), str(p))
        return feeds
    if preprocess is not None:
        raise BadOption(f"{p}: a preprocessing spec (--preprocess) is for a folder of images, not .npy/.npz data"
                        if files else f"{p}: no images (.png/.jpg/.jpeg/.bmp/.ppm/.pgm) in this folder")
    if not files:
        raise BadData(f"{p}: no .npy or .npz files in this folder")
    if any(f.suffix not in DATA_SUFFIXES for f in files):
        raise BadData(f"{p}: expected a .npz or .npy file (or a folder of them)")
    specs = input_specs(model)
    names = [s.name for s in specs]
    wanted = {s.name: s.dtype for s in specs}
    labels: list[np.ndarray] = []
    if p.is_dir():
        merged = _folder(files, names, wanted, labels)
    else:
        arrays = _read(p)
        if LABELS in arrays:
            labels.append(_class_labels(np.asarray(arrays.pop(LABELS)), p))
        merged = _for_inputs(arrays, names, p)
        for n, a in merged.items():
            if a.ndim == 0:
                raise BadData(f"{p}: '{n}' is a single value, not samples along a first axis (for a scalar "
                              "input give one value per sample: shape [samples])")
            dtype = _model_dtype(a.dtype, wanted[n])
            if isinstance(a, np.memmap) and (dtype != a.dtype or not a.flags.c_contiguous):
                merged[n] = _Cast(a, dtype)
            elif dtype != a.dtype:
                merged[n] = a.astype(dtype)
    batch = _static_batch(specs)
    whole = frozenset(s.name for s in specs if s.shape is not None and merged[s.name].ndim == len(s.shape) + 1)
    split = [len(a) for k, a in merged.items() if k not in whole]
    per_row = len(merged[min(whole)]) if whole else 0
    declared = specs[0].shape[0] if specs and specs[0].shape else None
    dynamic = not (isinstance(declared, int) and declared > 0)
    if dynamic and split and per_row and split[0] % per_row == 0:
        # a dynamic batch: whole inputs say how many samples one run takes
        batch = split[0] // per_row
    feeds = FeedSet(merged, batch, np.concatenate(labels) if labels else None, str(p), whole)
    if len(feeds) == 0:
        raise BadData(f"{p}: fewer samples ({feeds.samples}) than one batch of {batch}")
    check_feeds(model, feeds.take(1), str(p))
    return feeds


def _folder(files: list[Path], names: list[str], wanted: dict[str, np.dtype],
            labels: list[np.ndarray]) -> dict[str, _Files]:
    """Lazy arrays over a folder's files, after reading their headers (and labels) and checking
    that they agree on the shape of a sample."""
    parts: dict[str, list[tuple[Path, str, int]]] = {n: [] for n in names}
    kinds: dict[str, tuple[Path, tuple[int, ...], np.dtype]] = {}
    for f in files:
        heads, file_labels = _headers(f)
        if file_labels is not None:
            labels.append(_class_labels(file_labels, f))
        for n, key in _keyed(heads, names, f).items():
            shape, dtype = heads[key]
            if not shape:
                raise BadData(f"{f}: '{n}' is a single value, not samples along a first axis")
            first = kinds.setdefault(n, (f, shape[1:], dtype))
            if shape[1:] != first[1]:
                raise BadData(f"{f}: '{n}' holds samples of shape {list(shape[1:])}, {first[0].name} holds "
                              f"{list(first[1])}")
            if dtype != first[2] and not (np.issubdtype(dtype, np.floating) and np.issubdtype(first[2], np.floating)):
                raise BadData(f"{f}: '{n}' is {dtype}, {first[0].name} holds {first[2]}")
            parts[n].append((f, key, shape[0]))
    return {n: _Files(parts[n], kinds[n][1], _model_dtype(kinds[n][2], wanted[n])) for n in names}


def _keyed(heads: dict, names: list[str], where: Path) -> dict[str, str]:
    """Model input name -> array name in the file."""
    return _for_inputs({k: k for k in heads}, names, where)


def random_calibration(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None, *,
                       samples: int = RANDOM_SAMPLES, seed: int = 0) -> FeedSet:
    """Seeded random inputs in place of calibration data. Ranges calibrated on noise say nothing
    about real inputs: this exists so a pipeline can be smoke-tested without data, when asked."""
    from ..runtime.sessions import random_feeds, resolve_input_shapes

    resolved = resolve_input_shapes(model, shapes or {})
    feeds = random_feeds(model, resolved, seed=seed, count=samples)
    # whole inputs per batch: the batch axis need not be the first, nor exist
    arrays = {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}
    batch = next(iter(resolved.values()))[0] if resolved and next(iter(resolved.values())) else 1
    feeds = FeedSet(arrays, batch, None, f"{RANDOM} ({samples} seeded samples)", frozenset(arrays))
    feeds.random = True  # passes say so in their report
    return feeds
