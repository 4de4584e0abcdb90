"""Real-data fixtures: the digits splits load as documented and do not leak into each other, the
committed .npz files are what the code writes, and the four trained CNNs keep their BatchNorms
and branches, classify the test split as their metadata says, and come out of fold-bn + reparam
with the same predictions. numpy, onnx, onnxruntime and onnxopt only: no torch, no scikit-learn."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from onnxopt.models import FIXTURES, digits, fixture_path
from onnxopt.pipeline.run import Pipeline
from onnxopt.runtime.sessions import run_model
from onnxopt.testing import count_ops

NAMES = ["resnet", "mobilenetv2", "repvgg", "mobilenet"]
TRAIN_SAMPLES, TEST_SAMPLES = 1437, 360


@functools.cache
def split(name: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits.load(name)
    images.setflags(write=False)
    return images, labels


@functools.cache
def fixture(name: str) -> onnx.ModelProto:
    return onnx.load(str(fixture_path(f"digits_{name}")))


def logits(model: onnx.ModelProto) -> np.ndarray:
    """The whole test split in one call, with onnxopt's session settings (optimizations off)."""
    return run_model(model, [{"input": split("test")[0]}])[0]["logits"]


@functools.cache
def reference_logits(name: str) -> np.ndarray:
    return logits(fixture(name))


def image_bytes(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


# ---------------------------------------------------------------------------------------------
# The data


@pytest.mark.parametrize("name, count", [("train", TRAIN_SAMPLES), ("test", TEST_SAMPLES)])
def test_load_shapes_dtypes_and_values(name, count):
    images, labels = split(name)
    assert images.shape == (count, 1, digits.SIZE, digits.SIZE) and images.dtype == np.float32
    assert labels.shape == (count,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    levels = images * 16
    assert np.array_equal(levels, np.round(levels))  # the 17 grey levels 0..16 survive exactly
    pixels = images[:, :, ::4, ::4]  # nearest-neighbour upsampling: every 4x4 block is one pixel
    assert np.array_equal(images, pixels.repeat(4, axis=2).repeat(4, axis=3))


def test_splits_are_stratified_80_20():
    train, test = np.bincount(split("train")[1]), np.bincount(split("test")[1])
    assert len(train) == len(test) == 10
    assert np.all(np.abs(test - 0.2 * (train + test)) < 1), (train, test)


def test_splits_are_disjoint():
    # the 1,797 images are all distinct, so any image in both splits would be a leaked sample
    train, test = image_bytes(split("train")[0]), image_bytes(split("test")[0])
    assert len(train) == TRAIN_SAMPLES and len(test) == TEST_SAMPLES
    assert not train & test


def test_load_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'calib'"):
        digits.load("calib")


def test_test_npz_is_the_test_split():
    with np.load(FIXTURES / "digits_test.npz") as data:
        assert sorted(data.files) == ["input", "labels"]
        images, labels = data["input"], data["labels"]
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert np.array_equal(images, split("test")[0]) and np.array_equal(labels, split("test")[1])


def test_calibration_npz_is_balanced_training_data_and_regenerates(tmp_path):
    with np.load(FIXTURES / "digits_calib.npz") as data:
        images, labels = data["input"], data["labels"]
    assert images.shape == (digits.CALIBRATION_SAMPLES, 1, 32, 32) and images.dtype == np.float32
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1, counts
    assert image_bytes(images) <= image_bytes(split("train")[0])
    assert not image_bytes(images) & image_bytes(split("test")[0])
    with np.load(digits.write_npz("train", tmp_path / "calib.npz", limit=digits.CALIBRATION_SAMPLES)) as again:
        assert np.array_equal(again["input"], images) and np.array_equal(again["labels"], labels)


# ---------------------------------------------------------------------------------------------
# The trained models


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize("name", NAMES)
def test_interface_and_metadata(name):
    model = fixture(name)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"] and dims(model.graph.input[0]) == ["N", 1, 32, 32]
    assert [o.name for o in model.graph.output] == ["logits"] and dims(model.graph.output[0]) == ["N", 10]
    assert model.opset_import[0].version == 17
    meta = metadata(model)
    assert meta["source"] == "onnxopt.models.train_digits"
    assert meta["dataset"] == "sklearn digits, 8x8 upsampled to 32x32"
    assert fixture_path(f"digits_{name}").stat().st_size < 400_000


def add_leaves(producers: dict[str, onnx.NodeProto], tensor: str) -> list[str]:
    """The terms of the tree of Adds that computes `tensor`."""
    node = producers.get(tensor)
    if node is None or node.op_type != "Add":
        return [tensor]
    return [leaf for t in node.input for leaf in add_leaves(producers, t)]


def branch_counts(model: onnx.ModelProto) -> list[int]:
    """For each Relu fed by an Add: how many terms the sum has."""
    producers = {out: node for node in model.graph.node for out in node.output}
    return [len(add_leaves(producers, n.input[0])) for n in model.graph.node
            if n.op_type == "Relu" and producers[n.input[0]].op_type == "Add"]


def depthwise_convs(model: onnx.ModelProto) -> int:
    weights = {t.name: t.dims for t in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            out_channels, in_per_group = weights[node.input[1]][:2]
            count += group == out_channels and in_per_group == 1
    return count


@pytest.mark.parametrize("name", NAMES)
def test_train_time_structure_is_kept(name):
    model = fixture(name)
    ops = count_ops(model)
    assert ops["BatchNormalization"] == ops["Conv"] + 2 * (name == "repvgg")  # + the identity branches
    if name == "repvgg":
        assert sorted(branch_counts(model)) == [2, 2, 2, 3, 3]  # 3x3 + 1x1 (+ identity BN) per block
    if name == "mobilenetv2":
        assert depthwise_convs(model) == 6
    if name == "mobilenet":
        assert depthwise_convs(model) == 5
        # plain ReLU, no Clip (ReLU6) and no residual Add: every Conv -> Relu -> Conv pair is
        # positively homogeneous, so cross-layer equalization can rescale all of them
        assert ops["Relu"] == ops["Conv"] and "Clip" not in ops and "Add" not in ops
    if name == "resnet":
        assert branch_counts(model) == [2, 2, 2, 2]  # residual joins
    # torch exports equal initializers once, aliased through Identity: the BN biases of summed
    # branches get equal gradients from an equal start and stay equal, so fold-bn meets aliases
    assert ops.get("Identity", 0) == {"resnet": 2, "mobilenetv2": 0, "repvgg": 7, "mobilenet": 0}[name]


@pytest.mark.parametrize("name", NAMES)
def test_test_accuracy(name):
    accuracy = float(np.mean(reference_logits(name).argmax(1) == split("test")[1]))
    assert accuracy >= 0.95, f"{name}: top-1 {accuracy:.4f}"
    assert abs(accuracy - float(metadata(fixture(name))["test_accuracy"])) <= 1e-9


# ---------------------------------------------------------------------------------------------
# fold-bn + reparam on real exports


@functools.cache
def optimized(name: str):
    return Pipeline.parse("fold-bn,reparam", rtol=1e-5).run(fixture(name))


@pytest.mark.parametrize("name", NAMES)
def test_fold_bn_and_reparam_keep_every_prediction(name):
    run = optimized(name)
    assert not run.report.problems, [(p.name, p.status, p.message) for p in run.report.problems]
    ops = count_ops(run.model)
    assert "BatchNormalization" not in ops
    if name == "repvgg":
        assert ops["Conv"] == count_ops(fixture(name))["Relu"]  # one Conv per block
    ref, out = reference_logits(name), logits(run.model)
    assert np.array_equal(out.argmax(1), ref.argmax(1))
    max_rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert max_rel <= 1e-5, f"{name}: max rel error {max_rel:.3g}"
