"""quantize from the command line: config settings and flags (the flag wins), --calib random in a
config, an unwritable range cache, --dry-run writing neither model nor cache, the JSON report's
fusion audit and kept-float reasons, inspect --fusion, and --preprocess combinations refused in
one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.testing import assert_one_line_error, count_ops, make_model, run_cli, small_cnn

F32 = np.float32


make = make_model


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def cnn_file(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(small_cnn().SerializeToString())
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype(F32))
    return path


# Was a bug (fixed): a pipeline file that sets calib (or preprocess) plus --calib (or --preprocess)
# on the command line ends in 'internal error: TypeError: Pipeline.__init__() got an unexpected
# keyword argument 'calib'' (or 'preprocess'); cli.run only pops the setting when the flag is absent
# (`calib or settings.pop(...)`), so it reaches Pipeline(**settings)
@pytest.mark.parametrize("setting", ["calib", "preprocess"])
def test_cli_flag_overrides_the_config_setting(capsys, tmp_path, cnn_file, setting):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, (10, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    config = tmp_path / "p.yaml"
    out = tmp_path / "out.onnx"
    if setting == "calib":
        config.write_text("passes: quantize:speed=false,holdback=4\ncalib: calib.npz\n")
        flags = ["--calib", tmp_path / "calib.npz"]
    else:
        config.write_text("passes: quantize:speed=false,holdback=2\npreprocess: size=8,scale=255\n")
        flags = ["--calib", images, "--preprocess", "size=8,scale=255"]
    code, stdout, err = run_cli(capsys, "run", cnn_file, "--config", config, *flags, "-o", out)
    assert code == 0, err
    assert "QuantizeLinear" in count_ops(onnx.load(str(out)))


# Was a bug (fixed): `calib: random` in a pipeline file outside the current folder is read as a path
# next to the file ('<dir>/random: no such data file or folder'): registry._settings joins calib
# with the file's folder before cli.run compares it with 'random'
def test_cli_config_calib_random(capsys, tmp_path, cnn_file):
    (tmp_path / "sub").mkdir()
    config = tmp_path / "sub" / "p.yaml"
    config.write_text("passes: quantize\ncalib: random\n")
    out = tmp_path / "out.onnx"
    code, stdout, err = run_cli(capsys, "run", cnn_file, "--config", config, "-o", out)
    assert code == 0, err
    assert "calibrated on random inputs" in stdout


# Was a bug (fixed): an unwritable ranges= cache (missing folder) makes the quantize pass 'fail'
# after the whole calibration, yet the run exits 0 and writes the *float* model to -o, with the
# warning ending in 'nothing written' although the model was written; README: exit 5 when an output
# cannot be written (or: quantize anyway and warn that the cache could not be saved)
def test_cli_unwritable_range_cache(capsys, tmp_path, cnn_file):
    out = tmp_path / "out.onnx"
    cache = tmp_path / "missing" / "ranges.npz"
    code, stdout, err = run_cli(capsys, "run", cnn_file, "--passes", f"quantize:speed=false,ranges={cache},holdback=4",
                                "--calib", tmp_path / "calib.npz", "-o", out)
    if code == 5:
        assert not out.exists() and len(err.splitlines()) == 1
    else:
        assert code == 0, err
        assert "QuantizeLinear" in count_ops(onnx.load(str(out))), "the float model was written as the result"


def test_cli_dry_run_writes_neither_model_nor_range_cache(capsys, tmp_path, cnn_file):
    before = listing(tmp_path)
    code, out, err = run_cli(capsys, "run", cnn_file, "--passes",
                             f"quantize:speed=false,ranges={tmp_path / 'ranges.npz'},holdback=4", "--calib",
                             tmp_path / "calib.npz", "--dry-run")
    assert code == 0, err
    assert "dry run: no model written" in out
    assert listing(tmp_path) == before


def test_cli_json_report_has_the_fusion_audit_and_kept_float_reasons(capsys, tmp_path, cnn_file):
    report = tmp_path / "r.json"
    code, out, err = run_cli(capsys, "run", cnn_file, "--passes", "quantize:speed=false,exclude=c1,holdback=4",
                             "--calib", tmp_path / "calib.npz", "-o", tmp_path / "o.onnx", "--report", report)
    assert code == 0, err
    q = json.loads(report.read_text())["passes"][-1]
    assert q["name"] == "quantize" and q["status"] == "applied"
    # the first Conv reads the float graph input (no other quantized op reads it): it stays float
    assert q["details"]["kept_float"] == {"Conv 'c1'": "excluded"}
    fusion = q["details"]["fusion"]
    assert fusion["integer_ops"] == {"QLinearAdd": 1, "QLinearConv": 2} and fusion["float_islands"] == []
    assert fusion["quantize_linear"] == 1 and fusion["dequantize_linear"] == 1
    assert any(s["where"] == "Conv 'c1'" and "excluded" in s["reason"] for s in q["skipped"])
    assert not any(n.startswith("warning: exclude") for n in q["notes"])


def test_cli_inspect_fusion_on_a_float_model_and_a_corrupt_file(capsys, tmp_path, cnn_file):
    code, out, err = run_cli(capsys, "inspect", "--fusion", cnn_file)
    assert code == 0, err
    assert "not a quantized model" in out and "float islands" not in out
    code, out, err = run_cli(capsys, "inspect", "--fusion", "--json", cnn_file)
    fusion = json.loads(out)["fusion"]
    assert fusion["float_islands"] == [] and fusion["integer_ops"] == {} and fusion["dequantize_linear"] == 0
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(cnn_file.read_bytes()[:200])
    assert_one_line_error(*run_cli(capsys, "inspect", "--fusion", bad), 3, "bad.onnx")


@pytest.mark.parametrize("extra, code, words", [
    (("--calib", "CALIB", "--preprocess", "size=8"), 2, ("preprocessing spec", "not .npy/.npz")),
    (("--calib", "random", "--preprocess", "size=8"), 2, ("--preprocess is for --calib DATA",)),
    (("--preprocess", "size=8"), 2, ("--preprocess is for --calib DATA",)),
    (("--calib", "IMAGES", "--preprocess", "size=8,bogus=1"), 2, ("unknown key 'bogus'",)),
    (("--calib", "IMAGES", "--preprocess", "size=8"), 2, ("no images",)),
], ids=["npz", "random", "no-calib", "bad-key", "empty-folder"])
def test_cli_bad_preprocess_combinations(capsys, tmp_path, cnn_file, extra, code, words):
    (tmp_path / "images").mkdir()
    args = [str(tmp_path / "calib.npz") if a == "CALIB" else str(tmp_path / "images") if a == "IMAGES" else a
            for a in extra]
    before = listing(tmp_path)
    got = run_cli(capsys, "run", cnn_file, "--passes", "quantize:speed=false", *args, "-o", tmp_path / "o.onnx")
    assert_one_line_error(*got, code, *words)
    assert listing(tmp_path) == before
