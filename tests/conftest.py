"""Shared fixtures. Test files cannot import each other (--import-mode=importlib): shared helpers
live in onnxopt.testing or here as fixtures."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """ONNXOPT_DEBUG in a developer's shell turns one-line errors into tracebacks: not in tests."""
    monkeypatch.delenv("ONNXOPT_DEBUG", raising=False)
