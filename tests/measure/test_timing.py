"""onnxopt.measure.timing: interleaving order, per-round ratios and statistics (never absolute times)."""
from __future__ import annotations

import numpy as np
import pytest

from onnxopt.measure.timing import Timing, interleave, session_runner
from onnxopt.models import build
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes


def test_rounds_shuffle_then_reverse_so_no_model_always_runs_second():
    calls: list[str] = []
    runners = [(n, (lambda n=n: calls.append(n))) for n in "ABCD"]
    interleave(runners, warmup=1, rounds=40)
    assert calls[:4] == list("ABCD")  # warm-up, in the given order
    rounds = ["".join(calls[4 + 4 * r: 8 + 4 * r]) for r in range(40)]
    assert all(sorted(r) == list("ABCD") for r in rounds)  # each model once per round
    assert all(rounds[r + 1] == rounds[r][::-1] for r in range(0, 40, 2))  # then reversed
    # over each pair of rounds every model's mean position is the middle one
    for r in range(0, 40, 2):
        assert all(rounds[r].index(m) + rounds[r + 1].index(m) == 3 for m in "ABCD")
    # who runs right before whom varies: no model is always preceded by the same one
    before = {m: {r[r.index(m) - 1] for r in rounds if r.index(m) > 0} for m in "ABCD"}
    assert all(len(v) >= 2 for v in before.values()), before
    assert len(set(rounds[::2])) > 5  # shuffled, not a fixed cycle


def test_round_orders_are_seeded():
    from itertools import islice

    from onnxopt.measure.timing import round_orders

    assert list(islice(round_orders(5, 1), 10)) == list(islice(round_orders(5, 1), 10))
    assert list(islice(round_orders(5, 1), 10)) != list(islice(round_orders(5, 2), 10))


def test_round_ratios_compare_within_the_same_round(monkeypatch):
    # a fake clock: A takes 1 s, B takes 2 s in every round
    import onnxopt.measure.timing as bench

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
    import onnxopt.measure.timing as bench

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


# -- statistics on hand-made samples ---------------------------------------------------------
# A and B over five rounds, in milliseconds. B's per-round ratios (5, 2, 1, 0.5, 2) have a median
# of 2, while the ratio of the medians is 4/3: the two statistics are different numbers.
A_MS = [1.0, 2.0, 3.0, 4.0, 5.0]
B_MS = [5.0, 4.0, 3.0, 2.0, 10.0]
B_RATIOS = [5.0, 2.0, 1.0, 0.5, 2.0]


def test_quantiles_interpolate_linearly_like_numpy():
    # 1..10 ms, shuffled: position (n-1)q = 8.1 for p90 -> 9 + 0.1 * (10 - 9) = 9.1 ms
    ms = [3, 1, 4, 10, 2, 5, 9, 6, 8, 7]
    t = Timing("x", [m / 1e3 for m in ms], [1.0] * 10)
    assert t.median == pytest.approx(5.5e-3)  # even count: mean of the two middle samples
    assert t.quantile(0.9) == pytest.approx(9.1e-3)
    assert t.quantile(0.99) == pytest.approx(9.91e-3)
    assert t.quantile(0.5) == pytest.approx(t.median)
    assert t.quantile(0.0) == pytest.approx(1e-3) and t.quantile(1.0) == pytest.approx(10e-3)
    assert t.quantile(0.9) == pytest.approx(float(np.quantile(t.seconds, 0.9, method="linear")))


def test_median_round_ratio_is_the_median_of_the_per_round_ratios():
    assert Timing("b", [b / 1e3 for b in B_MS], B_RATIOS).median_round_ratio == 2.0
    assert Timing("b", [1.0] * 4, [1.0, 3.0, 2.0, 10.0]).median_round_ratio == 2.5  # even count


def test_as_dict_keys_and_values():
    a = Timing("A", [x / 1e3 for x in A_MS], [1.0] * 5)
    b = Timing("B", [x / 1e3 for x in B_MS], B_RATIOS)
    d = b.as_dict(a)
    assert set(d) == {"name", "rounds", "median_ms", "p90_ms", "p99_ms", "min_ms", "ratio_of_medians",
                      "median_round_ratio", "median_round_ratio_interval"}
    # 5 rounds cannot support 95% (P(all 5 on one side) = 1/16 > 2.5%): the whole range
    assert d["median_round_ratio_interval"] == [0.5, 5.0]
    assert d["name"] == "B" and d["rounds"] == 5
    # B sorted: 2, 3, 4, 5, 10 -> median 4; p90 at position 3.6 -> 5 + 0.6 * 5 = 8; p99 at 3.96 -> 9.8
    assert d["median_ms"] == pytest.approx(4.0)
    assert d["p90_ms"] == pytest.approx(8.0)
    assert d["p99_ms"] == pytest.approx(9.8)
    assert d["min_ms"] == pytest.approx(2.0)
    assert d["ratio_of_medians"] == pytest.approx(4.0 / 3.0)
    assert d["median_round_ratio"] == pytest.approx(2.0)
    ref = a.as_dict(a)
    assert ref["ratio_of_medians"] == 1.0 and ref["median_round_ratio"] == 1.0 and ref["median_ms"] == pytest.approx(3.0)


# -- interleave with a fake clock ------------------------------------------------------------
@pytest.fixture
def clock(monkeypatch):
    """time.perf_counter as seen by onnxopt.measure.timing: advances only when a fake runner says so."""
    import onnxopt.measure.timing as bench

    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    return now


def scripted(clock, name, durations, log=None):
    """A runner whose n-th call takes durations[n] seconds of fake time."""
    it = iter(durations)

    def run():
        if log is not None:
            log.append(name)
        clock[0] += next(it)
    return name, run


def test_warmup_is_not_timed_and_ratios_pair_runs_of_the_same_round(clock):
    # two warm-up calls each take 1000 s: none of that may show up in the samples
    log: list[str] = []
    a = scripted(clock, "A", [1000.0, 1000.0] + A_MS, log)
    b = scripted(clock, "B", [1000.0, 1000.0] + B_MS, log)
    c = scripted(clock, "C", [1000.0, 1000.0] + [2 * x for x in A_MS], log)
    ta, tb, tc = interleave([a, b, c], warmup=2, rounds=5)
    assert log.count("A") == log.count("B") == log.count("C") == 7  # 2 warm-up + 5 timed each
    order = "".join(log[6:])
    assert order[3:6] == order[:3][::-1]
    assert [ta.name, tb.name, tc.name] == ["A", "B", "C"]  # results in the given order, not run order
    assert ta.seconds == A_MS and tb.seconds == B_MS
    # B ran before A in every other round, yet each ratio is B / A of the same round
    assert tb.round_ratios == B_RATIOS
    assert tc.round_ratios == [2.0] * 5
    assert ta.round_ratios == [1.0] * 5
    d = tb.as_dict(ta)
    assert d["ratio_of_medians"] == pytest.approx(4.0 / 3.0) and d["median_round_ratio"] == pytest.approx(2.0)


def test_budget_stops_at_the_first_round_past_it_and_excludes_warmup(clock):
    # 0.125 s per round (exact in binary): 1.0 s is reached after round 8 but not exceeded until
    # round 9; a 100 s warm-up must not eat the budget
    seen: list[tuple[int, int]] = []
    (t,) = interleave([scripted(clock, "A", [100.0] + [0.125] * 100)], warmup=1, rounds=100,
                      budget_seconds=1.0, progress=lambda done, total: seen.append((done, total)))
    assert len(t.seconds) == 9
    assert seen == [(i, 100) for i in range(1, 10)]


def test_round_limit_applies_before_a_generous_budget(clock):
    (t,) = interleave([scripted(clock, "A", [0.001] * 20)], warmup=0, rounds=7, budget_seconds=1e9)
    assert len(t.seconds) == 7
    (t,) = interleave([scripted(clock, "A", [5.0] * 20)], warmup=0, rounds=12, budget_seconds=None)
    assert len(t.seconds) == 12  # no budget: every round runs however slow


def test_budget_counts_every_runner_of_a_round(clock):
    # three runners of 0.125 s: 0.375 s per round, a 3.0 s budget is passed during round 9
    runners = [scripted(clock, n, [0.125] * 100) for n in "ABC"]
    timings = interleave(runners, warmup=0, rounds=100, budget_seconds=3.0)
    assert [len(t.seconds) for t in timings] == [9, 9, 9]


@pytest.mark.parametrize("n, ranks", [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (50, (18, 33)), (200, (86, 115))])
def test_median_interval_uses_the_binomial_order_statistics(n, ranks):
    """The textbook ranks (e.g. n=20 -> 6th and 15th values), on a shuffled 1..n."""
    from onnxopt.measure.timing import median_interval

    values = list(np.random.default_rng(n).permutation(np.arange(1, n + 1)))
    assert median_interval(values) == ranks


def test_median_interval_covers_the_median_at_least_95_percent_of_the_time():
    from onnxopt.measure.timing import median_interval

    rng = np.random.default_rng(0)
    hits = sum(lo <= 1.0 <= hi for lo, hi in (median_interval(rng.lognormal(size=40)) for _ in range(2000)))
    assert 0.95 <= hits / 2000 <= 0.99  # exact method: conservative, never far above
    big = rng.lognormal(size=5000)  # normal approximation above 1000 values
    lo, hi = median_interval(big)
    assert lo < np.median(big) < hi and hi - lo < 0.1


def test_the_interval_takes_in_every_session_sets_own_median():
    """Rounds of one set of sessions share a placement bias: the interval must cover each set."""
    ratios = [1.0 + 0.001 * (k % 7) for k in range(600)]  # pooled rounds: a tight interval near 1.003
    tight = Timing("b", [1.0] * 600, ratios)
    low, high = tight.round_ratio_interval()
    assert 1.002 <= low <= high <= 1.004
    pooled = Timing("b", [1.0] * 600, ratios, set_ratio_medians=[0.99, 1.003, 1.012])
    assert pooled.round_ratio_interval() == (0.99, 1.012)


def test_settle_stops_once_the_ratio_is_known():
    """Two runners whose per-round ratio is exactly 2: the interval is a point after 50 rounds, so
    settle stops there; without it the rounds run out."""
    import onnxopt.measure.timing as timing
    ticks = [0.0]

    def fake(cost):
        def run():
            ticks[0] += cost
        return run

    real = timing.time.perf_counter
    try:
        timing.time.perf_counter = lambda: ticks[0]
        settled = timing.interleave([("a", fake(1e-3)), ("b", fake(2e-3))], warmup=0, rounds=1000, settle=0.005)
        full = timing.interleave([("a", fake(1e-3)), ("b", fake(2e-3))], warmup=0, rounds=300)
    finally:
        timing.time.perf_counter = real
    assert len(settled[0].seconds) == 50 and settled[1].median_round_ratio == pytest.approx(2.0)
    assert len(full[0].seconds) == 300


def test_settle_waits_for_every_runner_ratio():
    """A third runner whose cost alternates 1 and 3 ms against a steady first: its ratio is not
    known to ±0.5% however long it runs, so settling on the second alone would stop at 50 rounds."""
    import onnxopt.measure.timing as timing
    ticks = [0.0]
    calls = [0]

    def fake(cost):
        def run():
            ticks[0] += cost
        return run

    def swinging():
        calls[0] += 1
        ticks[0] += 1e-3 if calls[0] % 2 else 3e-3

    real = timing.time.perf_counter
    try:
        timing.time.perf_counter = lambda: ticks[0]
        ran = timing.interleave([("a", fake(1e-3)), ("b", fake(2e-3)), ("c", swinging)], warmup=0, rounds=300,
                                settle=0.005)
    finally:
        timing.time.perf_counter = real
    assert len(ran[0].seconds) == 300
