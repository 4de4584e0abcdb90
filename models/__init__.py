"""Seeded CNN graphs shaped like ``torch.onnx.export`` output, for tests and benchmarks.

>>> from onnxopt.models import available, build, fixture_path
>>> model = build("resnet18-tiny", seed=0)  # onnx.ModelProto; input "input", output "output"
>>> fixture_path("digits_repvgg")            # models/fixtures/digits_repvgg.onnx (package data)

Every name has static shapes, float32, IR version 8 and an opset of 13..17 (default 17).
``constant_weights=True`` holds Conv/Gemm weights and biases in Constant nodes instead of
initializers, as some real exports do (BatchNormalization parameters stay initializers).
"""

from __future__ import annotations

if __name__ != "onnxopt.models":  # the repo root on sys.path would import us a second time
    raise ImportError(f"import this package as 'onnxopt.models', not {__name__!r}")

import pathlib

import onnx

from .blocks import GraphBuilder
from .zoo import MODELS

__all__ = ["available", "build", "fixture_path", "input_shape"]

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
# `onnxopt demo`: a train-time RepVGG-style CNN trained on sklearn's digits, and its test split
DEMO_MODEL = "digits_repvgg"
DEMO_DATA = "digits_test.npz"


def available() -> list[str]:
    """All model names, sorted."""
    return sorted(MODELS)


def _spec(name: str):
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available())}") from None


def input_shape(name: str) -> tuple[int, int, int, int]:
    """The static shape of the model's single input ``input``."""
    size = _spec(name).size
    return (1, 3, size, size)


def build(name: str, *, seed: int = 0, opset: int = 17,
          constant_weights: bool = False) -> onnx.ModelProto:
    """Build the named model; the same arguments always give the same bytes."""
    spec = _spec(name)
    g = GraphBuilder(name, seed=seed, opset=opset, constant_weights=constant_weights,
                     input_shape=input_shape(name), probe_batch=spec.probe_batch)
    return g.model(spec.build(g))


def fixture_path(name: str) -> pathlib.Path:
    """Path of the committed fixture ``models/fixtures/<name>.onnx``."""
    path = FIXTURES / f"{name}.onnx"
    if not path.is_file():
        have = sorted(p.stem for p in FIXTURES.glob("*.onnx"))
        raise FileNotFoundError(f"no fixture {name!r} (have: {', '.join(have) or 'none'}); the digits "
                                "models come from `python -m onnxopt.models.train_digits`")
    return path
