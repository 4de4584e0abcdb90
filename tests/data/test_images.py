"""Calibration data read lazily: memory-mapped .npy, folders read file by file, and folders of
images with a preprocessing spec (onnxopt.data.images), down to the pixel values the model sees."""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxopt import models
from onnxopt.cli import main
from onnxopt.data.feeds import LazyArray
from onnxopt.data.files import load_feeds
from onnxopt.data.images import ImageArray, Preprocess, parse_preprocess
from onnxopt.errors import BadData, BadOption

MODEL = models.build("resnet18-tiny")  # input "input" [1, 3, 32, 32]
F32 = np.float32


def relu_model(shape, dtype=TensorProto.FLOAT, inputs=("x",)):
    """The smallest model with the given input shape(s): loading data only reads the inputs."""
    vis = [helper.make_tensor_value_info(n, dtype, shape) for n in inputs]
    nodes = [helper.make_node("Relu", [n], [f"y{i}"]) for i, n in enumerate(inputs)]
    outs = [helper.make_tensor_value_info(f"y{i}", dtype, shape) for i in range(len(inputs))]
    return helper.make_model(helper.make_graph(nodes, "m", vis, outs), opset_imports=[helper.make_opsetid("", 17)])


def pixels(h, w, seed=0, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write(folder, name, array):
    folder.mkdir(exist_ok=True)
    Image.fromarray(array).save(folder / name)
    return folder / name


def first(feeds):
    return next(iter(feeds))[next(iter(feeds.arrays))]


# -- the spec -----------------------------------------------------------------------------------

def test_spec_grammar():
    spec = parse_preprocess("size=224, layout=NHWC,mean=0.485|0.456|0.406,std=0.229|0.224|0.225,order=bgr,"
                            "scale=255,resize=256,")
    assert spec == Preprocess(size=(224, 224), resize=256, layout="nhwc", order="bgr", scale=255.0,
                              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert parse_preprocess(str(spec)) == spec
    assert parse_preprocess("size=32x48").size == (32, 48)
    assert parse_preprocess("") == Preprocess()  # everything from the model: raw pixels, NCHW, RGB


@pytest.mark.parametrize("text, words", [
    ("sise=224", "unknown key 'sise'"),
    ("size", "not key=value"),
    ("size=big", "size=big: expected N or HxW"),
    ("mean=0.5|x", "numbers separated by"),
    ("layout=chw", "expected nchw or nhwc"),
    ("order=rbg", "expected rgb or bgr"),
    ("std=0", "divides by zero"),
    ("scale=0", "positive"),
    ("size=224,resize=200", "smaller than the centre crop"),
    ("scale=255,scale=1", "given twice"),
])
def test_bad_specs_are_refused_in_one_line(text, words):
    with pytest.raises(BadOption, match=words) as err:
        parse_preprocess(text)
    assert "\n" not in str(err.value)


# -- pixel values -------------------------------------------------------------------------------

def test_raw_pixels_nchw_rgb(tmp_path):
    raw = [pixels(32, 32, seed=i) for i in range(3)]
    for i, a in enumerate(raw):
        write(tmp_path, f"{i}.png", a)
    feeds = load_feeds(tmp_path, MODEL, preprocess="")
    batches = list(feeds)
    assert len(feeds) == 3 and feeds.labels is None
    assert [b["input"].shape for b in batches] == [(1, 3, 32, 32)] * 3 and batches[0]["input"].dtype == F32
    for b, a in zip(batches, raw):
        assert np.array_equal(b["input"][0], a.transpose(2, 0, 1).astype(F32))


def test_scale_mean_std_and_bgr(tmp_path):
    raw = pixels(32, 32)
    write(tmp_path, "a.png", raw)
    mean, std = np.array([0.5, 0.4, 0.3], F32), np.array([0.2, 0.25, 0.5], F32)
    got = first(load_feeds(tmp_path, MODEL, preprocess="scale=255,mean=0.5|0.4|0.3,std=0.2|0.25|0.5"))[0]
    want = ((raw.astype(F32) / F32(255)) - mean) / std
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), rtol=0, atol=1e-6)
    # bgr: channels reversed first; mean/std are per channel in the model's (BGR) order
    got = first(load_feeds(tmp_path, MODEL, preprocess="order=bgr,mean=100|0|50,std=2"))[0]
    want = (raw[..., ::-1].astype(F32) - np.array([100, 0, 50], F32)) / F32(2)
    assert np.array_equal(got, want.transpose(2, 0, 1))


def test_nhwc_layout_and_float16_input(tmp_path):
    raw = pixels(8, 8)
    write(tmp_path, "a.png", raw)
    got = first(load_feeds(tmp_path, relu_model([1, 8, 8, 3]), preprocess="layout=nhwc,scale=2"))
    assert got.shape == (1, 8, 8, 3) and np.array_equal(got[0], raw.astype(F32) / 2)
    half = first(load_feeds(tmp_path, relu_model([1, 8, 8, 3], TensorProto.FLOAT16), preprocess="layout=nhwc"))
    assert half.dtype == np.float16 and np.array_equal(half[0], raw.astype(np.float16))


def test_uint8_input_takes_raw_pixels(tmp_path):
    raw = pixels(8, 8)
    write(tmp_path, "a.png", raw)
    got = first(load_feeds(tmp_path, relu_model([1, 3, 8, 8], TensorProto.UINT8), preprocess=""))
    assert got.dtype == np.uint8 and np.array_equal(got[0], raw.transpose(2, 0, 1))
    with pytest.raises(BadData, match="uint8 ones with raw pixels"):
        load_feeds(tmp_path, relu_model([1, 3, 8, 8], TensorProto.UINT8), preprocess="scale=255")


def test_grayscale_for_one_channel_input_with_dynamic_batch(tmp_path):
    model = onnx.load(models.fixture_path("digits_resnet"))  # input [N, 1, 32, 32]
    rgb = pixels(32, 32)
    write(tmp_path, "a.png", rgb)
    write(tmp_path, "b.png", pixels(32, 32, seed=1, channels=1))  # already grayscale
    feeds = load_feeds(tmp_path, model, preprocess="scale=16")
    a, b = (f["input"] for f in feeds)
    assert len(feeds) == 2 and a.shape == (1, 1, 32, 32)
    luma = np.asarray(Image.fromarray(rgb).convert("L"), F32)
    assert np.array_equal(a[0, 0], luma / 16) and np.array_equal(b[0, 0], pixels(32, 32, 1, 1) / F32(16))


def test_resize_shorter_side_then_centre_crop(tmp_path):
    model = relu_model([1, 3, 8, 8])
    wide = pixels(8, 12)  # H 8, W 12: the shorter side is already 8, so only the crop acts
    write(tmp_path / "w", "a.png", wide)
    got = first(load_feeds(tmp_path / "w", model, preprocess="resize=8,size=8"))[0]
    assert np.array_equal(got, wide[:, 2:10].transpose(2, 0, 1).astype(F32))
    # torchvision's arithmetic: 7x10 -> shorter side 8, longer int(8 * 10 / 7) = 11; crop left round(1.5) = 2
    odd = pixels(10, 7, seed=3)  # H 10, W 7
    write(tmp_path / "o", "a.png", odd)
    got = first(load_feeds(tmp_path / "o", model, preprocess="resize=8"))[0]
    resized = Image.fromarray(odd).resize((8, 11), Image.BILINEAR)
    want = np.asarray(resized.crop((0, 2, 8, 10)), F32)
    assert np.array_equal(got, want.transpose(2, 0, 1))
    # without resize: straight to size, aspect ratio not kept
    write(tmp_path / "s", "a.png", odd)
    got = first(load_feeds(tmp_path / "s", model, preprocess="size=8"))[0]
    assert np.array_equal(got, np.asarray(Image.fromarray(odd).resize((8, 8), Image.BILINEAR), F32).transpose(2, 0, 1))
    # jpg, bmp, ppm too; a uniform image survives any resampling exactly
    for suffix in (".jpg", ".bmp", ".ppm"):
        write(tmp_path / suffix[1:], "a" + suffix, np.full((20, 30, 3), 77, np.uint8))
        got = first(load_feeds(tmp_path / suffix[1:], model, preprocess="resize=9,size=8"))
        assert got.shape == (1, 3, 8, 8) and np.all(np.abs(got - 77) <= (2 if suffix == ".jpg" else 0))


def test_images_are_decoded_a_batch_at_a_time(tmp_path, monkeypatch):
    for i in range(6):
        write(tmp_path, f"{i:02d}.png", pixels(32, 32, seed=i))
    decoded = []
    load = ImageArray.load
    monkeypatch.setattr(ImageArray, "load", lambda self, path: decoded.append(path.name) or load(self, path))
    feeds = load_feeds(tmp_path, MODEL, preprocess="scale=255")
    assert decoded == ["00.png"]  # the check of the first batch, nothing more
    decoded.clear()
    for i, _ in enumerate(feeds):
        assert decoded == [f"{i:02d}.png"]
        decoded.clear()
    assert [f["input"].shape[0] for f in feeds.tail(2)] == [1, 1] and decoded == ["04.png", "05.png"]


# -- errors -------------------------------------------------------------------------------------

def test_image_errors(tmp_path, monkeypatch):
    write(tmp_path / "imgs", "a.png", pixels(32, 32))
    with pytest.raises(BadData, match="no such"):
        load_feeds(tmp_path / "nothing", MODEL, preprocess="scale=255")
    with pytest.raises(BadData, match="need a preprocessing spec"):
        load_feeds(tmp_path / "imgs", MODEL)
    with pytest.raises(BadData, match=r"size=16 makes inputs of shape \[1, 3, 16, 16\], the model wants \[1, 3, 32, 32\]"):
        load_feeds(tmp_path / "imgs", MODEL, preprocess="size=16")
    with pytest.raises(BadData, match=r"32 channels in layout=nhwc.*\(layout=nchw\?\)"):
        load_feeds(tmp_path / "imgs", MODEL, preprocess="layout=nhwc")
    with pytest.raises(BadData, match="mean has 2 values for the 3 channels"):
        load_feeds(tmp_path / "imgs", MODEL, preprocess="mean=1|2")
    with pytest.raises(BadData, match=r"give the image size"):
        load_feeds(tmp_path / "imgs", relu_model(["N", 3, "H", "W"]), preprocess="")
    assert first(load_feeds(tmp_path / "imgs", relu_model(["N", 3, "H", "W"]), preprocess="size=16")).shape == (1, 3, 16, 16)
    with pytest.raises(BadData, match="fewer images"):
        load_feeds(tmp_path / "imgs", relu_model([2, 3, 32, 32]), preprocess="")
    np.save(tmp_path / "imgs" / "b.npy", np.zeros((1, 3, 32, 32), F32))
    with pytest.raises(BadData, match="both images and .npy/.npz files"):
        load_feeds(tmp_path / "imgs", MODEL, preprocess="scale=255")
    with pytest.raises(BadOption, match="is for a folder of images"):
        load_feeds(tmp_path / "imgs" / "b.npy", MODEL, preprocess="scale=255")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BadData, match=r"a.jpg: cannot read as an image"):
        load_feeds(tmp_path / "bad", MODEL, preprocess="")
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(BadData, match=r"needs Pillow: pip install onnxopt\[images\]"):
        load_feeds(tmp_path / "imgs" / "a.png", MODEL, preprocess="")


# -- lazy .npy / folders ------------------------------------------------------------------------

def test_npy_is_memory_mapped(tmp_path):
    data = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(F32)
    np.save(tmp_path / "a.npy", data)
    feeds = load_feeds(tmp_path / "a.npy", MODEL)
    assert isinstance(feeds.arrays["input"], np.memmap)
    assert np.array_equal(np.concatenate([f["input"] for f in feeds]), data)
    np.save(tmp_path / "d.npy", data.astype(np.float64))  # cast a batch at a time, not the file
    feeds = load_feeds(tmp_path / "d.npy", MODEL)
    assert isinstance(feeds.arrays["input"], LazyArray) and isinstance(feeds.arrays["input"].array, np.memmap)
    batch = feeds.tail(1)[0]["input"]
    assert batch.dtype == F32 and batch.flags.c_contiguous and np.array_equal(batch, data[5:])
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    assert all(f["input"].flags.c_contiguous for f in load_feeds(tmp_path / "f.npy", MODEL))


def test_folder_is_read_file_by_file(tmp_path, monkeypatch):
    """Batches of 2 over files of 3 samples: a batch may straddle two files; no more than the file
    being read stays loaded, and each file is read once per pass."""
    data = np.random.default_rng(1).standard_normal((9, 3, 4, 4)).astype(F32)
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", data[3 * i:3 * i + 3])
    loads = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: loads.append(path.name) or real(path, *a, **k))
    feeds = load_feeds(tmp_path, relu_model([2, 3, 4, 4]))
    assert loads == ["0.npy"] and len(feeds) == 4  # the first batch's check; the 9th sample is left over
    loads.clear()
    seen, per_batch = [], []
    for feed in feeds:  # samples 0-1 (0.npy, still open), 2-3 (0.npy and 1.npy), 4-5, 6-7 (2.npy)
        seen.append(feed["x"])
        per_batch.append(list(loads))
        loads.clear()
    assert per_batch == [[], ["1.npy"], [], ["2.npy"]]
    assert np.array_equal(np.concatenate(seen), data[:8])
    assert sum(1 for _ in feeds) == 4 and loads == ["0.npy", "1.npy", "2.npy"]  # once per pass
    loads.clear()
    tail = feeds.tail(3)  # samples 2-7
    assert np.array_equal(np.concatenate([f["x"] for f in tail]), data[2:8]) and loads == ["0.npy", "1.npy", "2.npy"]


def test_folder_of_npz_with_labels_and_two_inputs(tmp_path):
    model = relu_model([1, 2], inputs=("a", "b"))
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 2)), rng.standard_normal((5, 2)).astype(F32)
    np.savez(tmp_path / "1.npz", a=a[:2], b=b[:2], labels=np.array([1, 0]))
    np.savez_compressed(tmp_path / "2.npz", b=b[2:], a=a[2:], labels=np.array([[2], [1], [0]]))
    feeds = load_feeds(tmp_path, model)
    assert len(feeds) == 5 and feeds.labels.tolist() == [1, 0, 2, 1, 0]
    got = list(feeds)
    assert got[3]["a"].dtype == F32 and np.array_equal(got[3]["a"], a[3:4].astype(F32))
    assert np.array_equal(np.concatenate([g["b"] for g in got]), b)


def test_folder_files_must_agree(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 32, 32), F32))
    np.save(tmp_path / "b.npy", np.zeros((2, 3, 16, 16), F32))
    with pytest.raises(BadData, match=r"b.npy: 'input' holds samples of shape \[3, 16, 16\], a.npy holds \[3, 32, 32\]"):
        load_feeds(tmp_path, MODEL)
    (tmp_path / "b.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:200])  # truncated
    with pytest.raises(BadData, match="b.npy: cannot read"):
        load_feeds(tmp_path, MODEL)
    np.save(tmp_path / "b.npy", np.float32(1))
    with pytest.raises(BadData, match="single value"):
        load_feeds(tmp_path, MODEL)


# -- command line -------------------------------------------------------------------------------

def test_cli_quantizes_with_an_image_folder(tmp_path, capsys):
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(MODEL.SerializeToString())
    for i in range(6):
        write(tmp_path / "imgs", f"{i}.jpg", pixels(40, 48, seed=i))
    spec = "resize=32,size=32,layout=nchw,order=rgb,scale=255,mean=0.485|0.456|0.406,std=0.229|0.224|0.225"
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    with pytest.raises(SystemExit) as code:
        main(["run", str(model_path), "--passes", "fold-bn,quantize:speed=false,holdback=2", "--calib", str(tmp_path / "imgs"),
              "--preprocess", spec, "-o", str(out), "--report", str(report)])
    assert code.value.code == 0, capsys.readouterr().err
    passes = {p["name"]: p for p in json.loads(report.read_text())["passes"]}
    assert passes["quantize"]["status"] == "applied", passes["quantize"]
    assert passes["quantize"]["details"]["calibration"]["batches"] == 4
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)


@pytest.mark.parametrize("args, code, words", [
    (["--preprocess", "scale=255"], 2, "--preprocess is for --calib"),
    (["--calib", "random", "--preprocess", "scale=255"], 2, "--preprocess is for --calib"),
    (["--calib", "{npz}", "--preprocess", "scale=255"], 2, "is for a folder of images"),
    (["--calib", "{imgs}", "--preprocess", "scale=255,crop=3"], 2, "unknown key 'crop'"),
    (["--calib", "{imgs}"], 3, "need a preprocessing spec"),
    (["--calib", "{imgs}", "--preprocess", "size=64"], 3, r"the model wants \[1, 3, 32, 32\]"),
])
def test_cli_preprocess_errors(tmp_path, capsys, args, code, words):
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(MODEL.SerializeToString())
    write(tmp_path / "imgs", "a.png", pixels(32, 32))
    np.savez(tmp_path / "d.npz", input=np.zeros((1, 3, 32, 32), F32))
    args = [a.format(npz=tmp_path / "d.npz", imgs=tmp_path / "imgs") for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(model_path), "--passes", "fold-bn", "-o", str(tmp_path / "o.onnx"), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == code and len(err.strip().splitlines()) == 1
    assert __import__("re").search(words, err), err
    assert not (tmp_path / "o.onnx").exists()
