"""CLI tests for `onnxopt run / inspect / list-passes / demo`.

Most tests call `onnxopt.cli.main([...])` in-process (main() is what turns errors into one line
on stderr and an exit code); a few run the real console script to prove that no traceback reaches
a real process's stderr. Every error test also checks that nothing was written: no output model,
no report and no stray temp file.
"""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
import onnxopt.graph.io
import onnxopt.pipeline.run
from onnxopt.testing import assert_one_line_error, count_ops
from onnxopt.testing import run_cli as invoke

CONSOLE_SCRIPT = Path(sys.executable).with_name("onnxopt")

# The hand-built model: Conv 3->8 3x3 pad 1 on 1x3x16x16, BN, Relu, GAP, Flatten, Gemm 8->10.
CONV_MACS = 16 * 16 * 8 * 3 * 9
GEMM_MACS = 1 * 10 * 8
PARAMS = 8 * 3 * 3 * 3 + 8 + 4 * 8 + 10 * 8 + 10


# -- models ----------------------------------------------------------------------------------
def make_model(*, dims=(1, 3, 16, 16), bn: bool = True, head: bool = True, opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name, arr):
        return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)

    inits = [init("w", rng.standard_normal((8, 3, 3, 3))), init("b", rng.standard_normal(8))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], name="conv", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])]
    last = "conv"
    if bn:
        inits += [init("gamma", rng.random(8) + 0.5), init("beta", rng.standard_normal(8)),
                  init("mean", rng.standard_normal(8)), init("var", rng.random(8) + 0.5)]
        nodes.append(helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"],
                                      name="bn"))
        last = "bn"
    nodes.append(helper.make_node("Relu", [last], ["relu"], name="relu"))
    if head:
        inits += [init("fc_w", rng.standard_normal((10, 8))), init("fc_b", rng.standard_normal(10))]
        nodes += [helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
                  helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 10])
    else:
        nodes.append(helper.make_node("Identity", ["relu"], ["y"], name="out"))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims[:1]) + [8] + list(dims[2:]))
    graph = helper.make_graph(nodes, "cli_test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                              [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8,
                              producer_name="onnxopt-tests")
    onnx.checker.check_model(model, full_check=True)
    return model


def resnet_model() -> onnx.ModelProto:
    try:
        from onnxopt.models import build
        return build("resnet18-tiny")
    except Exception:  # noqa: BLE001 - the zoo is optional here; fall back to the hand-built model
        return make_model()


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def small(tmp_path) -> Path:
    return save(make_model(), tmp_path / "m.onnx")


@pytest.fixture(scope="module")
def resnet_bytes() -> bytes:
    return resnet_model().SerializeToString()


@pytest.fixture
def resnet(tmp_path, resnet_bytes) -> Path:
    path = tmp_path / "resnet.onnx"
    path.write_bytes(resnet_bytes)
    return path


# -- helpers ---------------------------------------------------------------------------------
def listing(directory: Path) -> list[str]:
    """Every entry under `directory`, hidden ones (temp files) included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def assert_interrupted(code: int, out: str, err: str, *words: str) -> None:
    """Ctrl-C: exit 130 and one message line. click echoes a bare newline to stderr before it turns
    KeyboardInterrupt into Abort, so blank lines are tolerated here; see
    test_ctrl_c_message_is_exactly_one_line for the strict form."""
    assert code == 130, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxopt: interrupted"), lines[0]
    for w in ("no output written", *words):
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"


def run_error(capsys, tmp_path: Path, expected_code: int, words: tuple[str, ...], *args) -> str:
    before = listing(tmp_path)
    code, out, err = invoke(capsys, *args)
    assert_one_line_error(code, out, err, expected_code, *words)
    assert listing(tmp_path) == before, "a failed run left files behind"
    return err


def ort_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def max_rel(ref: np.ndarray, got: np.ndarray) -> float:
    """Scale-normalized relative error, as onnxopt.runtime.fidelity defines it."""
    return float(np.abs(ref - got).max() / np.abs(ref).max())


# -- bad input files (exit 3) ----------------------------------------------------------------
def test_missing_model_file(capsys, tmp_path):
    run_error(capsys, tmp_path, 3, ("nope.onnx", "no such file"),
              "run", tmp_path / "nope.onnx", "--passes", "fold-bn", "-o", tmp_path / "out.onnx")


def test_directory_as_model(capsys, tmp_path):
    (tmp_path / "adir").mkdir()
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", tmp_path / "adir", "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    # click's Path(dir_okay=False) rejects it (exit 2) before io.load_model could (exit 3)
    assert code in (2, 3)
    assert_one_line_error(code, out, err, code, "adir", "directory")
    assert listing(tmp_path) == before


def test_directory_as_model_is_bad_input_exit_3(capsys, tmp_path):
    (tmp_path / "adir").mkdir()
    run_error(capsys, tmp_path, 3, ("directory",), "run", tmp_path / "adir", "--passes", "fold-bn")


def test_empty_file(capsys, tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    run_error(capsys, tmp_path, 3, ("empty.onnx", "empty"), "run", tmp_path / "empty.onnx", "--passes", "fold-bn")


def test_random_bytes(capsys, tmp_path):
    data = np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "noise.onnx").write_bytes(data)
    err = run_error(capsys, tmp_path, 3, ("noise.onnx",), "run", tmp_path / "noise.onnx", "--passes", "fold-bn")
    assert "not a valid ONNX" in err or "not an ONNX model" in err


def test_text_file_is_not_onnx(capsys, tmp_path):
    (tmp_path / "notes.onnx").write_text("hello, this is not a model\n")
    err = run_error(capsys, tmp_path, 3, ("notes.onnx",), "run", tmp_path / "notes.onnx", "--passes", "fold-bn")
    assert "not a valid ONNX" in err or "not an ONNX model" in err


def test_truncated_model(capsys, tmp_path, resnet_bytes):
    (tmp_path / "trunc.onnx").write_bytes(resnet_bytes[:300])
    err = run_error(capsys, tmp_path, 3, ("trunc.onnx",), "run", tmp_path / "trunc.onnx", "--passes", "fold-bn")
    assert "corrupt or truncated" in err or "not an ONNX model" in err


@pytest.mark.parametrize("opset", [3, 99])
def test_unsupported_opset(capsys, tmp_path, opset):
    model = make_model()
    model.opset_import[0].version = opset
    save(model, tmp_path / "old.onnx")
    run_error(capsys, tmp_path, 3, (f"opset {opset}", "not supported"),
              "run", tmp_path / "old.onnx", "--passes", "fold-bn", "--report", tmp_path / "r.json")


def test_unsupported_opset_inspect(capsys, tmp_path):
    model = make_model()
    model.opset_import[0].version = 99
    save(model, tmp_path / "new.onnx")
    run_error(capsys, tmp_path, 3, ("opset 99",), "inspect", tmp_path / "new.onnx")


def _external_data_model(tmp_path: Path) -> Path:
    path = tmp_path / "ext.onnx"
    onnx.save(make_model(), path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    return path


def test_external_data_model_runs(capsys, tmp_path):
    path = _external_data_model(tmp_path)
    code, out, err = invoke(capsys, "run", path, "--passes", "fold-bn,cleanup", "-o", tmp_path / "out.onnx")
    assert code == 0, err
    result = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    assert all(t.data_location != TensorProto.EXTERNAL for t in result.graph.initializer)
    assert count_ops(result).get("BatchNormalization", 0) == 0


def test_external_data_missing(capsys, tmp_path):
    path = _external_data_model(tmp_path)
    (tmp_path / "ext.data").unlink()
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", path, "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    assert code != 0
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert listing(tmp_path) == before


def test_external_data_missing_is_bad_input(capsys, tmp_path):
    path = _external_data_model(tmp_path)
    (tmp_path / "ext.data").unlink()
    run_error(capsys, tmp_path, 3, ("ext.onnx", "external"), "run", path, "--passes", "fold-bn")


# -- usage errors (exit 2) -------------------------------------------------------------------
def test_unknown_pass_suggests(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("unknown pass 'fold-bm'", "did you mean 'fold-bn'"),
              "run", small, "--passes", "fold-bm,cleanup", "-o", tmp_path / "out.onnx")


def test_bad_option_value(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("fold-bn", "affine", "maybe"),
              "run", small, "--passes", "fold-bn:affine=maybe")


def test_unknown_option_key_suggests(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("unknown option 'afine'", "did you mean 'affine'"),
              "run", small, "--passes", "fold-bn:afine=1")


def test_empty_spec(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("no passes",), "run", small, "--passes", ",")


def test_unknown_flag(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("--bogus", "onnxopt run --help"), "run", small, "--passes", "fold-bn", "--bogus")


def test_output_equal_to_input_refused(capsys, tmp_path, small):
    original = small.read_bytes()
    run_error(capsys, tmp_path, 2, ("overwrite the input", "--overwrite"), "run", small, "--passes", "fold-bn",
              "-o", small)
    # the same file spelled differently
    run_error(capsys, tmp_path, 2, ("--overwrite",), "run", small, "--passes", "fold-bn",
              "-o", tmp_path / "." / "m.onnx")
    assert small.read_bytes() == original


def test_output_equal_to_input_with_overwrite(capsys, tmp_path, small):
    original = small.read_bytes()
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn,cleanup", "-o", small, "--overwrite")
    assert code == 0, err
    assert listing(tmp_path) == ["m.onnx"]
    replaced = small.read_bytes()
    assert replaced != original
    assert count_ops(onnx.load_from_string(replaced)).get("BatchNormalization", 0) == 0
    assert count_ops(onnx.load_from_string(original))["BatchNormalization"] == 1


def test_dynamic_shape_needs_input_shape(capsys, tmp_path):
    model = save(make_model(dims=("N", 3, "H", "W")), tmp_path / "dyn.onnx")
    run_error(capsys, tmp_path, 3, ("--input-shape", "'x'", "dynamic"), "run", model, "--passes", "fold-bn",
              "-o", tmp_path / "out.onnx")
    code, out, err = invoke(capsys, "run", model, "--passes", "fold-bn", "-o", tmp_path / "out.onnx",
                            "--input-shape", "x:1,3,16,16")
    assert code == 0, err
    assert count_ops(onnx.load(tmp_path / "out.onnx")).get("BatchNormalization", 0) == 0
    assert "x 1x3x16x16" in out


def test_symbolic_batch_alone_needs_no_input_shape(capsys, tmp_path):
    model = save(make_model(dims=("N", 3, 16, 16)), tmp_path / "b.onnx")
    code, out, err = invoke(capsys, "run", model, "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    assert code == 0, err


@pytest.mark.parametrize("shape", ["x:1,3,a,16", "bogus", "x:", ":1,3,16,16", "x:1,3,-1,16", "x:1,3,0,16"])
def test_malformed_input_shape(capsys, tmp_path, small, shape):
    run_error(capsys, tmp_path, 3, ("--input-shape", "NAME:D1,D2"), "run", small, "--passes", "fold-bn",
              "--input-shape", shape)


def test_input_shape_for_unknown_input(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 3, ("--input-shape", "nosuch", "inputs: x"), "run", small, "--passes", "fold-bn",
              "--input-shape", "nosuch:1,3,16,16")


def test_input_shape_that_does_not_fit(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 3, ("--input-shape", "does not fit"), "run", small, "--passes", "fold-bn",
              "--input-shape", "x:1,3,32,32")


def test_passes_and_config_together(capsys, tmp_path, small):
    (tmp_path / "p.yaml").write_text("passes: [fold-bn]\n")
    run_error(capsys, tmp_path, 2, ("exactly one of --passes", "--config"),
              "run", small, "--passes", "fold-bn", "--config", tmp_path / "p.yaml")


def test_neither_passes_nor_config(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("exactly one of --passes", "--config"), "run", small)


def test_config_bad_yaml(capsys, tmp_path, small):
    (tmp_path / "p.yaml").write_text("passes: [fold-bn\n  - : :\n")
    run_error(capsys, tmp_path, 3, ("p.yaml", "cannot parse"), "run", small, "--config", tmp_path / "p.yaml")


def test_config_bad_json(capsys, tmp_path, small):
    (tmp_path / "p.json").write_text('{"passes": ["fold-bn",]')
    run_error(capsys, tmp_path, 3, ("p.json", "cannot parse"), "run", small, "--config", tmp_path / "p.json")


def test_config_missing_passes(capsys, tmp_path, small):
    (tmp_path / "p.yaml").write_text("verify: true\nsamples: 3\n")
    run_error(capsys, tmp_path, 3, ("p.yaml", "'passes'"), "run", small, "--config", tmp_path / "p.yaml")


def test_config_empty_passes(capsys, tmp_path, small):
    (tmp_path / "p.yaml").write_text("passes: []\n")
    run_error(capsys, tmp_path, 3, ("p.yaml", "'passes'"), "run", small, "--config", tmp_path / "p.yaml")


def test_config_unknown_pass(capsys, tmp_path, small):
    (tmp_path / "p.yaml").write_text("passes:\n  - fold-bm\n  - cleanup\n")
    run_error(capsys, tmp_path, 2, ("unknown pass 'fold-bm'", "did you mean 'fold-bn'"),
              "run", small, "--config", tmp_path / "p.yaml")


def test_config_unknown_option_and_setting(capsys, tmp_path, small):
    (tmp_path / "p.yaml").write_text("passes:\n  - name: fold-bn\n    afine: false\n")
    run_error(capsys, tmp_path, 2, ("afine", "did you mean 'affine'"), "run", small, "--config", tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("passes: [fold-bn]\nverfy: false\n")
    run_error(capsys, tmp_path, 3, ("q.yaml", "unknown setting", "verfy"), "run", small, "--config",
              tmp_path / "q.yaml")


def test_config_missing_file(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 3, ("nothere.yaml", "no such pipeline file"),
              "run", small, "--config", tmp_path / "nothere.yaml")


def test_config_binary_file(capsys, tmp_path, small):
    (tmp_path / "p.yaml").write_bytes(small.read_bytes())
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", small, "--config", tmp_path / "p.yaml")
    assert code != 0
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert listing(tmp_path) == before


def test_config_binary_file_is_bad_input(capsys, tmp_path, small):
    (tmp_path / "p.yaml").write_bytes(small.read_bytes())
    run_error(capsys, tmp_path, 3, ("p.yaml",), "run", small, "--config", tmp_path / "p.yaml")


def test_report_directory_missing(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("r.json", "does not exist"), "run", small, "--passes", "fold-bn",
              "-o", tmp_path / "out.onnx", "--report", tmp_path / "nodir" / "r.json")


def test_output_directory_missing(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("out.onnx", "does not exist"), "run", small, "--passes", "fold-bn",
              "-o", tmp_path / "nodir" / "out.onnx")


def test_report_equal_to_input_refused(capsys, tmp_path, small):
    original = small.read_bytes()
    run_error(capsys, tmp_path, 2, ("overwrite the input",), "run", small, "--passes", "fold-bn",
              "-o", tmp_path / "out.onnx", "--report", small)
    assert small.read_bytes() == original


def test_report_equal_to_input_message_does_not_suggest_overwrite(capsys, tmp_path, small):
    err = run_error(capsys, tmp_path, 2, ("overwrite the input",), "run", small, "--passes", "fold-bn",
                    "-o", tmp_path / "out.onnx", "--report", small, "--overwrite")
    assert "--overwrite" not in err


def test_report_equal_to_output_refused(capsys, tmp_path, small):
    run_error(capsys, tmp_path, 2, ("out.onnx",), "run", small, "--passes", "fold-bn",
              "-o", tmp_path / "out.onnx", "--report", tmp_path / "out.onnx")


def test_inspect_missing_model(capsys, tmp_path):
    run_error(capsys, tmp_path, 3, ("nope.onnx", "no such file"), "inspect", tmp_path / "nope.onnx")


# -- interrupted or failing saves ------------------------------------------------------------
def _interrupt_after_write(monkeypatch, exc: BaseException):
    """Make os.fsync (called after the temp file got all its bytes) raise `exc`."""
    calls = []

    def fsync(fd):
        calls.append(os.fstat(fd).st_size)
        raise exc

    monkeypatch.setattr(onnxopt.graph.io.os, "fsync", fsync)
    return calls


def test_ctrl_c_during_save_leaves_nothing(capsys, tmp_path, small, monkeypatch):
    calls = _interrupt_after_write(monkeypatch, KeyboardInterrupt())
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx",
                            "--report", tmp_path / "r.json")
    monkeypatch.undo()
    assert calls and calls[0] > 0, "the interrupt should come after bytes were written"
    assert_interrupted(code, out, err)
    assert listing(tmp_path) == before


def test_ctrl_c_in_the_middle_of_write_leaves_nothing(capsys, tmp_path, resnet, monkeypatch):
    real_fdopen = os.fdopen
    written = []

    class HalfWriter:
        def __init__(self, fh):
            self._fh = fh

        def write(self, data):
            self._fh.write(data[: len(data) // 2])
            self._fh.flush()
            written.append(os.fstat(self._fh.fileno()).st_size)
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    def fdopen(fd, mode="r", *args, **kwargs):
        fh = real_fdopen(fd, mode, *args, **kwargs)
        return HalfWriter(fh) if "w" in mode else fh

    monkeypatch.setattr(onnxopt.graph.io.os, "fdopen", fdopen)
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", resnet, "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    monkeypatch.undo()
    assert written and written[0] > 0
    assert_interrupted(code, out, err)
    assert listing(tmp_path) == before


def test_ctrl_c_during_pipeline(capsys, tmp_path, small, monkeypatch):

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnxopt.pipeline.run.Pipeline, "run", boom)  # the CLI imports it when a command runs
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    assert_interrupted(code, out, err)
    assert listing(tmp_path) == before


def test_ctrl_c_while_overwriting_keeps_input(capsys, tmp_path, small, monkeypatch):
    original = small.read_bytes()
    _interrupt_after_write(monkeypatch, KeyboardInterrupt())
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", small, "--overwrite")
    monkeypatch.undo()
    assert_interrupted(code, out, err)
    assert listing(tmp_path) == ["m.onnx"]
    assert small.read_bytes() == original


def test_ctrl_c_message_is_exactly_one_line(capsys, tmp_path, small, monkeypatch):
    _interrupt_after_write(monkeypatch, KeyboardInterrupt())
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    monkeypatch.undo()
    assert code == 130
    assert err == "onnxopt: interrupted; no output written\n"


def test_exception_during_save_leaves_nothing(capsys, tmp_path, small, monkeypatch):
    def replace(src, dst):
        raise RuntimeError("simulated failure in os.replace")

    monkeypatch.setattr(onnxopt.graph.io.os, "replace", replace)
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    monkeypatch.undo()
    # not a user error: reported as an internal error, still in one line and without traceback
    assert_one_line_error(code, out, err, 1, "RuntimeError", "simulated failure", "ONNXOPT_DEBUG",
                          prefix="onnxopt: internal error:")
    assert listing(tmp_path) == before


def test_disk_full_during_save_leaves_nothing(capsys, tmp_path, small, monkeypatch):
    _interrupt_after_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    monkeypatch.undo()
    assert code != 0
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "No space left" in err
    assert listing(tmp_path) == before


def test_disk_full_during_save_is_a_user_error(capsys, tmp_path, small, monkeypatch):
    _interrupt_after_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx")
    monkeypatch.undo()
    assert code not in (0, 1)
    assert_one_line_error(code, out, err, code, "out.onnx", "No space left")


def test_ctrl_c_during_report_write_leaves_no_model(capsys, tmp_path, small, monkeypatch):
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the model is staged first, the report second: interrupt while writing the report
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(onnxopt.graph.io.os, "fsync", fsync)
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx",
                            "--report", tmp_path / "r.json")
    monkeypatch.undo()
    assert_interrupted(code, out, err)
    assert listing(tmp_path) == before


# -- success paths ---------------------------------------------------------------------------
def test_run_fold_bn_cleanup_with_report(capsys, tmp_path, resnet):
    source = onnx.load(resnet)
    n_bn = count_ops(source)["BatchNormalization"]
    assert n_bn > 0
    out_path, report_path = tmp_path / "out.onnx", tmp_path / "R.json"
    code, out, err = invoke(capsys, "run", resnet, "--passes", "fold-bn,cleanup", "-o", out_path,
                            "--report", report_path)
    assert code == 0, err
    assert err == ""
    assert listing(tmp_path) == sorted(["R.json", "out.onnx", "resnet.onnx"])

    result = onnx.load(out_path)
    onnx.checker.check_model(result, full_check=True)
    assert count_ops(result).get("BatchNormalization", 0) == 0

    inp = source.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    feeds = {inp.name: np.random.default_rng(7).standard_normal(shape).astype(np.float32)}
    for ref, got in zip(ort_outputs(resnet, feeds), ort_outputs(out_path, feeds)):
        assert ref.shape == got.shape
        assert max_rel(ref, got) <= 1e-5

    report = json.loads(report_path.read_text())
    assert report["schema"] == "onnxopt.run/1"
    assert report["changed"] is True and report["verified"] is True
    assert report["output"] == str(out_path) and report["input"] == str(resnet)
    passes = {p["name"]: p for p in report["passes"]}
    assert list(passes) == ["fold-bn", "cleanup"]
    assert passes["fold-bn"]["status"] == "applied"
    assert passes["fold-bn"]["stats"]["bn_folded"] == n_bn
    assert report["before"]["ops"]["BatchNormalization"] == n_bn
    assert "BatchNormalization" not in report["after"]["ops"]
    assert report["fidelity"] is not None and report["fidelity"]["max_rel"] <= 1e-5

    assert re.search(r"^fold-bn\s+applied\b", out, re.M), out
    assert f"bn_folded={n_bn}" in out
    assert f"wrote {out_path}" in out


def test_run_json_stdout(capsys, tmp_path, resnet):
    code, out, err = invoke(capsys, "run", resnet, "--passes", "fold-bn,cleanup", "-o", tmp_path / "out.onnx",
                            "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["schema"] == "onnxopt.run/1"
    assert data["output"] == str(tmp_path / "out.onnx")
    assert data["passes"][0]["name"] == "fold-bn" and data["passes"][0]["status"] == "applied"
    assert (tmp_path / "out.onnx").is_file()


def test_config_yaml_and_json_equal_passes(capsys, tmp_path, resnet):
    spec = "fold-bn:affine=false,lone-bn=affine,cleanup:inputs=false"
    code, _, err = invoke(capsys, "run", resnet, "--passes", spec, "-o", tmp_path / "a.onnx", "--report",
                          tmp_path / "a.json")
    assert code == 0, err
    (tmp_path / "p.yaml").write_text(
        "passes:\n"
        "  - name: fold-bn\n"
        "    affine: false\n"
        "    lone-bn: affine\n"
        "  - cleanup:\n"
        "      inputs: false\n"
        "samples: 2\n")
    (tmp_path / "p.json").write_text(json.dumps(
        {"passes": [{"name": "fold-bn", "options": {"affine": "false", "lone_bn": "affine"}},
                    "cleanup:inputs=false"], "verify": True, "seed": 0}))
    expected = (tmp_path / "a.onnx").read_bytes()
    expected_specs = [p["spec"] for p in json.loads((tmp_path / "a.json").read_text())["passes"]]
    assert [spec.split(":")[0] for spec in expected_specs] == ["fold-bn", "cleanup"]
    assert "affine=false" in expected_specs[0].lower() and "lone-bn=affine" in expected_specs[0]
    for cfg in ("p.yaml", "p.json"):
        out_path, rep = tmp_path / f"{cfg}.onnx", tmp_path / f"{cfg}.r.json"
        code, out, err = invoke(capsys, "run", resnet, "--config", tmp_path / cfg, "-o", out_path, "--report", rep)
        assert code == 0, (cfg, err)
        assert out_path.read_bytes() == expected, cfg
        assert [p["spec"] for p in json.loads(rep.read_text())["passes"]] == expected_specs


def test_config_input_shapes_setting(capsys, tmp_path):
    model = save(make_model(dims=("N", 3, "H", "W")), tmp_path / "dyn.onnx")
    (tmp_path / "p.yaml").write_text("passes: fold-bn,cleanup\ninput-shapes:\n  x: [1, 3, 16, 16]\n")
    code, out, err = invoke(capsys, "run", model, "--config", tmp_path / "p.yaml", "-o", tmp_path / "out.onnx")
    assert code == 0, err
    assert "x 1x3x16x16" in out


def test_default_output_path(capsys, tmp_path, small):
    original = small.read_bytes()
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn")
    assert code == 0, err
    assert listing(tmp_path) == ["m.onnx", "m.opt.onnx"]
    assert small.read_bytes() == original
    assert count_ops(onnx.load(tmp_path / "m.opt.onnx")).get("BatchNormalization", 0) == 0
    assert "m.opt.onnx" in out


def test_no_verify(capsys, tmp_path, small):
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx",
                            "--no-verify", "--report", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verified"] is False
    assert report["fidelity"] is None
    assert report["passes"][0]["status"] == "applied"
    assert "verification off" in out
    assert count_ops(onnx.load(tmp_path / "out.onnx")).get("BatchNormalization", 0) == 0


def test_nothing_changes_writes_identical_bytes(capsys, tmp_path):
    model = save(make_model(bn=False), tmp_path / "nobn.onnx")
    code, out, err = invoke(capsys, "run", model, "--passes", "fold-bn", "-o", tmp_path / "out.onnx",
                            "--report", tmp_path / "r.json")
    assert code == 0, err
    assert (tmp_path / "out.onnx").read_bytes() == model.read_bytes()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["changed"] is False
    assert report["passes"][0]["status"] == "unchanged"
    assert "unchanged" in out


def test_strict_without_problems_succeeds(capsys, tmp_path, small):
    code, out, err = invoke(capsys, "run", small, "--passes", "fold-bn,cleanup", "-o", tmp_path / "out.onnx",
                            "--strict")
    assert code == 0, err
    assert (tmp_path / "out.onnx").is_file()


def test_output_file_mode_follows_umask(capsys, tmp_path, small):
    old = os.umask(0o022)
    try:
        code, _, err = invoke(capsys, "run", small, "--passes", "fold-bn", "-o", tmp_path / "out.onnx",
                              "--report", tmp_path / "r.json")
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "out.onnx").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


# -- inspect ---------------------------------------------------------------------------------
def test_inspect_text(capsys, tmp_path, small):
    code, out, err = invoke(capsys, "inspect", small)
    assert code == 0, err
    assert "opsets ai.onnx 17" in out
    assert "x: float32 [1, 3, 16, 16]" in out
    assert re.search(r"^\s+y: float\w* \[1, 10\]$", out, re.M), out
    assert f"params {PARAMS}," in out
    assert "MACs 55.38k" in out
    for op in ("Conv", "BatchNormalization", "Relu", "GlobalAveragePool", "Flatten", "Gemm"):
        assert re.search(rf"^\s+{op}\s+1$", out, re.M), (op, out)
    assert listing(tmp_path) == ["m.onnx"]


def test_inspect_json_macs(capsys, tmp_path, small):
    code, out, err = invoke(capsys, "inspect", small, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["schema"] == "onnxopt.inspect/1"
    assert info["opset"] == {"ai.onnx": 17}
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 16, 16]}]
    assert [o["name"] for o in info["outputs"]] == ["y"] and info["outputs"][0]["shape"] == [1, 10]
    assert info["stats"]["macs"] == CONV_MACS + GEMM_MACS
    assert info["stats"]["params"] == PARAMS
    assert info["stats"]["ops"]["BatchNormalization"] == 1
    assert info["file_bytes"] == small.stat().st_size
    assert info["note"] is None


def test_inspect_single_conv_macs(capsys, tmp_path):
    model = save(make_model(bn=False, head=False), tmp_path / "conv.onnx")
    code, out, err = invoke(capsys, "inspect", model, "--json")
    assert code == 0, err
    assert json.loads(out)["stats"]["macs"] == CONV_MACS == 55296


def test_inspect_dynamic_shapes(capsys, tmp_path):
    model = save(make_model(dims=("N", 3, "H", "W")), tmp_path / "dyn.onnx")
    code, out, err = invoke(capsys, "inspect", model)
    assert code == 0, err
    assert "x: float32 ['N', 3, 'H', 'W']" in out
    assert re.search(r"^note: .*--input-shape", out, re.M), out
    code, out, err = invoke(capsys, "inspect", model, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["note"] and "--input-shape" in info["note"]
    assert info["stats"]["macs"] is None
    code, out, err = invoke(capsys, "inspect", model, "--json", "--input-shape", "x:1,3,16,16")
    assert code == 0, err
    info = json.loads(out)
    assert info["note"] is None
    assert info["stats"]["macs"] == CONV_MACS + GEMM_MACS


# -- list-passes, demo, version --------------------------------------------------------------
def test_list_passes_text(capsys):
    code, out, err = invoke(capsys, "list-passes")
    assert code == 0, err
    for name in ("fold-bn", "cleanup", "simplify"):
        assert re.search(rf"^{name}\s+\(exact", out, re.M), (name, out)
    for opt in ("affine=True", "lone-bn=keep", "inputs=True", "fuse-bn=False"):
        assert opt in out


def test_list_passes_json(capsys):
    code, out, err = invoke(capsys, "list-passes", "--json")
    assert code == 0, err
    entries = {e["name"]: e for e in json.loads(out)}
    assert {"fold-bn", "cleanup", "simplify"} <= set(entries)
    opts = {o["name"]: o for o in entries["fold-bn"]["options"]}
    assert opts["affine"]["default"] is True and opts["affine"]["type"] == "bool"
    assert opts["lone-bn"]["default"] == "keep"
    assert {o["name"]: o["default"] for o in entries["cleanup"]["options"]} == {"inputs": True}
    assert {o["name"]: o["default"] for o in entries["simplify"]["options"]} == {"fuse-bn": False}
    assert all(e["summary"] for e in entries.values())


def _bn_row(out: str) -> tuple[int, int]:
    m = re.search(r"^\s+BatchNormalization\s+(\d+)\s+(\d+)", out, re.M)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_demo_bundled(capsys):
    code, out, err = invoke(capsys, "demo", "--budget", "0.2")
    assert code == 0, err
    # the bundled model is a train-time RepVGG: fold-bn and reparam both have work to do
    assert "pipeline: fold-bn,reparam," in out
    before, after = _bn_row(out)
    assert before > 0 and after == 0
    convs = re.search(r"^\s+Conv\s+(\d+)\s+(\d+)", out, re.M)
    assert convs and int(convs.group(2)) * 2 == int(convs.group(1)), out  # one Conv per block
    assert "before" in out and "after" in out
    # real accuracy on the held-out digits, the same before and after (the passes are exact)
    acc = re.search(r"accuracy (\d+\.\d+)% -> (\d+\.\d+)% on 360 labelled samples", out)
    assert acc, out
    assert acc.group(1) == acc.group(2) and float(acc.group(1)) >= 95.0


def test_demo_on_given_model(capsys, tmp_path, resnet):
    code, out, err = invoke(capsys, "demo", "--model", resnet, "-o", tmp_path / "out.onnx", "--budget", "0.2")
    assert code == 0, err
    assert "fold-bn" in out and "cleanup" in out
    before, after = _bn_row(out)
    assert before == count_ops(onnx.load(resnet))["BatchNormalization"] and after == 0
    assert count_ops(onnx.load(tmp_path / "out.onnx")).get("BatchNormalization", 0) == 0


def test_version(capsys):
    code, out, err = invoke(capsys, "--version")
    assert code == 0
    assert onnxopt.__version__ in out


def test_no_args_shows_help(capsys):
    code, out, err = invoke(capsys)
    assert code == 0
    assert "Usage" in out and "run" in out and "inspect" in out
    assert "Traceback" not in err


def test_subcommand_help(capsys):
    code, out, err = invoke(capsys, "run", "--help")
    assert code == 0
    assert "--input-shape" in out and "--overwrite" in out


# -- real processes --------------------------------------------------------------------------
def _command() -> list[str]:
    return [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "onnxopt"]


def _proc(args, cwd, command=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ONNXOPT_DEBUG"}
    return subprocess.run((command or _command()) + [str(a) for a in args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_process_missing_model(tmp_path):
    p = _proc(["run", "nope.onnx", "--passes", "fold-bn"], tmp_path)
    assert_one_line_error(p.returncode, p.stdout, p.stderr, 3, "nope.onnx", "no such file")
    assert listing(tmp_path) == []


def test_process_corrupt_model_python_m(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07\x12\x04junk" * 40)
    p = _proc(["run", "bad.onnx", "--passes", "fold-bn,cleanup", "--report", "r.json"], tmp_path,
              command=[sys.executable, "-m", "onnxopt"])
    assert_one_line_error(p.returncode, p.stdout, p.stderr, 3, "bad.onnx")
    assert listing(tmp_path) == ["bad.onnx"]


def test_process_unknown_pass_and_success(tmp_path):
    save(make_model(), tmp_path / "m.onnx")
    p = _proc(["run", "m.onnx", "--passes", "fold-bm"], tmp_path)
    assert_one_line_error(p.returncode, p.stdout, p.stderr, 2, "did you mean 'fold-bn'")
    p = _proc(["run", "m.onnx", "--passes", "fold-bn,cleanup", "-o", "out.onnx", "--json"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert json.loads(p.stdout)["schema"] == "onnxopt.run/1"
    assert listing(tmp_path) == ["m.onnx", "out.onnx"]


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), (" 1.5M ", 90.0)])
def test_search_max_time_reads_a_duration_as_people_write_it(text, seconds):
    from onnxopt.cli import Duration
    assert Duration().convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["", "1x", "abc", "0", "-5m", "nan", "inf", "1e999"])
def test_search_max_time_refuses_what_is_no_duration_in_one_line(capsys, tmp_path, text):
    assert_one_line_error(*invoke(capsys, "search", tmp_path / "m.onnx", "--calib", tmp_path / "c.npz",
                                  "--max-time", text), 2, "--max-time")
