"""One trial of a search, as a worker runs it: build the spec's model, score it with the user's
metric, time it against the original side by side. Plain Python: the cluster layer ships it to
Ray workers, the tests call it directly."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx

from ..data.feeds import FeedSet
from ..errors import one_line
from ..runtime.sessions import Feed

Metric = Callable[[onnx.ModelProto], float]
SETTLE = 0.01  # a trial's latency ratio is known well enough once its 95% interval is within ±1%
RACE_SESSION_SETS = 3  # sets of sessions a race pools its rounds over (see race)


@dataclasses.dataclass
class Samples:
    """Feeds as plain arrays (what crosses process boundaries): `arrays` by input, `batch` samples
    per run, `whole` the inputs given whole per run, `labels` for top-1."""
    arrays: dict[str, np.ndarray]
    batch: int = 1
    whole: frozenset[str] = frozenset()
    labels: np.ndarray | None = None

    @classmethod
    def of(cls, feeds: FeedSet, limit: int | None = None, skip: int = 0) -> Samples:
        """`limit` runs of `feeds` after the first `skip`, read into memory."""
        runs = len(feeds) - skip if limit is None else min(limit, len(feeds) - skip)
        chosen = [feeds.feed(i) for i in range(skip, skip + max(0, runs))]
        whole = frozenset(getattr(feeds, "whole", frozenset()))
        arrays = {k: (np.stack([np.asarray(f[k]) for f in chosen]) if k in whole else
                      np.concatenate([np.asarray(f[k]) for f in chosen])) for k in (chosen[0] if chosen else {})}
        labels = None
        if feeds.labels is not None:
            labels = np.asarray(feeds.labels[skip * feeds.batch:(skip + len(chosen)) * feeds.batch])
        return cls(arrays, feeds.batch, whole, labels)

    def feedset(self) -> FeedSet:
        return FeedSet(self.arrays, self.batch, self.labels, "search data", self.whole)

    def __len__(self) -> int:
        return len(self.feedset())


@dataclasses.dataclass
class Payload:
    """Everything a worker needs, put once into the object store."""
    model: bytes
    shapes: dict[str, tuple[int, ...]]
    calibration: Samples
    metric_kind: str                         # "metric" (the user's callable) | "top-1" | "agreement"
    metric: Metric | None = None
    evaluation: Samples | None = None        # labelled, for top-1
    holdback: Samples | None = None          # for agreement
    reference: list[Feed] | None = None      # the original's outputs on the holdback
    timing_budget: float = 2.0
    seed: int = 0


class NoGate:
    """Timing exclusivity when nothing else runs (a single process): nothing to wait for."""

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        yield


def build(payload: Payload, spec: str) -> tuple[onnx.ModelProto, dict]:
    from ..pipeline.run import Pipeline
    from ..pipeline.spec import parse_spec
    model = onnx.load_from_string(payload.model)
    run = Pipeline(parse_spec(spec), calibration=payload.calibration.feedset(), input_shapes=payload.shapes,
                   seed=payload.seed, threads=1).run(model)
    statuses = {p.name: p.status for p in run.report.passes}
    failed = [f"{p.name}: {p.message}" for p in run.report.passes if p.status == "failed"]
    return run.model, {"statuses": statuses, "failed": failed}


def score(payload: Payload, model: onnx.ModelProto) -> float:
    """Higher is better: the user's metric, top-1 accuracy on the labelled data, or agreement with
    the original on held-back calibration samples (top-1 agreement for [N, classes] outputs, else
    the cosine of what the input decides: runtime.fidelity.centred_cosine, or the plain output
    cosine where the original's outputs do not vary across those samples)."""
    from ..runtime.sessions import run_model
    if payload.metric_kind == "metric":
        return float(payload.metric(model))
    if payload.metric_kind == "top-1":
        from ..errors import BadData
        from ..runtime.fidelity import top1
        data = payload.evaluation.feedset()
        feeds = list(data)
        outputs = run_model(model, feeds, optimization="all")  # its errors are the model's, not top-1's
        try:
            return top1(outputs, data.labels, fed=len(feeds) * data.batch)
        except ValueError as exc:  # on the original, before any trial: the search stops with it
            raise BadData(f"--eval {data.source}: {exc} (without --eval the search scores agreement with the original, or give metric= in Python)") from None
    from ..runtime.fidelity import agreement
    outs = run_model(model, list(payload.holdback.feedset()), optimization="all")
    return agreement(payload.reference, outs)[1]


def latency_ratio(payload: Payload, model: onnx.ModelProto, with_control: bool = False) -> dict:
    """The candidate's latency over the original's: both timed in the same interleaved rounds on one
    thread (the median of the per-round ratios); with_control adds the original against itself."""
    from ..measure.timing import interleave, session_runner, timed_on
    feed = next(iter(payload.calibration.feedset()))
    runners = [("original", session_runner(payload.model, feed)), ("candidate", session_runner(model, feed))]
    if with_control:
        runners.append(("control", session_runner(payload.model, feed)))
    # at most the time budget; a fast model stops once its ratio is known to within a percent
    timings = interleave(runners, warmup=5, rounds=20000, budget_seconds=payload.timing_budget, seed=payload.seed,
                         settle=SETTLE)
    out = {"latency_ratio": timings[1].median_round_ratio, "original_ms": timings[0].median * 1e3,
           "rounds": len(timings[0].seconds), "timed_on": timed_on()}
    if with_control:
        out["control_ratio"] = timings[2].median_round_ratio
        out["control_ms"] = timings[2].median * 1e3  # the original's time, apart from the ratios' denominator
    return out


def control_ratio(payload: Payload) -> dict:
    """The original timed against itself: the A/A noise of a trial's latency ratio (a job of its
    own only where the trial that was to time it beside itself failed first)."""
    return latency_ratio(payload, onnx.load_from_string(payload.model), with_control=True)


def race(payload: Payload, candidates: list[bytes]) -> dict:
    """The closest candidates for the choice timed again, side by side in one process with the
    original, over RACE_SESSION_SETS sets of sessions (measure.sidebyside.time_side_by_side): each
    trial's ratio came from its own process, where its sessions' placement in memory moves it by a
    few percent, and the fastest of several close trials is the one whose timing erred lowest.
    Returns each candidate's ratio to the original and its interval."""
    from ..measure.sidebyside import Settings, time_side_by_side
    from ..measure.timing import timed_on
    started = time.perf_counter()
    feed = next(iter(payload.calibration.feedset()))
    models = [("original", payload.model), *((f"candidate {i}", c) for i, c in enumerate(candidates))]
    # each candidate's settled ratio, at most the budget a trial has for each model timed
    settings = Settings(threads=1, warmup=5, rounds=20000, budget_seconds=payload.timing_budget * len(candidates),
                        session_sets=RACE_SESSION_SETS, settle=SETTLE, seed=payload.seed)
    timings = time_side_by_side(models, feed, settings)
    return {"ratios": [t.median_round_ratio for t in timings[1:]],
            "intervals": [list(t.round_ratio_interval()) for t in timings[1:]], "rounds": len(timings[0].seconds),
            "seconds": time.perf_counter() - started, "timed_on": timed_on()}


def run_trial(payload: Payload, spec: str, gate: Any = None, control: bool = False) -> dict:
    """Build, score and time one spec (`control`: the original against itself too, in the same
    rounds: the A/A noise of a trial's ratio, as `control_ratio`). Never raises for what the spec or
    the metric does wrong: a failed trial is a result with its one-line reason."""
    from ..analysis.cost import model_stats
    gate = gate or NoGate()
    started = time.perf_counter()
    result: dict[str, Any] = {"spec": spec, "started_at": time.time()}
    from ..measure.timing import quiet_machine
    try:
        # the build shares the node with other trials' builds; every timing in it (its passes' and
        # the ratio below) has the node alone
        with gate.shared(), quiet_machine(gate.quiet):
            model, built = build(payload, spec)
            result.update(built)
            if built["failed"]:
                raise RuntimeError("; ".join(built["failed"]))
            result["metric"] = score(payload, model)
            result.update(latency_ratio(payload, model, with_control=control))
            serialized = model.SerializeToString()
            stats = model_stats(model, payload.shapes)
        result.update(size=len(serialized), params=stats.params, macs=stats.macs, model=serialized,
                      model_sha256=hashlib.sha256(serialized).hexdigest())
    except Exception as exc:  # noqa: BLE001 - the search records a failed trial and goes on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result["error"] = f"{one_line(exc)} ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
    result["seconds"] = time.perf_counter() - started
    return result
