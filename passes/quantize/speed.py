"""Integer kernels only where they pay on this CPU.

int8 is not faster everywhere: without VNNI onnxruntime's u8 x s8 kernels gain little over its
blocked float convolutions, and every QuantizeLinear/DequantizeLinear at a region's edge costs a
pass over the tensor. So, as measured, not assumed:

1. the quantized units, in graph order, are cut into up to REGIONS contiguous regions of about the
   same number of weighted layers (a contiguous float region keeps onnxruntime from fusing its ops
   back into integer kernels, which it does to a lone float op between DequantizeLinear and
   QuantizeLinear);
2. each region in turn is tried in float, timed side by side with the current model (interleaved,
   medians: onnxopt.measure.timing), and kept float when that is at least GAIN faster;
3. if regions were kept float, the result is timed against the all-int8 model and then the float
   model: each step passed GAIN alone, and together they must still be GAIN faster than all int8
   and faster than all int8 was against float, else all int8 is kept; unless it is at least GAIN faster, int8 does not
   pay on this CPU and the pass leaves the model float (force=true keeps it).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import onnx

from onnxopt.measure.timing import interleave, session_runner
from onnxopt.runtime.sessions import Feed

REGIONS = 8
GAIN = 0.02            # a change must save 2% of the latency to count: above the A/A noise of these machines
BUDGET_SECONDS = 1.0   # per side-by-side comparison, or as long as MIN_ROUNDS take (at most MAX_SECONDS)
MIN_ROUNDS = 25        # a median of fewer rounds of a large model moved by more than GAIN between identical runs
MAX_SECONDS = 8.0
# a comparison stops once its per-round ratio is known to within a quarter of GAIN (95%): a small
# model settles in a tenth of the budget, and a decision at GAIN is not moved by what is left
SETTLE = GAIN / 4


@dataclasses.dataclass
class Trial:
    region: str            # "layers 3-5 (conv3 .. conv5)"
    ratio: float           # latency with the region float / without
    kept_float: bool


@dataclasses.dataclass
class SpeedPlan:
    float_keys: set[str]
    ratio: float           # final int8 model / float model, ratio of medians
    first_ratio: float     # all-int8 model / float model
    trials: list[Trial]
    undone: bool = False   # regions kept float one by one, but together not faster than all int8: all int8 kept

    @property
    def pays(self) -> bool:
        return self.ratio <= 1 - GAIN

    def as_dict(self) -> dict:
        return {"int8_over_float": self.ratio, "all_int8_over_float": self.first_ratio, "gain_needed": GAIN,
                "pays": self.pays, "regions": [dataclasses.asdict(t) for t in self.trials], "undone": self.undone}


def ratio(a: onnx.ModelProto, b: onnx.ModelProto, feed: Feed, threads: int) -> float:
    """Latency of `a` over latency of `b`, timed side by side (ratio of medians), until the budget
    or until the median per-round ratio is known to SETTLE (the two agree to well within it)."""
    runners = [("b", session_runner(b, feed, threads=threads)), ("a", session_runner(a, feed, threads=threads))]
    t0 = time.perf_counter()
    for _, run in runners:  # one untimed round: how long a round takes sets the budget
        run()
    budget = min(max(BUDGET_SECONDS, MIN_ROUNDS * (time.perf_counter() - t0)), MAX_SECONDS)
    timings = interleave(runners, warmup=2, rounds=400, budget_seconds=budget, settle=SETTLE)
    return timings[1].median / timings[0].median


def regions(units: list, count: int | None = None) -> list[list]:
    """Contiguous runs of units with about the same number of weighted layers each; a run starts at
    a weighted unit, and what follows it (Add, pools, Concat) goes with it."""
    count = REGIONS if count is None else count
    weighted = [i for i, u in enumerate(units) if u.kind == "weighted"]
    if not weighted:
        return [units] if units else []
    per = -(-len(weighted) // min(count, len(weighted)))
    starts = [0] + weighted[per::per]
    return [units[s:e] for s, e in zip(starts, starts[1:] + [len(units)])]


def _name(run: list) -> str:
    layers = [u.node for u in run if u.kind == "weighted"] or [run[0].node]
    first, last = layers[0].label, layers[-1].label
    return first if first == last else f"{first} .. {last} ({len(layers)} layers)"


def choose(build: Callable[[set[str]], onnx.ModelProto], units: list, float_model: onnx.ModelProto,
           float_keys: set[str], feed: Feed, threads: int,
           progress: Callable[[int, int], None] = lambda i, n: None) -> SpeedPlan:
    """The float keys (node outputs) to build with: `float_keys` plus every region that runs faster
    in float. `build(keys)` makes the quantized model with those nodes float."""
    keys = set(float_keys)
    everywhere = current = build(keys)
    first = ratio(current, float_model, feed, threads)
    trials = []
    runs = regions(units)
    if len(runs) > 1:
        for i, run in enumerate(runs):
            progress(i, len(runs))
            candidate_keys = keys | {u.node.outputs[0] for u in run}
            candidate = build(candidate_keys)
            r = ratio(candidate, current, feed, threads)
            faster = r <= 1 - GAIN
            trials.append(Trial(_name(run), r, faster))
            if faster:
                keys, current = candidate_keys, candidate
    if not any(t.kept_float for t in trials):
        return SpeedPlan(keys, first, first, trials)
    final = ratio(current, everywhere, feed, threads)
    if final <= 1 - GAIN:
        final = ratio(current, float_model, feed, threads)
    if final > 1 - GAIN or final > first:
        # each step looked faster, the whole is not (noise that passed GAIN, or regions that interact)
        for t in trials:
            t.kept_float = False
        return SpeedPlan(set(float_keys), first, first, trials, undone=True)
    return SpeedPlan(keys, final, first, trials)
