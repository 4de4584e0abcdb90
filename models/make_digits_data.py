"""Write ``models/fixtures/digits.npz``: scikit-learn's handwritten digits, split 80/20 by class.

The data is scikit-learn's copy (``sklearn.datasets.load_digits``) of the test set of the UCI ML
hand-written digits dataset: 1,797 images of 8x8 pixels with values 0..16, ten classes. Licence
and citation: CC BY 4.0; E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI
Machine Learning Repository, 1998, https://doi.org/10.24432/C50P49.

Run once, where scikit-learn is installed: ``python -m onnxopt.models.make_digits_data``.
Nothing at runtime needs scikit-learn: ``onnxopt.models.digits`` reads the .npz with numpy.
"""
from __future__ import annotations

import numpy as np

from . import FIXTURES

PATH = FIXTURES / "digits.npz"
TEST_FRACTION = 0.2
SEED = 0


def test_counts(labels: np.ndarray) -> np.ndarray:
    """Test samples per class: the class's share of ceil(0.2 * N), rounded by largest remainder
    so that the counts add up exactly (360 of 1,797)."""
    per_class = np.bincount(labels)
    total = int(np.ceil(TEST_FRACTION * len(labels)))
    share = per_class * total / len(labels)
    counts = np.floor(share).astype(np.int64)
    by_remainder = np.argsort(-(share - counts), kind="stable")
    counts[by_remainder[:total - counts.sum()]] += 1
    return counts


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and test samples, each sorted: a seeded shuffle within every class,
    its first test_counts() samples go to the test split."""
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for digit, n_test in enumerate(test_counts(labels)):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # integers 0..16 stored as float64
    assert np.array_equal(images, digits.images) and images.max() == 16
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels)
    np.savez_compressed(PATH, train_images=images[train], train_labels=labels[train],
                        test_images=images[test], test_labels=labels[test])
    print(f"wrote {PATH} ({len(train)} train, {len(test)} test, {PATH.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
