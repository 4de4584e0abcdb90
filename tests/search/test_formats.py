"""The search's table for people: what it warns about."""
from __future__ import annotations

import dataclasses

from onnxopt.search.formats import format_front
from onnxopt.search.run import SearchResult
from onnxopt.search.study import TrialRecord, load_moved, race_margin


def _result(trials: list[TrialRecord]) -> SearchResult:
    report = {"study": "onnxopt-x", "cluster": {"nodes": 1, "cpus": 2}, "timed_on": "test CPU",
              "metric": {"kind": "top-1", "original": 0.9, "max_drop": 0.01}, "control": {"control_ratio": 1.0},
              "best_is_measured_model": True}
    best = trials[0]
    return SearchResult(object(), best.spec, [best], trials, None, report)  # best: any model


def _trial(number: int, spec: str, cut: int, original_ms: float | None = None, node: str = "n") -> TrialRecord:
    return TrialRecord(number, spec, "complete", 0.9, 0.0, 0.5, 100, 10, 1000, node, 10.0, timing_seconds=4.0,
                       timings_cut=cut, original_ms=original_ms)


def test_a_trial_whose_timing_outlasted_the_gate_is_named():
    text = format_front(_result([_trial(0, "fold-bn", 0), _trial(1, "fold-bn,quantize", 1)]))
    warning = next(line for line in text.splitlines() if line.startswith("warning:"))
    assert "#1" in warning and "#0" not in warning
    assert "trials: 20 s of work, 8 s of it timing" in text


def test_without_a_cut_timing_there_is_no_warning():
    text = format_front(_result([_trial(0, "fold-bn", 0), _trial(1, "fold-bn,quantize", 0)]))
    assert "warning" not in text and "chosen: fold-bn (latency x0.500" in text


def test_the_latency_targets_tried_say_where_the_budget_breaks():
    def rung(number, target, drop):
        spec = f"fold-bn,prune:target-latency={target},criterion=recon"
        if drop is None:
            return TrialRecord(number, spec, "failed", error="RuntimeError: x", origin="ladder")
        return TrialRecord(number, spec, "complete", 0.9 - drop, drop, target + 0.01, origin="ladder")
    trials = [_trial(0, "fold-bn", 0), rung(1, 0.5, 0.05), rung(2, 0.8, 0.005), rung(3, 0.65, 0.02),
              rung(4, 0.725, None)]
    lines = format_front(_result(trials)).splitlines()
    start = lines.index("latency targets (the ladder, then halving the gap where the budget breaks):")
    # fastest target first, each with its verdict against the 1-point budget; the recipe is not a rung
    assert lines[start + 1:start + 5] == [
        "  #1 target 0.5: x0.510, drop 5.00 points, over the budget",
        "  #3 target 0.65: x0.660, drop 2.00 points, over the budget",
        "  #4 target 0.725: failed",
        "  #2 target 0.8: x0.810, drop 0.50 points, within the budget"]
    assert "latency targets" not in format_front(_result([_trial(0, "fold-bn", 0)]))


def test_the_nodes_whose_load_moved_between_trials_are_those_past_a_tenth():
    # the AVX2 EPYC VM of notes/int8-load-x86-avx2.md: 0.601 to 0.717 ms over ten trials on one node;
    # a second node within a tenth of itself is not named, nor does a failed trial's time count
    trials = [_trial(0, "fold-bn", 0, 0.601, "a"), _trial(1, "fold-bn,quantize", 0, 0.717, "a"),
              _trial(2, "fold-bn,prune:ratio=0.3", 0, 0.50, "b"), _trial(3, "prune:ratio=0.5", 0, 0.549, "b"),
              dataclasses.replace(_trial(4, "prune:ratio=0.9", 0, 0.9, "b"), state="failed"), _trial(5, "cleanup", 0)]
    assert load_moved(trials) == {"a": (0.601, 0.717)}
    trials[3] = _trial(3, "prune:ratio=0.5", 0, 0.551, "b")  # just past a tenth
    assert load_moved(trials) == {"a": (0.601, 0.717), "b": (0.50, 0.551)}


def test_the_table_warns_of_each_node_the_report_says_its_load_moved():
    result = _result([_trial(0, "fold-bn", 0), _trial(1, "fold-bn,quantize", 0)])
    assert "warning" not in format_front(result)
    result.report["load_moved"] = {"b": [12.3, 15.0], "a": [0.6, 0.717]}
    warnings = [line for line in format_front(result).splitlines() if line.startswith("warning:")]
    assert [w.split("took ")[1].split(" ms")[0] for w in warnings] == ["0.600 to 0.717", "12.3 to 15.0"]
    assert "node a:" in warnings[0] and "node b:" in warnings[1]
    assert "takes the trials within the largest such spread of the fastest (25% at most)" in warnings[0]


def test_the_race_margin_widens_with_the_largest_spread_a_node_saw_within_its_bounds():
    quiet = [_trial(0, "fold-bn", 0, 0.60, "a"), _trial(1, "fold-bn,quantize", 0, 0.65, "a")]
    assert race_margin(load_moved(quiet), 0.05, 0.25) == 0.05
    moved = quiet + [_trial(2, "cleanup", 0, 0.50, "b"), _trial(3, "prune:ratio=0.5", 0, 0.595, "b")]
    assert abs(race_margin(load_moved(moved), 0.05, 0.25) - 0.19) < 1e-9   # node b: 0.595 / 0.50 - 1
    assert race_margin(load_moved(moved + [_trial(4, "prune:ratio=0.6", 0, 1.0, "b")]), 0.05, 0.25) == 0.25
    assert race_margin(load_moved(moved), 0.30, 0.25) == 0.30   # never narrower than the quiet margin
