"""onnxopt.bench: interleaving order, per-round ratios and statistics (never absolute times)."""
from __future__ import annotations

import numpy as np
import pytest

from onnxopt.bench import Timing, interleave, session_runner
from onnxopt.models import build
from onnxopt.runtime import random_feeds, resolve_input_shapes


def test_rounds_alternate_order_so_no_model_always_runs_second():
    calls: list[str] = []
    runners = [(n, (lambda n=n: calls.append(n))) for n in "ABC"]
    interleave(runners, warmup=1, rounds=4)
    assert calls[:3] == list("ABC")  # warm-up
    assert calls[3:] == list("ABC" "CBA" "ABC" "CBA")


def test_round_ratios_compare_within_the_same_round(monkeypatch):
    # a fake clock: A takes 1 s, B takes 2 s in every round
    import onnxopt.bench as bench

    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])

    def take(seconds):
        def run():
            now[0] += seconds
        return run

    a, b = interleave([("A", take(1.0)), ("B", take(2.0))], warmup=0, rounds=6)
    assert a.seconds == [1.0] * 6 and b.seconds == [2.0] * 6
    assert b.round_ratios == [2.0] * 6 and a.round_ratios == [1.0] * 6
    d = b.as_dict(a)
    assert d["ratio_of_medians"] == 2.0 and d["median_round_ratio"] == 2.0 and d["median_ms"] == 2000.0


def test_budget_stops_early_but_after_five_rounds(monkeypatch):
    import onnxopt.bench as bench

    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])

    def slow():
        now[0] += 10.0

    (t,) = interleave([("A", slow)], warmup=0, rounds=100, budget_seconds=1.0)
    assert len(t.seconds) == 5


def test_timing_statistics():
    t = Timing("x", [0.004, 0.001, 0.002, 0.003, 0.010], [1.0] * 5)
    assert t.median == 0.003
    assert t.quantile(0.9) == pytest.approx(np.quantile(t.seconds, 0.9))
    assert t.as_dict(t)["min_ms"] == pytest.approx(1.0)


def test_session_runner_runs_the_model():
    model = build("repvgg_a0-tiny")
    feed = random_feeds(model, resolve_input_shapes(model), seed=0)[0]
    out = session_runner(model, dict(feed, unused=np.zeros(1)))()  # unknown feed names are dropped
    assert out[0].shape == (1, 10)
