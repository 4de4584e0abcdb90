"""Side-by-side latency: several models timed in one process, interleaved, reported as medians.

Absolute times on a shared machine drift by more than the differences we want to see; a ratio of
medians from runs interleaved in one process does not. Each round runs every model once, in an
order that is shuffled and then reversed in the next round (see round_orders), and the per-round
ratio (each model against the first in the same round) is reported next to the ratio of medians.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import ContextManager

import numpy as np
import onnx

from ..runtime.sessions import Feed, OptLevel, inputs_for, make_session


@dataclasses.dataclass
class Timing:
    name: str
    seconds: list[float]            # one sample per round
    round_ratios: list[float]       # this model / the first model, per round
    # the median round ratio of each set of sessions, where rounds were pooled over several
    set_ratio_medians: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.seconds, q))

    @property
    def median_round_ratio(self) -> float:
        return statistics.median(self.round_ratios)

    def round_ratio_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Confidence interval of the median per-round ratio (see median_interval), widened to take
        in every set of sessions' own median. Rounds of one set share where its sessions landed in
        memory, so they are not independent samples of the ratio: the interval from the pooled
        rounds alone excluded 1.0 in 8 of 12 A/A comparisons; the spread between sets is the part
        of the noise it misses."""
        low, high = median_interval(self.round_ratios, confidence)
        if self.set_ratio_medians:
            low, high = min(low, *self.set_ratio_medians), max(high, *self.set_ratio_medians)
        return low, high

    def as_dict(self, reference: "Timing") -> dict:
        low, high = self.round_ratio_interval()
        return {"name": self.name, "rounds": len(self.seconds), "median_ms": self.median * 1e3,
                "p90_ms": self.quantile(0.9) * 1e3, "p99_ms": self.quantile(0.99) * 1e3,
                "min_ms": min(self.seconds) * 1e3,
                "ratio_of_medians": self.median / reference.median,
                "median_round_ratio": self.median_round_ratio,
                "median_round_ratio_interval": [low, high]}


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of a median: the order statistics x(j) and x(n+1-j)
    with the largest j such that P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2. Timings are
    skewed and have outliers, so no normal model of them is assumed. With too few values for the
    confidence asked, the whole range."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    j, cdf = 0, 0.0  # cdf = P(B < j + 1) as j grows
    if n <= 1000:
        while True:
            p_j = math.comb(n, j) / 2.0 ** n
            if cdf + p_j > tail:
                break
            cdf += p_j
            j += 1
    else:  # normal approximation of the binomial, exact enough for this many rounds
        j = max(0, math.floor(n / 2 - _z(confidence) * math.sqrt(n) / 2))
    if j == 0:
        return xs[0], xs[-1]
    return xs[j - 1], xs[n - j]


def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def machine() -> dict:
    """What a timing depends on besides the models: CPU (with its int8 kind: x86-vnni, x86-avx2, ...),
    cores and library versions."""
    import onnxruntime

    from ..runtime.cpu import this_cpu

    cpu = this_cpu()
    return {"cpu": f"{cpu.model} ({cpu.kind})", "cpu_kind": cpu.kind, "cpu_flags": sorted(cpu.flags),
            "cores": os.cpu_count(), "python": platform.python_version(), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


@functools.lru_cache(maxsize=1)  # a process keeps its machine: asked once per trial, read once
def timed_on() -> str:
    """The machine a latency ratio belongs to, in one line: the CPU with its int8 extensions (AMX
    or VNNI moves an int8 model's ratio several-fold) and onnxruntime's version (its kernels
    change between releases). Ratios timed on two such machines do not compare."""
    import onnxruntime

    from ..runtime.cpu import this_cpu
    return f"{this_cpu().describe()}, onnxruntime {onnxruntime.__version__}"


def round_orders(count: int, seed: int = 0) -> Iterator[list[int]]:
    """The order of the runners in each round: a seeded shuffle, then the same order reversed.

    Reversing balances the position of every runner over each pair of rounds (a drifting machine
    favours none); shuffling varies which runner precedes which. With a fixed order (ABC, CBA, ...)
    an A/A pair of a 12-model run measured 1.5% apart, round after round: the one that always ran
    right after the same model paid for the cache state it left."""
    rng = np.random.default_rng(seed)
    while True:
        order = [int(i) for i in rng.permutation(count)]
        yield order
        yield order[::-1]


# What must hold while rounds are timed, so that nothing else runs on the machine. By default
# nothing; a search worker sets its node's gate (onnxopt.search.cluster) for the length of a trial,
# so that every timing in it (its own ratio, and that of passes that measure: quantize's speed
# check, prune's latency target) waits until the other trials' builds on the node pause.
_quiet: Callable[[], ContextManager] = contextlib.nullcontext


@contextlib.contextmanager
def quiet_machine(provider: Callable[[], ContextManager]) -> Iterator[None]:
    """Within this block, interleave() times inside `provider()`."""
    global _quiet
    previous, _quiet = _quiet, provider
    try:
        yield
    finally:
        _quiet = previous


def interleave(runners: Sequence[tuple[str, Callable[[], object]]], *, warmup: int = 3,
               rounds: int = 50, budget_seconds: float | None = None,
               progress: Callable[[int, int], None] | None = None, seed: int = 0,
               settle: float | None = None) -> list[Timing]:
    """Time each runner once per round for `rounds` rounds (or until `budget_seconds`, at least 5
    rounds), after `warmup` untimed rounds, in the orders of round_orders(). With `settle`, stop
    as soon as the 95% interval of every runner's median per-round ratio to the first lies within
    ±settle of it (checked every 25 rounds from the 50th): a fast model needs far fewer
    rounds than a time budget gives it. Returns one Timing per runner, in the given order."""
    with _quiet():
        return _interleave(runners, warmup, rounds, budget_seconds, progress, seed, settle)


def _settled(samples: list[list[float]], settle: float) -> bool:
    """Whether every runner's median per-round ratio to the first is known to within ±settle."""
    for runner in samples[1:]:
        ratios = [a / b for a, b in zip(runner, samples[0])]
        low, high = median_interval(ratios)
        middle = statistics.median(ratios)
        if high - middle > settle * middle or middle - low > settle * middle:
            return False
    return True


def _interleave(runners, warmup, rounds, budget_seconds, progress, seed, settle=None) -> list[Timing]:
    names = [name for name, _ in runners]
    calls = [fn for _, fn in runners]
    for _ in range(warmup):
        for fn in calls:
            fn()
    samples: list[list[float]] = [[] for _ in calls]
    orders = round_orders(len(calls), seed)
    # a collection inside a timed call would be charged to whichever model happened to run
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for r in range(rounds):
            for i in next(orders):
                t0 = time.perf_counter()
                calls[i]()
                samples[i].append(time.perf_counter() - t0)
            if progress is not None:
                progress(r + 1, rounds)
            if budget_seconds is not None and r >= 4 and time.perf_counter() - start > budget_seconds:
                break
            if settle is not None and len(calls) > 1 and r >= 49 and (r + 1) % 25 == 0 and _settled(samples, settle):
                break
    finally:
        if collecting:
            gc.enable()
    return [Timing(n, s, [a / b for a, b in zip(s, samples[0])]) for n, s in zip(names, samples)]


def session_runner(model: onnx.ModelProto | bytes, feed: Feed, *, threads: int = 1,
                   optimization: OptLevel = "all") -> Callable[[], object]:
    """A zero-argument callable running one inference: the session is built once, here."""
    return runner(make_session(model, optimization=optimization, threads=threads), feed)


def runner(session, feed: Feed) -> Callable[[], object]:
    """A zero-argument callable running `session` once on `feed` (the inputs it takes)."""
    inputs = inputs_for(session, feed)
    return lambda: session.run(None, inputs)
