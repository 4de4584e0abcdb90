"""Feeds cut from arrays of samples: FeedSet (re-iterable batches) and LazyArray (arrays read a
slice at a time). The file formats that make them are onnxopt.data.files and .images."""
from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import BadData
from ..runtime.sessions import Feed


class LazyArray:
    """An array of samples (first axis) that reads only the rows a slice asks for. Supports what a
    FeedSet and its users do with arrays: len, shape, dtype, ndim, a[i], a[start:stop] (a fresh
    ndarray) and np.asarray(a) (reads everything: avoid on large data)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def _rows(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._rows(start, max(start, stop))
            rows = range(start, stop, step)
            return np.concatenate([self._rows(i, i + 1) for i in rows]) if rows else self._rows(0, 0)
        try:
            i = operator.index(index)
        except TypeError:
            return np.asarray(self)[index]  # fancy indexing: reads everything
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of bounds for {len(self)} samples")
        i %= len(self)
        return self._rows(i, i + 1)[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self._rows(0, len(self))
        return rows if dtype is None else rows.astype(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class FeedSet:
    """A re-iterable sequence of feed dicts cut from arrays of samples (plus optional labels). The
    arrays may be ndarrays, memory maps or LazyArrays: each batch is sliced when it is needed."""

    def __init__(self, arrays: Mapping[str, np.ndarray | LazyArray], batch: int = 1, labels: np.ndarray | None = None,
                 source: str = "data", whole: frozenset[str] = frozenset()) -> None:
        # `whole`: arrays holding one whole input per batch (see the module docstring)
        counts = {len(a) * (batch if k in whole else 1) for k, a in arrays.items()}
        if len(counts) != 1:
            raise BadData(f"{source}: inputs hold different numbers of samples {sorted(counts)}")
        self.arrays, self.batch, self.labels, self.source, self.whole = arrays, batch, labels, source, whole
        self.samples = counts.pop()
        if labels is not None and len(labels) != self.samples:
            raise BadData(f"{source}: {len(labels)} labels for {self.samples} samples")

    def __len__(self) -> int:
        return self.samples // self.batch

    def feed(self, i: int) -> Feed:
        """The i-th batch."""
        start = i * self.batch
        return {k: np.asarray(a[i]) if k in self.whole else a[start:start + self.batch] for k, a in self.arrays.items()}

    def __iter__(self) -> Iterator[Feed]:
        for i in range(len(self)):
            yield self.feed(i)

    def take(self, n: int) -> list[Feed]:
        return [feed for _, feed in zip(range(n), self)]

    def tail(self, n: int) -> list[Feed]:
        """The last n batches: verification judges lossy passes on these."""
        return [self.feed(i) for i in range(max(0, len(self) - n), len(self))]


def _static_batch(specs) -> int:
    first = specs[0].shape[0] if specs and specs[0].shape else None
    return first if isinstance(first, int) and first > 0 else 1
