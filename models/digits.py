"""Real data for tests and benchmarks: scikit-learn's handwritten digits as 32x32 model inputs.

>>> from onnxopt.models import digits
>>> images, labels = digits.load("test")  # float32 [360, 1, 32, 32] in [0, 1], int64 [360]

``fixtures/digits.npz`` holds the 8x8 images (values 0..16) split 80/20 by class; it was written
once by ``make_digits_data`` (which needs scikit-learn, and says where the data comes from). This
module needs numpy only. ``python -m onnxopt.models.digits`` rewrites ``fixtures/digits_test.npz``
(the whole test split) and ``fixtures/digits_calib.npz`` (class-balanced training samples, for
passes that calibrate); both hold ``input`` and ``labels``, the layout ``onnxopt run --calib`` reads.
The models trained on this data are written by ``train_digits``.
"""
from __future__ import annotations

import pathlib

import numpy as np

from . import FIXTURES

SIZE = 32
SPLITS = ("train", "test")
CALIBRATION_SAMPLES = 256
_SCALE = SIZE // 8
_LEVELS = 16  # pixel values are counts of on-pixels in a 4x4 block: 0..16


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images of a split as float32 [N, 1, 32, 32] in [0, 1] and their int64 labels [N].
    Each 8x8 pixel becomes a 4x4 block of the same value: the 17 grey levels stay exact."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    with np.load(FIXTURES / "digits.npz") as data:
        small, labels = data[f"{split}_images"], data[f"{split}_labels"]
    images = small.repeat(_SCALE, axis=1).repeat(_SCALE, axis=2)[:, None]
    return images.astype(np.float32) / np.float32(_LEVELS), labels.astype(np.int64)


def balanced_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """All indices, going round the classes: any prefix is as class-balanced as it can be.
    Within a class the order is a seeded shuffle, so a prefix is not one writer's first digits."""
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), np.int64)
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        rank[members] = rng.permutation(len(members))
    return np.lexsort((labels, rank))  # by rank within the class, then by class


def write_npz(split: str, path: str | pathlib.Path, limit: int | None = None) -> pathlib.Path:
    """Write ``input`` and ``labels`` of a split: all samples in stored order, or the first
    ``limit`` of balanced_order()."""
    images, labels = load(split)
    if limit is not None:
        keep = balanced_order(labels)[:limit]
        images, labels = images[keep], labels[keep]
    path = pathlib.Path(path)
    np.savez_compressed(path, input=images, labels=labels)
    return path


def main() -> None:
    # calibration data comes from the training split only: the test split measures accuracy
    for path in (write_npz("test", FIXTURES / "digits_test.npz"),
                 write_npz("train", FIXTURES / "digits_calib.npz", limit=CALIBRATION_SAMPLES)):
        with np.load(path) as data:
            labels = data["labels"]
        print(f"wrote {path} ({len(labels)} samples, per class {np.bincount(labels).tolist()}, "
              f"{path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
