"""The digits validation of benchmarks/search.py: labelled images the models never saw, made from
the training split by warps they were not trained with, and the warp itself is right."""
from __future__ import annotations

import numpy as np

from onnxopt.models import digits
from onnxopt.testing import load_benchmark

bench = load_benchmark("search")
zoo_inputs = load_benchmark("scenes")


def test_no_warp_gives_the_images_back(monkeypatch):
    images, _ = digits.load("train")
    for name in ("VALIDATION_ANGLE", "VALIDATION_SCALE", "VALIDATION_SHIFT"):
        monkeypatch.setattr(bench, name, 0.0)
    assert np.allclose(bench._warped(images[:50], np.random.default_rng(0)), images[:50], atol=1e-6)


def test_a_quarter_turn_turns_the_image(monkeypatch):
    image = np.zeros((1, 1, 32, 32), np.float32)
    image[0, 0, 4:8, 10:14] = 1.0  # a block above the centre
    monkeypatch.setattr(bench, "VALIDATION_SHIFT", 0.0)
    monkeypatch.setattr(bench, "VALIDATION_SCALE", 0.0)
    monkeypatch.setattr(bench, "VALIDATION_ANGLE", 90.0)
    turned = bench._warped(image, np.random.default_rng(3))[0, 0]
    angle = np.rad2deg(np.arctan2(*np.array(np.nonzero(turned > 0.5)).mean(1) - 15.5))
    original = np.rad2deg(np.arctan2(*np.array(np.nonzero(image[0, 0] > 0.5)).mean(1) - 15.5))
    assert abs(turned.sum() - image.sum()) < 1.0  # the block moved whole
    assert 5 < abs((angle - original + 180) % 360 - 180) <= 90  # by the random angle, within ±90°


def test_validation_is_labelled_and_unseen():
    data = bench.validation()
    images, labels = digits.load("train")
    assert len(data) * data.batch == 2 * len(images) and (data.labels[:len(labels)] == labels).all()
    warped = data.arrays["input"][:len(images)]
    same = np.isclose(warped, images, atol=1e-3).all(axis=(1, 2, 3))
    assert same.mean() < 0.01  # not the training images the models learned


def test_the_zoo_scenes_make_a_random_weight_model_answer_its_input():
    """The zoo sections' premise (search, prune): on white noise a random-weight MobileNetV2 gives all but one
    output for every input; on the scenes more of its outputs follow the input."""
    from onnxopt import models
    from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
    model = models.build("mobilenetv2", seed=0)
    name = model.graph.input[0].name

    def common_share(feeds):
        return zoo_inputs.common_share(run_model(model, feeds, optimization="all"))
    noise = random_feeds(model, resolve_input_shapes(model), seed=7, count=8)
    scenes = zoo_inputs.scenes(8, 7, (3, 224, 224))
    assert scenes.shape == (8, 3, 224, 224) and scenes.dtype == np.float32
    # smooth: neighbouring pixels alike, where white noise has them independent
    assert np.corrcoef(scenes[:, :, :, 1:].ravel(), scenes[:, :, :, :-1].ravel())[0, 1] > 0.7
    # what the input decides: 4.3% of the outputs' sum of squares on noise, 6.4% on the scenes
    assert 1 - common_share([{name: x[None]} for x in scenes]) > 1.4 * (1 - common_share(noise))
