"""onnxopt.measure.sidebyside and onnxopt.measure.formats: fidelity and accuracy as the bench harness computes
them, interface checks, batch sizes, and the table / Markdown / CSV / JSON / plot outputs.

Timing numbers are never asserted (the machine is shared); everything else is: the models are
linear (y = x W) so every fidelity number can be computed by hand with numpy.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import BadData, OnnxoptError, UsageError
from onnxopt.measure.formats import CSV_HEADER, format_csv, format_markdown, format_table, pareto_front, plot, quality
from onnxopt.measure.sidebyside import (
    SCHEMA,
    Settings,
    Subject,
    check_same_interface,
    run_bench,
    unique_names,
)

FAST = Settings(budget_seconds=0.05, rounds=5, warmup=1, memory=False)
W = np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32)
PERM = [1, 2, 0]  # the "permuted" candidate: W's columns rotated, so its argmax differs


# -- models ----------------------------------------------------------------------------------
def linear(w: np.ndarray, *, batch="N", softmax: bool = False) -> onnx.ModelProto:
    """input [batch, 4] -> logits = input @ w [batch, 3] (and probs = Softmax(logits) if asked)."""
    nodes = [helper.make_node("MatMul", ["input", "W"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, w.shape[1]])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        outputs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, w.shape[1]]))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              [batch, w.shape[0]])],
                              outputs, [numpy_helper.from_array(np.asarray(w, np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def passthrough(inputs: list[tuple[str, int, list]], n_outputs: int = 1) -> onnx.ModelProto:
    """Identity models with the given inputs (name, elem type, shape): only their interface matters."""
    name, elem, shape = inputs[0]
    nodes = [helper.make_node("Identity", [name], [f"out{i}"]) for i in range(n_outputs)]
    graph = helper.make_graph(nodes, "io", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(f"out{i}", elem, shape) for i in range(n_outputs)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def subject(model: onnx.ModelProto, name: str) -> Subject:
    return Subject(name, model, model.SerializeToString())


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- pareto_front ----------------------------------------------------------------------------
def test_pareto_front_excludes_dominated_points():
    points = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.93), (1.5, 0.85), (0.5, 0.50)]
    # (3, .93) is beaten by (2, .95); (1.5, .85) by (1, .90); (0.5, .5) is the cheapest
    assert pareto_front(points) == [0, 1, 4]
    assert pareto_front([]) == []
    assert pareto_front([(4.0, 0.1)]) == [0]


def test_pareto_front_ties():
    assert pareto_front([(1.0, 0.9), (1.0, 0.9)]) == [0, 1]        # identical: neither beats the other
    assert pareto_front([(1.0, 0.9), (1.0, 0.8)]) == [0]           # same cost, lower quality
    assert pareto_front([(2.0, 0.9), (1.0, 0.9)]) == [1]           # same quality, higher cost


def test_pareto_front_never_holds_nan():
    nan = float("nan")
    assert pareto_front([(nan, 1.0), (1.0, nan), (2.0, 0.5)]) == [2]
    # a NaN point, however good its other coordinate, beats nobody
    assert pareto_front([(nan, 2.0), (1.0, 0.5)]) == [1]
    assert pareto_front([(0.1, nan), (1.0, 0.5)]) == [1]
    assert pareto_front([(nan, nan)]) == []


# -- unique_names ----------------------------------------------------------------------------
def test_unique_names_uses_paths_only_where_file_names_clash():
    paths = [Path("a/model.onnx"), Path("b/model.onnx"), Path("c/other.onnx")]
    assert unique_names(paths) == ["a/model.onnx", "b/model.onnx", "other.onnx"]
    assert unique_names([Path("x/m.onnx"), Path("y/n.onnx")]) == ["m.onnx", "n.onnx"]


def test_unique_names_for_the_same_path_twice():
    # `onnxopt bench m.onnx m.onnx` (an A/A run by hand): two rows that must stay apart
    names = unique_names([Path("m.onnx"), Path("m.onnx"), Path("m.onnx")])
    assert names[0] == "m.onnx" and len(set(names)) == 3
    assert all(n.startswith("m.onnx") for n in names)
    names = unique_names([Path("a/m.onnx"), Path("b/m.onnx"), Path("a/m.onnx")])
    assert names[:2] == ["a/m.onnx", "b/m.onnx"] and len(set(names)) == 3


# -- check_same_interface --------------------------------------------------------------------
F, D = TensorProto.FLOAT, TensorProto.DOUBLE


@pytest.mark.parametrize("other,words", [
    ([("z", F, ["N", 4])], "z: float32"),                      # input name
    ([("x", D, ["N", 4])], "float64"),                         # dtype
    ([("x", F, ["N", 4, 1])], "[?,4,1]"),                      # rank
    ([("x", F, ["N", 5])], "[?,5]"),                           # a fixed dim
    ([("x", F, ["N", 4]), ("y", F, ["N", 4])], "y: float32"),  # an extra input
])
def test_check_same_interface_refuses_different_inputs(other, words):
    ref = subject(passthrough([("x", F, ["N", 4])]), "ref.onnx")
    cand = subject(passthrough(other), "cand.onnx")
    with pytest.raises(BadData) as err:
        check_same_interface([ref, cand])
    msg = str(err.value)
    assert "\n" not in msg
    assert "cand.onnx" in msg and "ref.onnx" in msg and words in msg
    with pytest.raises(BadData):  # the check runs before anything is built or timed
        run_bench([ref, cand], FAST)


def test_check_same_interface_refuses_a_different_output_count():
    ref = subject(passthrough([("x", F, ["N", 4])], n_outputs=1), "one.onnx")
    cand = subject(passthrough([("x", F, ["N", 4])], n_outputs=2), "two.onnx")
    with pytest.raises(BadData, match=r"two\.onnx: 2 output\(s\), one\.onnx has 1") as err:
        check_same_interface([ref, cand])
    assert "\n" not in str(err.value)


def test_check_same_interface_checks_every_model_against_the_first():
    ok = [("x", F, ["N", 4])]
    subjects = [subject(passthrough(ok), "a"), subject(passthrough(ok), "b"), subject(passthrough([("x", F, [1, 5])]), "c")]
    with pytest.raises(BadData, match="^c: "):
        check_same_interface(subjects)


@pytest.mark.parametrize("a,b", [
    (["N", 4], [1, 4]),        # dynamic vs fixed batch
    ([8, 4], ["batch", 4]),    # fixed vs dynamic
    (["N", 4], ["batch", 4]),  # two symbolic names
    ([None, 4], [2, 4]),       # unknown dim
])
def test_check_same_interface_accepts_dynamic_against_fixed_dims(a, b):
    check_same_interface([subject(passthrough([("x", F, a)]), "a"), subject(passthrough([("x", F, b)]), "b")])


# -- run_bench end to end --------------------------------------------------------------------
def labelled_data(path: Path, n: int = 8, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """n samples; labels = the reference's argmax except the last quarter (wrong on purpose), so the
    reference scores exactly 0.75."""
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    labels = np.argmax(x @ W, axis=1)
    wrong = n - n // 4
    labels[wrong:] = (labels[wrong:] + 1) % 3
    np.savez(path, input=x, labels=labels)
    return x, labels


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "labelled.npz"
    labelled_data(path)
    return path


@pytest.fixture(scope="module")
def report(data_path):
    """Three two-output models on labelled data, timed at batch 1 and 4; built once."""
    subjects = [subject(linear(W, softmax=True), "ref.onnx"),
                subject(linear(W * np.float32(1.1), softmax=True), "scaled|1.1.onnx"),  # a pipe for Markdown
                subject(linear(W[:, PERM], softmax=True), "perm.onnx")]
    return run_bench(subjects, dataclasses.replace(FAST, batches=(1, 4)), data=data_path)


def test_fidelity_of_a_scaled_weight_is_what_verify_defines(report, data_path):
    with np.load(data_path) as d:
        x = d["input"]
    ref_logits = x @ W
    got_logits = x @ (W * np.float32(1.1))
    fid = report.entries[1].fidelity
    logits, probs = fid.outputs["logits"], fid.outputs["probs"]
    # max_rel = max |delta| / max |reference| = 0.1 max|y| / max|y| for y' = 1.1 y
    assert logits.max_rel == pytest.approx(0.1, rel=1e-5)
    assert logits.max_abs == pytest.approx(float(np.abs(got_logits - ref_logits).max()), rel=1e-5)
    assert logits.max_abs == pytest.approx(0.1 * float(np.abs(ref_logits).max()), rel=1e-5)
    assert logits.cosine == pytest.approx(1.0, abs=1e-9)  # parallel
    assert logits.top1_agreement == 1.0                    # a positive scale keeps the argmax
    p_ref, p_got = softmax(ref_logits.astype(np.float64)), softmax(got_logits.astype(np.float64))
    assert probs.max_abs == pytest.approx(float(np.abs(p_got - p_ref).max()), rel=1e-4)
    assert probs.max_rel == pytest.approx(float(np.abs(p_got - p_ref).max() / np.abs(p_ref).max()), rel=1e-4)
    assert probs.cosine == pytest.approx(cosine(p_ref, p_got), abs=1e-7)
    # the summary is the worst output
    assert fid.max_rel == max(logits.max_rel, probs.max_rel)
    assert fid.max_abs == max(logits.max_abs, probs.max_abs)
    assert fid.cosine == min(logits.cosine, probs.cosine)
    # one dynamic-batch chunk holding all 8 samples, compared as 8 runs (fidelity.per_sample), so the
    # centred cosine has a mean to take out: the reference's over the samples, from both sides
    assert fid.samples == 8
    for out, ref, got in (("logits", ref_logits, got_logits), ("probs", p_ref, p_got)):
        mean = ref.astype(np.float64).mean(axis=0)
        assert fid.outputs[out].centred_cosine == pytest.approx(cosine(ref - mean, got - mean), abs=1e-6)
    # a scale moves the common part too, which the plain cosine, parallel, cannot see
    assert logits.centred_cosine < 1 - 1e-4 and fid.centred_cosine == min(logits.centred_cosine, probs.centred_cosine)


def test_fidelity_and_accuracy_of_a_permuted_model(report, data_path):
    with np.load(data_path) as d:
        x, labels = d["input"], d["labels"]
    ref_logits, got_logits = x @ W, x @ W[:, PERM]
    agreement = float(np.mean(np.argmax(ref_logits, 1) == np.argmax(got_logits, 1)))
    assert agreement < 1.0  # precondition: the permutation does change some answers
    fid = report.entries[2].fidelity
    assert fid.outputs["logits"].top1_agreement == pytest.approx(agreement)
    assert fid.top1_agreement == pytest.approx(agreement)
    assert fid.outputs["logits"].cosine == pytest.approx(cosine(ref_logits, got_logits), abs=1e-6)
    accuracy = float(np.mean(np.argmax(got_logits, 1) == labels))
    assert [e.accuracy for e in report.entries] == [0.75, 0.75, pytest.approx(accuracy)]
    assert report.reference.fidelity is None and report.reference.accuracy == 0.75


def test_report_counts_samples_and_batches(report):
    assert report.fidelity_samples == 8 and report.labelled_samples == 8
    assert report.batches == [1, 4]
    assert report.inputs == {"input": [1, 4]}  # at the first batch size
    for e in report.entries:
        assert sorted(e.timings) == [1, 4]
        assert all(len(t.seconds) == 5 for t in e.timings.values())  # rounds=5 caps, min 5 rounds
        assert e.params == 12 and e.nodes == 2
        assert e.macs == 1 * 4 * 3  # at the first batch size
    assert "labelled.npz (8 samples)" in report.data


def test_same_model_twice_gives_zero_difference():
    model = linear(W)
    r = run_bench([subject(model, "a.onnx"), subject(model, "a.onnx (A/A)")], FAST)
    fid = r.entries[1].fidelity
    assert fid.max_abs == 0.0 and fid.max_rel == 0.0
    assert fid.cosine == pytest.approx(1.0, abs=1e-12)
    assert fid.top1_agreement == 1.0
    assert fid.samples == FAST.samples
    assert r.fidelity_samples == FAST.samples * 1 and r.labelled_samples == 0
    assert r.entries[0].accuracy is None and r.entries[1].accuracy is None
    assert "random normal inputs, seed 0" in r.data
    d = r.entries[1].as_dict(r.reference)["latency"]["1"]
    assert d["rounds"] == 5
    assert r.reference.as_dict(r.reference)["latency"]["1"]["ratio_of_medians"] == 1.0


class _RecordingSession:
    """An onnxruntime session that records the batch size of every timed/fidelity run."""

    def __init__(self, session, log):
        self._session, self._log = session, log

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run(self, names, feed):
        self._log.append(next(iter(feed.values())).shape[0])
        return self._session.run(names, feed)


def test_sessions_are_rebuilt_per_set_in_shuffled_orders_and_rounds_pooled(monkeypatch):
    import onnxopt.measure.sidebyside as sidebyside

    built: list[bytes] = []
    real = sidebyside.make_session
    monkeypatch.setattr(sidebyside, "make_session", lambda data, **k: built.append(data) or real(data, **k))
    subjects = [subject(linear(W * np.float32(1 + k / 10)), f"m{k}") for k in range(5)]
    settings = dataclasses.replace(FAST, rounds=12, budget_seconds=None, session_sets=4)
    r = run_bench(subjects, settings)
    # every model: once for a check run and the fidelity outputs, then once per set
    assert len(built) == 5 + 5 * 4
    built = built[5:]
    orders = [[next(i for i, s in enumerate(subjects) if s.data == d) for d in built[k:k + 5]] for k in range(0, 20, 5)]
    assert all(sorted(o) == list(range(5)) for o in orders) and len({tuple(o) for o in orders}) > 1
    assert all(len(e.timings[1].seconds) == 12 and len(e.timings[1].round_ratios) == 12 for e in r.entries)
    # fewer rounds than sets: one round per set, never more rounds than asked
    r = run_bench(subjects[:2], dataclasses.replace(FAST, rounds=2, budget_seconds=None, session_sets=4))
    assert len(r.entries[0].timings[1].seconds) == 2


def test_each_batch_size_is_timed_with_feeds_of_that_size(monkeypatch):
    import onnxopt.measure.sidebyside as sidebyside

    log: list[int] = []
    real = sidebyside.make_session
    monkeypatch.setattr(sidebyside, "make_session", lambda *a, **k: _RecordingSession(real(*a, **k), log))
    settings = dataclasses.replace(FAST, batches=(4, 1, 4), samples=3)  # duplicates dropped, order kept
    r = run_bench([subject(linear(W), "a"), subject(linear(W * np.float32(1.1)), "b")], settings)
    assert r.batches == [4, 1]
    assert all(sorted(e.timings) == [1, 4] for e in r.entries)
    for e in r.entries:
        for batch, t in e.timings.items():
            row = e.as_dict(r.reference)["latency"][str(batch)]
            assert row["throughput_per_s"] == pytest.approx(batch / t.median)
    # per model: a check run at each batch size and 3 fidelity samples at batch 4 (one session per
    # model), then (3 session sets x 1 warm-up + 5 rounds) at batch 4, then at batch 1
    assert log == [4, 1, 4, 4, 4] * 2 + [4] * 16 + [1] * 16
    assert r.inputs == {"input": [4, 4]} and r.fidelity_samples == 3 * 4
    assert r.entries[0].macs == 4 * 4 * 3


def test_batch_other_than_a_fixed_batch_dim_is_a_usage_error():
    subjects = [subject(linear(W, batch=1), "fixed.onnx"), subject(linear(W, batch=1), "b.onnx")]
    with pytest.raises(UsageError, match=r"--batch 4: fixed\.onnx has a fixed batch size of 1") as err:
        run_bench(subjects, dataclasses.replace(FAST, batches=(1, 4)))
    assert "\n" not in str(err.value)
    # the model's own batch size is fine
    assert run_bench(subjects, dataclasses.replace(FAST, batches=(1,))).batches == [1]


def test_batch_is_refused_when_any_model_fixes_it():
    subjects = [subject(linear(W), "dynamic.onnx"), subject(linear(W, batch=1), "fixed.onnx")]
    with pytest.raises(UsageError, match=r"--batch 4: fixed\.onnx has a fixed batch size of 1"):
        run_bench(subjects, dataclasses.replace(FAST, batches=(4,)))


def test_data_with_fewer_samples_than_the_batch(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, input=np.ones((2, 4), np.float32))
    with pytest.raises(BadData, match=r"2 samples, fewer than one batch of 4") as err:
        run_bench([subject(linear(W), "a"), subject(linear(W), "b")], dataclasses.replace(FAST, batches=(1, 4)),
                  data=path)
    assert "\n" not in str(err.value)


def test_data_with_fixed_batch_model(tmp_path):
    # batch 1 fixed: fidelity runs sample by sample, accuracy still covers every sample
    x, labels = labelled_data(tmp_path / "d.npz", n=8)
    r = run_bench([subject(linear(W, batch=1), "a"), subject(linear(W[:, PERM], batch=1), "b")], FAST,
                  data=tmp_path / "d.npz")
    assert r.entries[1].fidelity.samples == 8 and r.fidelity_samples == 8
    assert r.entries[0].accuracy == 0.75
    assert r.entries[1].accuracy == pytest.approx(float(np.mean(np.argmax(x @ W[:, PERM], 1) == labels)))


def test_accuracy_with_samples_left_over_after_the_last_full_batch(tmp_path):
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    labels = np.argmax(x @ W, axis=1)
    labels[3] = (labels[3] + 1) % 3  # 3 of the first 4 right
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    subjects = [subject(linear(W, batch=2), "a"), subject(linear(W, batch=2), "b")]
    try:
        r = run_bench(subjects, FAST, data=tmp_path / "d.npz")
    except BadData:
        return  # refusing a sample count that does not fill whole batches is acceptable too
    assert r.entries[0].accuracy == pytest.approx(0.75)  # over the 4 samples that ran ...
    assert r.labelled_samples == 4                        # ... and reported as such


def test_dynamic_reference_with_a_fixed_batch_candidate():
    subjects = [subject(linear(W), "dynamic.onnx"), subject(linear(W, batch=4), "fixed4.onnx")]
    try:
        r = run_bench(subjects, FAST)
    except OnnxoptError as err:  # a one-line user error is acceptable
        assert "\n" not in str(err) and "fixed4.onnx" in str(err)
        return
    assert r.batches == [4]


# -- report formats --------------------------------------------------------------------------
NAMES = ["ref.onnx", "scaled|1.1.onnx", "perm.onnx"]


def test_format_table(report):
    text = format_table(report)
    for name in NAMES:
        assert name in text
    assert text.startswith("reference: ref.onnx; ")
    assert "threads 1 (intra-op)" in text and "ORT optimization 'all'" in text
    assert report.machine["cpu"] in text and f"{report.machine['cores']} cores" in text
    assert "3 session set(s) x 1 warm-up, 5 interleaved rounds" in text
    assert "accuracy on 8 labelled samples" in text and "fidelity on 8 samples" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("model") and "ratio" in line)
    assert header.split() == ["model", "batch", "median", "ms", "p90", "ms", "p99", "ms", "min", "ms", "ratio",
                              "round", "ratio", "interval", "per", "s"]
    rows = {(cells[0], cells[1]): cells for cells in (line.split() for line in lines)
            if len(cells) == 10 and cells[0] in NAMES and cells[1].isdigit()}
    assert set(rows) == {(n, b) for n in NAMES for b in ("1", "4")}
    for b in ("1", "4"):
        assert rows[("ref.onnx", b)][6] == "1.000" and rows[("ref.onnx", b)][7] == "1.000"
        for n in NAMES:
            ref_ms = report.reference.timings[int(b)].median
            ratio = report.entries[NAMES.index(n)].timings[int(b)].median / ref_ms
            assert rows[(n, b)][6] == f"{ratio:.3f}"
    # the model table: the reference is "ref", the scaled model's max rel is 0.1
    model_rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in NAMES
                  and "%" in line}
    assert " ref " in model_rows["ref.onnx"] and "75.00%" in model_rows["ref.onnx"]
    assert " 0.1 " in model_rows["scaled|1.1.onnx"]
    # two outputs: a per-output note for each candidate
    assert "scaled|1.1.onnx per output: logits: max rel 0.1" in text and "probs: max rel" in text


def _pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_format_markdown_is_a_valid_pipe_table(report):
    text = format_markdown(report)
    assert text.startswith("Reference: `ref.onnx`;") and text.endswith("\n")
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    assert len(tables) == 2
    latency, models = tables
    assert len(latency) == 2 + 3 * 2 and len(models) == 2 + 3  # header, separator, rows
    for t, columns in ((latency, 10), (models, 11)):
        assert _pipes(t[0]) == columns + 1
        assert all(_pipes(line) == _pipes(t[0]) for line in t), t
        assert re.fullmatch(r"\|( -{3,}:? \|)+", t[1]), t[1]
        assert all(line.endswith(" |") for line in t)
    assert any(r"scaled\|1.1.onnx" in line for line in latency)  # the pipe in the name is escaped
    assert "- scaled|1.1.onnx per output:" in text


def test_format_csv(report):
    rows = list(csv.DictReader(io.StringIO(format_csv(report))))
    assert len(rows) == 3 * 2  # one per model and batch size
    assert list(rows[0]) == CSV_HEADER
    assert [(r["model"], r["batch"]) for r in rows] == [(n, b) for n in NAMES for b in ("1", "4")]
    numeric = ["batch", "rounds", "median_ms", "p90_ms", "p99_ms", "min_ms", "ratio_of_medians",
               "median_round_ratio", "throughput_per_s", "file_bytes", "params", "macs", "max_abs", "max_rel",
               "cosine", "top1_agreement", "accuracy", "threads"]
    for r in rows:
        values = {k: float(r[k]) for k in numeric}  # every one parses
        assert all(math.isfinite(v) for v in values.values())
        assert r["peak_session_memory_bytes"] == ""  # memory=False: blank, not 0
        e = report.entries[NAMES.index(r["model"])]
        t = e.timings[int(r["batch"])]
        assert float(r["median_ms"]) == pytest.approx(t.median * 1e3)
        assert float(r["throughput_per_s"]) == pytest.approx(int(r["batch"]) / t.median)
        assert int(r["rounds"]) == 5 and int(r["threads"]) == 1
        assert float(r["accuracy"]) == pytest.approx(e.accuracy)
    for r in rows[:2]:
        assert float(r["ratio_of_medians"]) == 1.0 and float(r["median_round_ratio"]) == 1.0
        assert float(r["max_abs"]) == 0.0 and float(r["cosine"]) == 1.0 and float(r["centred_cosine"]) == 1.0
    for r in rows[2:]:
        fid = report.entries[NAMES.index(r["model"])].fidelity
        assert float(r["centred_cosine"]) == pytest.approx(fid.centred_cosine)
    assert float(rows[2]["max_rel"]) == pytest.approx(0.1, rel=1e-5)


def test_as_dict_is_plain_json(report):
    d = json.loads(json.dumps(report.as_dict(), allow_nan=False))  # no numpy types, no NaN
    assert d["schema"] == SCHEMA == "onnxopt.bench/1"
    assert d["reference"] == "ref.onnx"
    assert d["settings"] == {"threads": 1, "optimization": "all", "warmup": 1, "max_rounds": 5,
                             "budget_seconds_per_batch": 0.05, "session_sets": 3, "batches": [1, 4]}
    assert d["inputs"] == {"input": [1, 4]}
    assert d["fidelity_samples"] == 8 and d["labelled_samples"] == 8
    assert set(d["machine"]) >= {"cpu", "cores", "python", "onnx", "onnxruntime", "numpy"}
    assert [m["name"] for m in d["models"]] == NAMES
    ref, scaled, perm = d["models"]
    assert ref["fidelity_vs_reference"] is None
    assert set(ref["latency"]) == {"1", "4"} and ref["latency"]["1"]["ratio_of_medians"] == 1.0
    for m in (scaled, perm):
        fid = m["fidelity_vs_reference"]
        assert set(fid["outputs"]) == {"logits", "probs"}
        assert set(fid["outputs"]["logits"]) == {"max_abs", "max_rel", "cosine", "top1_agreement", "centred_cosine"}
    assert scaled["fidelity_vs_reference"]["outputs"]["logits"]["max_rel"] == pytest.approx(0.1, rel=1e-5)
    # one batched run a model, compared sample by sample: a centred cosine, the worst output's
    assert scaled["fidelity_vs_reference"]["centred_cosine"] == min(
        o["centred_cosine"] for o in scaled["fidelity_vs_reference"]["outputs"].values())
    assert scaled["fidelity_vs_reference"]["max_rel"] == max(
        o["max_rel"] for o in scaled["fidelity_vs_reference"]["outputs"].values())
    assert [m["accuracy"] for m in d["models"]][:2] == [0.75, 0.75]
    assert all(m["params"] == 12 and m["peak_session_memory_bytes"] is None for m in d["models"])


def test_quality_prefers_accuracy_then_agreement_then_cosine(report):
    label, ys = quality(report)
    assert label == "top-1 accuracy" and ys == [e.accuracy for e in report.entries]

    entries = [dataclasses.replace(e, accuracy=None) if i == 2 else e for i, e in enumerate(report.entries)]
    label, ys = quality(dataclasses.replace(report, entries=entries))
    assert label == "top-1 agreement with reference"
    assert ys == [1.0] + [e.fidelity.top1_agreement for e in report.entries[1:]]
    assert ys[2] < 1.0

    entries[1] = dataclasses.replace(entries[1], fidelity=dataclasses.replace(entries[1].fidelity, top1_agreement=None))
    label, ys = quality(dataclasses.replace(report, entries=entries))
    assert label == "centred cosine with reference"
    assert ys == [1.0] + [e.fidelity.centred_cosine for e in report.entries[1:]]
    assert ys[1] < report.entries[1].fidelity.cosine  # the scaled model: parallel, but its common part moved

    entries[2] = dataclasses.replace(entries[2], fidelity=dataclasses.replace(entries[2].fidelity, centred_cosine=None))
    label, ys = quality(dataclasses.replace(report, entries=entries))
    assert label == "cosine similarity to reference"
    assert ys == [1.0] + [e.fidelity.cosine for e in report.entries[1:]]


def test_plot_writes_a_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plot.png"
    plot(report, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temp file left behind


def test_a_model_onnxruntime_cannot_load_or_run_is_named_in_one_line(monkeypatch):
    import onnxopt.measure.sidebyside as sidebyside
    from onnxopt.errors import BadModel

    class Failing:
        def __init__(self, session):
            self._session = session

        def get_inputs(self):
            return self._session.get_inputs()

        def get_outputs(self):
            return self._session.get_outputs()

        def run(self, *args):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Reshape failed\nsecond line")

    real = sidebyside.make_session
    bad = linear(W * np.float32(2))
    bad_bytes = bad.SerializeToString()
    monkeypatch.setattr(sidebyside, "make_session",
                        lambda data, **k: Failing(real(data, **k)) if data == bad_bytes else real(data, **k))
    with pytest.raises(BadModel) as err:
        run_bench([subject(linear(W), "good.onnx"), subject(bad, "bad.onnx")], FAST)
    message = str(err.value)
    assert "\n" not in message and message.startswith("bad.onnx: onnxruntime cannot run it on inputs input [1, 4]")
    assert "Reshape failed" in message

    def refuse(data, **k):
        raise BadModel("onnxruntime cannot load the model: bad node")
    monkeypatch.setattr(sidebyside, "make_session", refuse)
    with pytest.raises(BadModel, match=r"^good\.onnx: onnxruntime cannot load the model: bad node$"):
        run_bench([subject(linear(W), "good.onnx")], FAST)


# -- review findings: batches, interfaces, data ---------------------------------------------
def test_dynamic_reference_and_fixed_candidate_share_labelled_data_in_whole_batches(tmp_path):
    x = np.random.default_rng(5).standard_normal((10, 4)).astype(np.float32)
    labels = np.argmax(x @ W, axis=1)
    labels[0] = (labels[0] + 1) % 3  # the first sample wrong: 7 of the 8 that run are right
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    r = run_bench([subject(linear(W), "dynamic.onnx"), subject(linear(W, batch=4), "fixed4.onnx")], FAST,
                  data=tmp_path / "d.npz")
    assert r.batches == [4] and r.inputs == {"input": [4, 4]}
    assert r.fidelity_samples == 8 and r.labelled_samples == 8 and "8 of 10 samples" in r.data
    assert r.entries[0].accuracy == r.entries[1].accuracy == pytest.approx(7 / 8)
    assert r.entries[1].fidelity.max_abs == 0.0


def test_models_that_fix_different_batch_sizes_are_refused_in_one_line():
    with pytest.raises(BadData, match=r"^b\.onnx: inputs \(input: float32\[4,4\]\) do not match a\.onnx's"):
        run_bench([subject(linear(W, batch=1), "a.onnx"), subject(linear(W, batch=4), "b.onnx")], FAST)


def test_a_candidate_without_an_input_the_reference_ignores_is_accepted():
    """cleanup removes unused graph inputs: the optimized model takes a subset of the inputs."""
    with_unused = linear(W)
    with_unused.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, ["N", 2]))
    r = run_bench([subject(with_unused, "before.onnx"), subject(linear(W), "after.onnx")], FAST)
    assert r.entries[1].fidelity.max_abs == 0.0
    with pytest.raises(BadData, match="do not match"):  # an input the reference lacks cannot be fed
        check_same_interface([subject(linear(W), "after.onnx"), subject(with_unused, "before.onnx")])


def test_a_fixed_length_vector_input_is_not_a_batch_axis():
    # y = x * s with x [N, 4] and s [4]: s has no batch axis, so --batch changes x only
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "scale",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    r = run_bench([subject(model, "a"), subject(model, "b")], dataclasses.replace(FAST, batches=(1, 8)))
    assert r.batches == [1, 8] and r.inputs == {"x": [1, 4], "s": [4]}


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_batch_inputs_are_the_dynamic_ones_else_those_sharing_the_first_inputs_dim():
    from onnxopt.measure.sidebyside import batch_inputs

    f = TensorProto.FLOAT
    mask_dynamic = _model([helper.make_node("MatMul", ["x", "m"], ["y"])], [("x", f, ["N", 3]), ("m", f, [3, 3])],
                          [("y", f, ["N", 3])])
    assert batch_inputs(mask_dynamic) == ({"x"}, None)
    mask_static = _model([helper.make_node("MatMul", ["x", "m"], ["y"])], [("x", f, [1, 3]), ("m", f, [3, 3])],
                         [("y", f, [1, 3])])
    assert batch_inputs(mask_static) == ({"x"}, 1)
    r = run_bench([subject(mask_dynamic, "a"), subject(mask_dynamic, "b")], dataclasses.replace(FAST, batches=(1, 8)))
    assert r.batches == [1, 8] and r.inputs == {"x": [1, 3], "m": [3, 3]}
    r = run_bench([subject(mask_static, "a"), subject(mask_static, "b")], FAST)
    assert r.batches == [1] and r.inputs == {"x": [1, 3], "m": [3, 3]}


def test_rounds_of_every_session_set_widen_the_interval_end_to_end():
    r = run_bench([subject(linear(W), "a"), subject(linear(W * np.float32(1.1)), "b")],
                  dataclasses.replace(FAST, rounds=12, budget_seconds=None, session_sets=3))
    t = r.entries[1].timings[1]
    assert len(t.set_ratio_medians) == 3 and len(t.round_ratios) == 12
    low, high = t.round_ratio_interval()
    assert low <= min(t.set_ratio_medians) and high >= max(t.set_ratio_medians)


def test_a_dynamic_batch_model_with_a_batch_hard_coded_inside_is_compared_in_batches_of_one(tmp_path):
    """Exports often declare batch N but Reshape to [1, ...]: 64-sample chunks fail, batch 1 works."""
    f = TensorProto.FLOAT
    shape = numpy_helper.from_array(np.array([1, 3], np.int64), "shape")
    model = _model([helper.make_node("MatMul", ["input", "W"], ["z"]), helper.make_node("Reshape", ["z", "shape"], ["y"])],
                   [("input", f, ["N", 4])], [("y", f, [1, 3])], [numpy_helper.from_array(W, "W"), shape])
    x = np.random.default_rng(2).standard_normal((70, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x, labels=np.argmax(x @ W, axis=1))
    r = run_bench([subject(model, "a"), subject(model, "b")], FAST, data=tmp_path / "d.npz")
    assert r.fidelity_samples == 70 and r.labelled_samples == 70 and r.entries[0].accuracy == 1.0


def test_data_fills_dynamic_spatial_dims(tmp_path):
    f = TensorProto.FLOAT
    model = _model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], [("x", f, ["N", 3, "H", "W"])],
                   [("y", f, ["N", 3, 1, 1])])
    np.savez(tmp_path / "img.npz", x=np.ones((2, 3, 16, 16), np.float32))
    r = run_bench([subject(model, "a"), subject(model, "b")], FAST, data=tmp_path / "img.npz")
    assert r.inputs == {"x": [1, 3, 16, 16]}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak session memory is measured on Linux")
def test_memory_is_measured_for_a_candidate_with_fewer_inputs():
    with_unused = linear(W)
    with_unused.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, ["N", 2]))
    r = run_bench([subject(with_unused, "before.onnx"), subject(linear(W), "after.onnx")],
                  dataclasses.replace(FAST, memory=True))
    assert all(isinstance(e.memory_bytes, int) and e.memory_bytes > 0 for e in r.entries)
