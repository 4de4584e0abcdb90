"""Inputs for the zoo models with random weights, and how much of their outputs the input decides.

On white noise global average pooling makes every image alike to such a network: on 16 of them a
vector common to all held 95% (MobileNetV2) and 98% (ResNet-50) of the outputs' sum of squares, so a
plain output cosine passes a pruned model that kept that vector and nothing of what the input
decides (0.83 to 0.94). The suites feed these scenes and score by the centred cosine
(onnxopt.runtime.fidelity.centred_cosine) instead."""
from __future__ import annotations

import numpy as np
import onnx

from onnxopt.data.feeds import FeedSet
from onnxopt.runtime.sessions import Feed, input_specs, resolve_input_shapes

HELD_BACK = 16    # scenes outputs are compared on (seed 7)
CALIBRATION = 48  # scenes the optimizations are calibrated on (seed 0: others than the held-back ones)


def scenes(count: int, seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """[count, C, H, W] synthetic scenes for a zoo model with random weights: each a smooth random
    field (a g x g grid of normal values, g from 2 to 8, upsampled bilinearly), its contrast and each
    channel's level drawn per image, plus a little pixel noise. On 16 scenes the common vector holds
    92% (MobileNetV2) and 82% (ResNet-50) of the outputs' sum of squares."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    out = np.empty((count, c, h, w), np.float32)
    for i in range(count):
        g = int(rng.integers(2, 9))
        grid = rng.standard_normal((c, g, g))
        ys, xs = np.linspace(0, g - 1, h), np.linspace(0, g - 1, w)
        y0, x0 = np.floor(ys).astype(int).clip(0, g - 2), np.floor(xs).astype(int).clip(0, g - 2)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        rows0, rows1 = grid[:, y0], grid[:, y0 + 1]
        field = ((1 - fy) * ((1 - fx) * rows0[:, :, x0] + fx * rows0[:, :, x0 + 1])
                 + fy * ((1 - fx) * rows1[:, :, x0] + fx * rows1[:, :, x0 + 1]))
        out[i] = (field * rng.uniform(0.5, 1.5) + rng.normal(0, 0.5, (c, 1, 1))
                  + 0.3 * rng.standard_normal((c, h, w)))
    return out


def common_share(runs: list[dict]) -> float:
    """The share of a model's outputs (its first, over these runs) held by their mean: the part
    common to every input, by sum of squares."""
    out = np.concatenate([next(iter(o.values())) for o in runs])
    return float(1 - np.sum((out - out.mean(0)) ** 2) / np.sum(out ** 2))


def held_back(model: onnx.ModelProto) -> list[Feed]:
    """HELD_BACK scenes for the model's one image input, a feed each."""
    name, shape = _image_input(model)
    return [{name: x[None]} for x in scenes(HELD_BACK, 7, shape)]


def calibration(model: onnx.ModelProto) -> FeedSet:
    """CALIBRATION scenes for the model's one image input, one a batch."""
    name, shape = _image_input(model)
    return FeedSet({name: scenes(CALIBRATION, 0, shape)}, 1, None, f"{CALIBRATION} synthetic scenes")


def _image_input(model: onnx.ModelProto) -> tuple[str, tuple[int, int, int]]:
    (spec,) = input_specs(model)
    return spec.name, tuple(resolve_input_shapes(model)[spec.name][1:])
