"""`onnxopt bench` and `onnxopt run --bench` from the command line: outputs, exit codes and one-line
errors. In-process through onnxopt.cli.main (as tests/test_cli.py does), plus one real process to
prove that no traceback reaches stderr. Timing settings are tiny; no timing value is asserted."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.testing import assert_one_line_error as one_line_error
from onnxopt.testing import run_cli as invoke

FAST = ["--budget", "0.05", "--rounds", "5", "--warmup", "1", "--no-memory"]
W = np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32)


def linear(w: np.ndarray, *, batch="N", input_name: str = "input") -> onnx.ModelProto:
    """input [batch, 4] -> logits = input @ w [batch, 3]."""
    graph = helper.make_graph([helper.make_node("MatMul", [input_name, "W"], ["logits"])], "linear",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
                              [numpy_helper.from_array(np.asarray(w, np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """a.onnx (y = x W) and b.onnx (y = x 1.1 W): b's max rel output change is 0.1."""
    return save(linear(W), tmp_path / "a.onnx"), save(linear(W * np.float32(1.1)), tmp_path / "b.onnx")


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- success ---------------------------------------------------------------------------------
def test_two_models_print_the_table(capsys, pair):
    a, b = pair
    code, out, err = invoke(capsys, "bench", a, b, *FAST)
    assert code == 0, err
    assert err == ""
    assert out.startswith("reference: a.onnx; threads 1 (intra-op)")
    rows = [line.split() for line in out.splitlines()]
    latency = {r[0]: r for r in rows if len(r) == 10 and r[1] == "1"}
    assert set(latency) == {"a.onnx", "b.onnx"}
    assert latency["a.onnx"][6] == "1.000" and latency["a.onnx"][7] == "1.000"  # ratio, round ratio
    model_row = next(r for r in rows if r and r[0] == "b.onnx" and "%" in " ".join(r))
    assert "0.1" in model_row and "100.0%" in model_row  # max rel 0.1, top-1 agreement 100%
    assert "wrote" not in out


def test_json_to_stdout(capsys, pair):
    a, b = pair
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["schema"] == "onnxopt.bench/1" and d["reference"] == "a.onnx"
    assert [m["name"] for m in d["models"]] == ["a.onnx", "b.onnx"]
    assert d["settings"]["max_rounds"] == 5 and d["settings"]["warmup"] == 1
    assert d["settings"]["budget_seconds_per_batch"] == 0.05 and d["settings"]["batches"] == [1]
    assert d["models"][0]["latency"]["1"]["ratio_of_medians"] == 1.0
    assert d["models"][0]["latency"]["1"]["rounds"] == 5
    assert d["models"][1]["fidelity_vs_reference"]["max_rel"] == pytest.approx(0.1, rel=1e-5)
    assert d["models"][1]["path"] == str(b)
    assert all(m["peak_session_memory_bytes"] is None for m in d["models"])  # --no-memory
    assert d["fidelity_samples"] == 8 and d["labelled_samples"] == 0


def test_json_markdown_and_csv_files(capsys, tmp_path, pair):
    a, b = pair
    j, md, c = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.csv"
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--batch", "1,4", "--json", j, "--markdown", md, "--csv", c)
    assert code == 0, err
    assert out.startswith("reference: a.onnx")  # the table still goes to stdout
    for f in (j, md, c):
        assert f"wrote {f}" in out
    assert json.loads(j.read_text())["settings"]["batches"] == [1, 4]
    text = md.read_text()
    assert text.startswith("Reference: `a.onnx`")
    assert "| model | batch | median ms |" in text
    rows = list(csv.DictReader(io.StringIO(c.read_text())))
    assert [(r["model"], r["batch"]) for r in rows] == [("a.onnx", "1"), ("a.onnx", "4"), ("b.onnx", "1"),
                                                         ("b.onnx", "4")]
    assert float(rows[0]["ratio_of_medians"]) == 1.0 and float(rows[1]["ratio_of_medians"]) == 1.0
    assert listing(tmp_path) == ["a.onnx", "b.onnx", "r.csv", "r.json", "r.md"]  # no temp files


@pytest.mark.parametrize("flag", ["--markdown", "--csv"])
def test_other_formats_to_stdout(capsys, pair, flag):
    a, b = pair
    code, out, err = invoke(capsys, "bench", a, b, *FAST, flag)
    assert code == 0, err
    if flag == "--csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [r["model"] for r in rows] == ["a.onnx", "b.onnx"]
    else:
        assert out.startswith("Reference: `a.onnx`") and "reference: a.onnx;" not in out


def test_plot(capsys, tmp_path, pair):
    pytest.importorskip("matplotlib")
    a, b = pair
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--plot", tmp_path / "p.png")
    assert code == 0, err
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {tmp_path / 'p.png'}" in out


def test_control_adds_an_a_a_row(capsys, pair):
    a, b = pair
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--control", "--json")
    assert code == 0, err
    models = json.loads(out)["models"]
    assert [m["name"] for m in models] == ["a.onnx", "a.onnx (A/A)", "b.onnx"]
    control = models[1]["fidelity_vs_reference"]
    assert control["max_abs"] == 0.0 and control["max_rel"] == 0.0 and control["top1_agreement"] == 1.0
    assert models[1]["file_bytes"] == models[0]["file_bytes"]
    code, out, err = invoke(capsys, "bench", a, *FAST, "--control")  # one model is enough for a control
    assert code == 0, err
    assert any(line.startswith("a.onnx (A/A)") for line in out.splitlines())


def test_same_file_twice_gets_two_names(capsys, pair):
    a, _ = pair
    code, out, err = invoke(capsys, "bench", a, a, *FAST, "--json")
    assert code == 0, err
    names = [m["name"] for m in json.loads(out)["models"]]
    assert names[0] == str(a) and len(set(names)) == 2  # a clashing name is shown as its path


def test_data_with_labels_gives_accuracy(capsys, tmp_path, pair):
    a, b = pair
    x = np.random.default_rng(3).standard_normal((10, 4)).astype(np.float32)
    labels = np.argmax(x @ W, axis=1)
    labels[:3] = (labels[:3] + 1) % 3  # the reference gets 7 of 10
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--data", tmp_path / "d.npz", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert [m["accuracy"] for m in d["models"]] == [pytest.approx(0.7), pytest.approx(0.7)]
    assert d["labelled_samples"] == 10 and d["fidelity_samples"] == 10
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--data", tmp_path / "d.npz")
    assert code == 0, err
    assert "accuracy on 10 labelled samples" in out and "70.00%" in out


# -- errors ----------------------------------------------------------------------------------
def test_two_formats_to_stdout_is_a_usage_error(capsys, tmp_path, pair):
    a, b = pair
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--json", "--markdown")
    one_line_error(code, out, err, 2, "--json", "--markdown")
    assert out == "" and listing(tmp_path) == before


def test_two_outputs_naming_the_same_file(capsys, tmp_path, pair):
    a, b = pair
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--json", tmp_path / "r.txt", "--csv", tmp_path / "r.txt")
    one_line_error(code, out, err, 2, "same file")
    assert not (tmp_path / "r.txt").exists()


def test_missing_model(capsys, tmp_path, pair):
    a, _ = pair
    code, out, err = invoke(capsys, "bench", a, tmp_path / "nope.onnx", *FAST)
    one_line_error(code, out, err, 3, "nope.onnx", "no such file")
    assert out == ""


def test_corrupt_model(capsys, tmp_path, pair):
    a, _ = pair
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    code, out, err = invoke(capsys, "bench", a, tmp_path / "noise.onnx", *FAST, "--json", tmp_path / "r.json")
    line = one_line_error(code, out, err, 3, "noise.onnx")
    assert "not a valid ONNX" in line or "not an ONNX model" in line
    assert not (tmp_path / "r.json").exists()


def test_corrupt_model_in_a_real_process(tmp_path, pair):
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(99).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    env = {k: v for k, v in os.environ.items() if k != "ONNXOPT_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "onnxopt", "bench", "a.onnx", "noise.onnx", *FAST], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    one_line_error(p.returncode, p.stdout, p.stderr, 3, "noise.onnx")
    assert p.stdout == ""


def test_mismatched_inputs(capsys, tmp_path, pair):
    a, _ = pair
    other = save(linear(W, input_name="pixels"), tmp_path / "other.onnx")
    code, out, err = invoke(capsys, "bench", a, other, *FAST)
    one_line_error(code, out, err, 3, "other.onnx", "a.onnx", "pixels")


def test_batch_with_a_fixed_batch_dim(capsys, tmp_path):
    a = save(linear(W, batch=1), tmp_path / "a.onnx")
    b = save(linear(W, batch=1), tmp_path / "b.onnx")
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--batch", "1,4")
    one_line_error(code, out, err, 2, "--batch 4", "fixed batch size of 1")
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--batch", "0")
    one_line_error(code, out, err, 2, "--batch '0'")


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--csv", "--plot"])
def test_output_that_is_an_input_model_is_refused(capsys, pair, flag):
    a, b = pair
    before = b.read_bytes()
    code, out, err = invoke(capsys, "bench", a, b, *FAST, flag, b)
    one_line_error(code, out, err, 2, "b.onnx", "overwrite the input model")
    assert b.read_bytes() == before


def test_json_before_the_models_does_not_overwrite_a_model(capsys, pair):
    a, b = pair
    before = a.read_bytes()
    code, out, err = invoke(capsys, "bench", "--json", a, b, *FAST)
    one_line_error(code, out, err, 2, "a.onnx", "--json writes a .json file")
    assert a.read_bytes() == before


# -- onnxopt run --bench ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet_bytes() -> bytes:
    from onnxopt.models import build

    return build("resnet18-tiny").SerializeToString()  # input "input" [1, 3, 32, 32], 10 classes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak session memory is measured on Linux")
def test_run_bench_json_with_memory(capsys, tmp_path, resnet_bytes):
    model = tmp_path / "resnet.onnx"
    model.write_bytes(resnet_bytes)
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x, labels=np.arange(6) % 10)
    code, out, err = invoke(capsys, "run", model, "--passes", "fold-bn", "--bench", "--bench-data",
                            tmp_path / "d.npz", "-o", tmp_path / "out.onnx", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["schema"] == "onnxopt.run/1"
    bench = d["bench"]
    assert bench["schema"] == "onnxopt.bench/1"
    assert [m["name"] for m in bench["models"]] == ["resnet.onnx", "out.onnx"]
    for m in bench["models"]:
        assert isinstance(m["peak_session_memory_bytes"], int) and m["peak_session_memory_bytes"] > 0
        assert m["latency"]["1"]["rounds"] >= 5
        assert m["accuracy"] is not None
    before, after = bench["models"]
    assert after["fidelity_vs_reference"]["max_rel"] < 1e-4     # fold-bn is exact
    assert after["accuracy"] == before["accuracy"]
    assert after["nodes"] < before["nodes"]                      # the BNs are gone
    assert bench["labelled_samples"] == 6 and bench["fidelity_samples"] == 6
    assert (tmp_path / "out.onnx").exists()


def test_run_bench_data_without_bench(capsys, tmp_path, resnet_bytes):
    model = tmp_path / "resnet.onnx"
    model.write_bytes(resnet_bytes)
    np.savez(tmp_path / "d.npz", input=np.zeros((2, 3, 32, 32), np.float32))
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", model, "--passes", "fold-bn", "--bench-data", tmp_path / "d.npz",
                            "-o", tmp_path / "out.onnx")
    one_line_error(code, out, err, 2, "--bench-data", "--bench")
    assert listing(tmp_path) == before


def test_run_bench_with_bad_data_writes_nothing(capsys, tmp_path, resnet_bytes):
    model = tmp_path / "resnet.onnx"
    model.write_bytes(resnet_bytes)
    np.savez(tmp_path / "d.npz", input=np.zeros((2, 3, 16, 16), np.float32))  # wrong image size
    before = listing(tmp_path)
    code, out, err = invoke(capsys, "run", model, "--passes", "fold-bn", "--bench", "--bench-data",
                            tmp_path / "d.npz", "-o", tmp_path / "out.onnx")
    one_line_error(code, out, err, 3, "d.npz", "shape")
    assert listing(tmp_path) == before


# -- review findings: outputs that would destroy inputs, all-or-nothing, strict JSON -----------
def test_an_output_with_the_wrong_suffix_or_naming_the_data_is_refused(capsys, tmp_path, pair):
    a, b = pair
    pb = tmp_path / "model.pb"
    pb.write_bytes(b"not ours to overwrite")
    code, out, err = invoke(capsys, "bench", "--json", pb, a, b, *FAST)
    one_line_error(code, out, err, 2, "model.pb", "--json writes a .json file")
    assert pb.read_bytes() == b"not ours to overwrite"
    data = tmp_path / "d.csv.npz"
    np.savez(data, input=np.ones((2, 4), np.float32))
    before = data.read_bytes()
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--data", data, "--csv", data)
    one_line_error(code, out, err, 2, "overwrite")
    assert data.read_bytes() == before


def test_plot_without_matplotlib_fails_before_timing_and_writes_nothing(capsys, tmp_path, pair, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    import onnxopt.measure.sidebyside as sidebyside
    monkeypatch.setattr(sidebyside, "run_bench", lambda *a, **k: pytest.fail("timed before checking --plot"))
    a, b = pair
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--json", tmp_path / "r.json", "--plot", tmp_path / "p.png")
    one_line_error(code, out, err, 2, "--plot needs matplotlib")
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "p.png").exists()


def test_json_stays_strict_when_a_fidelity_is_infinite(capsys, tmp_path):
    a = save(linear(W), tmp_path / "a.onnx")
    w6 = np.concatenate([W, W], axis=1)  # 6 logits instead of 3: a shape change
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "W"], ["logits"])], "wider",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 6])],
                              [numpy_helper.from_array(w6, "W")])
    b = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "b.onnx")
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--json")
    assert code == 0, err
    assert "Infinity" not in out and "NaN" not in out
    d = json.loads(out)
    assert d["models"][1]["fidelity_vs_reference"]["max_abs"] is None


def test_run_bench_failure_is_a_warning_and_the_model_is_written(capsys, tmp_path, monkeypatch):
    import onnxopt.measure.sidebyside as sidebyside
    from onnxopt.errors import BadModel

    def broken(*args, **kwargs):
        raise BadModel("optimized: onnxruntime cannot run it: simulated")

    monkeypatch.setattr(sidebyside, "run_bench", broken)  # the CLI imports it when a command runs
    model = save(linear(W), tmp_path / "m.onnx")
    code, out, err = invoke(capsys, "run", model, "--passes", "cleanup", "--bench", "-o", tmp_path / "out.onnx")
    assert code == 0, err
    assert (tmp_path / "out.onnx").is_file()
    assert "warning: --bench: optimized: onnxruntime cannot run it: simulated" in err


def test_plot_to_stdout_is_refused_before_timing(capsys, pair):
    a, b = pair
    code, out, err = invoke(capsys, "bench", a, b, *FAST, "--plot", "-")
    one_line_error(code, out, err, 2, "--plot writes a .png file")


def test_demo_refuses_bad_data_before_optimizing(capsys, tmp_path):
    np.savez(tmp_path / "ids.npz", input=np.zeros((2, 1, 32, 32), np.int64))
    code, out, err = invoke(capsys, "demo", "--data", tmp_path / "ids.npz", "--budget", "0.1")
    one_line_error(code, out, err, 3, "ids.npz", "int64")
    assert "pipeline" not in out
