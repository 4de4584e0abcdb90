"""onnxopt search against the fixed recipes, and its scaling over workers.

digits: each bundled digits model searched with `--eval` on images it never saw (validation(): the
training images rotated, scaled and shifted; digits_test.npz untouched), budget one point, 24
trials, 2 workers. The chosen model and the README's fixed recipes (fold-bn,reparam;
fold-bn,prune:ratio=0.3; fold-bn,quantize; fold-bn,prune:ratio=0.3,quantize), each built from the
same calibration data, are then timed side by side in one process (onnxopt.measure.sidebyside: 1
thread, interleaved rounds, two session sets, an A/A control) with their top-1 on digits_test.npz.
The question: is the chosen model within one point on the test split, and faster than every recipe
that is?

workers: one 16-trial search with 1 worker, then the same 16 specs with 2 (queued in the first
run's order: left to itself, Optuna asks other specs when two trials run at once), on this 2-core machine, of the digits
ResNet (trials of 2 to 4 s, a tenth to a fifth of it timing: Ray's start and end weigh) and of a full-size
ResNet-18 with random weights (agreement with the original on held-back random inputs; builds
dominate): the wall-time ratio, and the latency ratios of the specs both runs measured (where both
built the same model: a pass that decides by timing, quantize's speed check or prune's latency
target, may build another one each time) against the A/A noise: a dozen ratios of the original
against itself, timed as a trial times a candidate, a third each before, between and after the
searches; and in the same rounds a pruned model against the original (the A/B control), whose
ratio shows how far the machine's drift over those minutes moves a candidate's ratio, which an A/A
ratio cannot show.

zoo: full-size MobileNetV2 and ResNet-50 with random weights, fed synthetic scenes (smooth random
fields: on white noise their outputs are one vector whatever the input), searched for the cosine of
their outputs with the original's once the part common to every scene is taken out; does the front
reach 0.5x the original's latency, and is its cosine there above uniform pruning's at the same
latency?

drift: the workers section's models, and its A/B controls (a pruned model, an int8 one) and the A/A,
timed as a trial times a candidate, in rounds over three minutes in one process (without Ray): how
far does one model's ratio wander with the machine's state, and does it wander in steps that last
several rounds (the workers section compares two runs' ratios taken minutes apart)?

Run: `python -m benchmarks search [--quick] [--only=digits,workers,zoo,drift] [--workers=digits_resnet] [--zoo=resnet50]`
(needs `pip install -e ".[search]"`); `--only` reruns those sections and keeps the others' last results,
`--workers`, `--zoo` and `--drift` those models of their section.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnxopt import models
from onnxopt.data.feeds import FeedSet
from onnxopt.data.files import load_feeds
from onnxopt.measure.sidebyside import Settings, Subject, run_bench
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import parse_spec
from onnxopt.search import search
from onnxopt.search.run import RACE_MARGIN
from onnxopt.search.trial import Payload

from .common import machine, results_dir, write
from . import scenes as zoo_scenes

DIGITS = ("digits_resnet", "digits_mobilenetv2", "digits_mobilenet", "digits_repvgg")
RECIPES = ("fold-bn,reparam", "fold-bn,prune:ratio=0.3", "fold-bn,quantize", "fold-bn,prune:ratio=0.3,quantize")
ZOO = ("mobilenetv2", "resnet50")
WORKERS = ("digits_resnet", "resnet18")
SECTIONS = ("digits", "workers", "zoo", "drift")
TEST = models.FIXTURES / "digits_test.npz"
CALIB = models.FIXTURES / "digits_calib.npz"


VALIDATION_ANGLE = 15.0   # degrees either way
VALIDATION_SCALE = 0.12   # either way
VALIDATION_SHIFT = 2.0    # px at 32x32, as in training


def validation(copies: int = 2, seed: int = 1) -> FeedSet:
    """Labelled images the digits models never saw: the training split, each image `copies` times
    rotated, scaled and shifted at random (bilinear). The models were trained on every training
    image under shifts of up to 2 px, so the images themselves score ~100% and no drop would show
    there; rotation and scale they never saw. scikit-learn's digits have no third split, and
    digits_test.npz stays untouched for the final check."""
    from onnxopt.models import digits
    images, labels = digits.load("train")
    rng = np.random.default_rng(seed)
    out = [_warped(images, rng) for _ in range(copies)]
    # 6 images a run: fewer runs per trial than one by one, and 6 divides 2 x 1437, so every image counts
    return FeedSet({"input": np.concatenate(out)}, 6, np.tile(labels, copies),
                   f"digits train x{copies}, rotated ±{VALIDATION_ANGLE:g}°, scaled ±{100 * VALIDATION_SCALE:g}%, "
                   f"shifted ±{VALIDATION_SHIFT:g} px")


def _warped(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each [1, H, W] image under its own random rotation, scale and shift about its centre."""
    n, _, h, w = images.shape
    angle = np.deg2rad(rng.uniform(-VALIDATION_ANGLE, VALIDATION_ANGLE, n))
    scale = rng.uniform(1 - VALIDATION_SCALE, 1 + VALIDATION_SCALE, n)
    shift = rng.uniform(-VALIDATION_SHIFT, VALIDATION_SHIFT, (n, 2))
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    cos, sin = (np.cos(angle) / scale)[:, None, None], (np.sin(angle) / scale)[:, None, None]
    # where each output pixel comes from (the inverse map), then bilinear sampling, zeros outside
    sy = cos * yy - sin * xx + (h - 1) / 2 - shift[:, 0, None, None]
    sx = sin * yy + cos * xx + (w - 1) / 2 - shift[:, 1, None, None]
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    fy, fx = sy - y0, sx - x0
    flat = images[:, 0]
    index = np.arange(n)[:, None, None]

    def at(y, x):
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        return np.where(inside, flat[index, y.clip(0, h - 1), x.clip(0, w - 1)], 0.0)
    out = ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1)
           + fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1))
    return out[:, None].astype(np.float32)


def _top1_on(model: onnx.ModelProto, data: FeedSet) -> float:
    from onnxopt.runtime.sessions import run_model
    from onnxopt.runtime.fidelity import top1
    return top1(run_model(model, list(data), optimization="all"), data.labels)


def digits_run(name: str, quick: bool) -> dict:
    model = onnx.load(str(models.fixture_path(name)))
    calib = load_feeds(CALIB, model)
    started = time.perf_counter()
    checked = validation()
    with tempfile.TemporaryDirectory() as tmp:
        result = search(model, calib, evaluation=checked, max_drop=0.01, trials=8 if quick else 24, workers=2,
                        storage=f"sqlite:///{tmp}/study.db", timing_budget=1.0 if quick else 2.0)
    seconds = time.perf_counter() - started
    subjects = [Subject("original", model, model.SerializeToString()),
                Subject("original (A/A)", model, model.SerializeToString())]
    if result.best is not None:
        subjects.append(Subject("search", result.best, result.best.SerializeToString()))
    for spec in RECIPES:
        built = Pipeline(parse_spec(spec), calibration=calib, threads=1).run(model).model
        subjects.append(Subject(spec, built, built.SerializeToString()))
    bench = run_bench(subjects, Settings(threads=1, budget_seconds=2.0 if quick else 6.0, session_sets=1 if quick else 2,
                                         memory=False), data=TEST)
    rows = {}
    original = bench.entries[0]
    for e in bench.entries:
        d = e.as_dict(bench.reference)
        lat = next(iter(d["latency"].values()))
        rows[e.name] = {"ratio": lat["median_round_ratio"], "interval": lat["median_round_ratio_interval"],
                        "test_top1": e.accuracy, "drop": (original.accuracy - e.accuracy) if e.accuracy is not None
                        else None, "size": e.file_bytes}
    # the same models on the validation images, which tell what the 360 test images are too few to
    validation_top1 = {s.name: _top1_on(s.model, checked) for s in subjects}
    for key, row in rows.items():
        row["validation_drop"] = validation_top1["original"] - validation_top1[key]
    within, faster = _recipes_within(rows, "drop")
    chosen = rows.get("search")
    return {"model": name, "search_seconds": seconds, "spec": result.spec,
            "validation_drop": next((t.drop for t in result.trials if t.spec == result.spec), None),
            "trials": len(result.trials), "failed": sum(t.state == "failed" for t in result.trials),
            "front": [t.as_dict() for t in result.front], "rows": rows, "race": result.report["race"],
            "chosen_within_one_point": bool(chosen and chosen["drop"] <= 0.01 + 1e-9),
            "faster_than_every_recipe_within": faster, "recipes_within": sorted(within)}


def workers_run(name: str, quick: bool) -> dict:
    """One search of `name` with 1 worker, then with 2: wall times, and the specs both measured."""
    model, calib = _workload(name)
    # digits: top-1 on images the search never saw; a zoo model (random weights): agreement with the
    # original on held-back random inputs
    evaluation = validation() if name.startswith("digits") else None
    # prune's latency target keeps a per-CPU table of layer timings across runs: building the pruned
    # control fills it for this model first, so that neither run pays for it (the first would
    # otherwise, the second not)
    pruned, int8 = _control_models(model, calib)
    import optuna
    runs = {}
    # the A/A noise of one trial's ratio as a trial measures it (fresh sessions, the trials' budget
    # and settling): a dozen ratios, as one A/A pair per search cannot say how far two runs' ratios
    # of one model may differ. Timed in three blocks, before, between and after the searches, as
    # this shared machine's noise moves by minutes (the A/A sigma of a block timed after them read
    # 0.0016 to 0.0073 from run to run). In the same rounds, the A/B control: a pruned model's ratio,
    # which the machine's drift between the runs moves where it cannot move an A/A ratio (a
    # neighbour's load slows two different models by different shares, one model twice alike)
    repeats, budget = (3, 1.0) if quick else (AA_REPEATS, 2.0)
    controls = [_controls(model, (pruned, int8), calib, repeats // 3, budget)]
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            if workers == 2:
                controls.append(_controls(model, (pruned, int8), calib, repeats // 3, budget))
            storage = f"sqlite:///{tmp}/study-{workers}.db"
            if workers == 2:
                # the same work: the 2-worker search tries the 1-worker search's specs in its order
                # (left to itself, Optuna asks other specs when two trials run at once, and how long
                # a spec takes to build varies by minutes: the wall times would compare other work)
                first = optuna.load_study(study_name=result.report["study"], storage=f"sqlite:///{tmp}/study-1.db")
                again = optuna.create_study(study_name=result.report["study"], storage=storage,
                                            directions=["minimize", "maximize"])
                for t in sorted(first.trials, key=lambda t: t.number):
                    again.enqueue_trial(t.params, user_attrs={"recipe": True} if t.user_attrs.get("recipe") else {})
            started = time.perf_counter()
            result = search(model, calib, evaluation=evaluation, max_drop=0.01, trials=6 if quick else 16,
                            workers=workers, storage=storage, timing_budget=1.0 if quick else 2.0, resume=workers == 2)
            runs[workers] = {"seconds": time.perf_counter() - started, "control": result.report["control"],
                             "ratios": {t.spec: t.latency_ratio for t in result.trials if t.state == "complete"},
                             "models": {t.spec: t.model_sha256 for t in result.trials if t.state == "complete"},
                             "trial_seconds": sum(t.seconds or 0 for t in result.trials),
                             "timing_seconds": sum(t.timing_seconds or 0 for t in result.trials),
                             "specs": [t.spec for t in result.trials]}
    controls.append(_controls(model, (pruned, int8), calib, repeats - 2 * (repeats // 3), budget))
    aa = [a for block in controls for a, _, _ in block]
    ab = [[b for _, b, _ in block] for block in controls]
    ab_int8 = [[b for _, _, b in block] for block in controls]
    # the same spec may build another model in each run where a pass decides by timing (quantize's
    # speed check, prune's latency target): only the same model's two ratios say how well they agree
    both = sorted(set(runs[1]["ratios"]) & set(runs[2]["ratios"]))
    common = [s for s in both if runs[1]["models"][s] == runs[2]["models"][s]]
    noise = max(abs(runs[w]["control"].get("control_ratio", float("nan")) - 1) for w in (1, 2))
    agree = {s: {"one_worker": runs[1]["ratios"][s], "two_workers": runs[2]["ratios"][s],
                 "difference": abs(runs[1]["ratios"][s] - runs[2]["ratios"][s])} for s in common}
    built_apart = {s: {"one_worker": runs[1]["ratios"][s], "two_workers": runs[2]["ratios"][s]}
                   for s in both if s not in common}
    return {"model": name, "wall_ratio": runs[2]["seconds"] / runs[1]["seconds"], "runs": runs, "a_a_noise": noise,
            "same_specs": runs[1]["specs"] == runs[2]["specs"], "common_specs": agree, "built_apart": built_apart,
            "a_a_ratios": aa, "a_b_ratios": ab, "a_b_int8_ratios": ab_int8, **_agreements(agree, aa, ab)}


AA_REPEATS = 12   # A/A ratios timed around the searches: the spread of one trial's ratio
PRUNED_CONTROL = "fold-bn,prune:target-latency=0.7"  # the A/B control: a pruned model like the trials'
INT8_CONTROL = "fold-bn,quantize:speed=false"  # the int8 A/B control: int8 everywhere, as the search's int8 trials


def _workload(name: str) -> tuple[onnx.ModelProto, FeedSet]:
    """The workers and drift sections' model and its calibration data: a digits fixture with
    digits_calib.npz, or a zoo model with random weights and 40 random samples."""
    if name.startswith("digits"):
        model = onnx.load(str(models.fixture_path(name)))
        return model, load_feeds(CALIB, model)
    from onnxopt.data.files import random_calibration
    model = models.build(name, seed=0)
    return model, random_calibration(model, samples=40)


def _control_models(model: onnx.ModelProto, calib: FeedSet) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The A/B controls built from `model`: pruned (PRUNED_CONTROL) and int8 (INT8_CONTROL)."""
    return tuple(Pipeline(parse_spec(spec), calibration=calib, threads=1).run(model).model
                 for spec in (PRUNED_CONTROL, INT8_CONTROL))


def _timing_payload(model: onnx.ModelProto, calib: FeedSet, budget: float) -> Payload:
    """What trial.latency_ratio needs to time a candidate against `model` as a trial does."""
    from onnxopt.runtime.sessions import resolve_input_shapes
    from onnxopt.search.trial import Samples
    first = next(iter(calib))
    shapes = resolve_input_shapes(model, {k: tuple(v.shape) for k, v in first.items()})
    return Payload(model.SerializeToString(), shapes, Samples.of(calib, limit=1), "agreement", timing_budget=budget)


AGREE_SIGMAS = 3  # a same-model difference within 3 standard deviations of a two-run difference agrees


def _controls(model: onnx.ModelProto, others: tuple[onnx.ModelProto, onnx.ModelProto], calib: FeedSet,
              repeats: int, budget: float) -> list[tuple[float, float, float]]:
    """`repeats` times, the original against itself (A/A) and a pruned model against the original
    (A/B), in the same rounds, then an int8 model against the original: each timed as a search's
    trial times a candidate beside its A/A control, in a Ray worker of a 2-CPU local instance, under
    the node's gate, with Ray's own processes running beside it, as they run beside a trial's timing."""
    from onnxopt.search import cluster
    payload = _timing_payload(model, calib, budget)

    def pair(payload: Payload, candidate: bytes) -> dict:  # nested: Ray ships it to the worker by value
        from onnxopt.search.trial import latency_ratio as _ratio
        return _ratio(payload, onnx.load_from_string(candidate), with_control=True)
    timed, candidates = [], [m.SerializeToString() for m in others]
    try:
        cluster.connect(None, 2)
        runner = cluster.Runner(payload)
        for _ in range(repeats):
            results = []
            for candidate in candidates:
                runner.start("controls", pair, candidate)
                _, _, result = runner.next()
                if "error" in result:
                    raise RuntimeError(f"A/A and A/B control: {result['error']}")
                results.append(result)
            timed.append((results[0]["control_ratio"], results[0]["latency_ratio"], results[1]["latency_ratio"]))
    finally:
        cluster.shutdown()
    return timed


def _agreements(common: dict, aa: list[float], ab: list[list[float]]) -> dict:
    """The two verdicts: within the A/A noise, and within the noise and the drift (the A/A sigma and
    the spread of the A/B control's block medians, added in quadrature: a drift the A/A cannot see
    only widens the limit; the medians carry a little of the noise again, so it is the lenient one)."""
    if len(aa) < 2:
        return {"agreement": None, "agreement_with_drift": None}
    sigma = float(np.std(aa, ddof=1))
    _, drift = _block_drift(ab)
    with_drift = _agreement(common, float(np.hypot(sigma, drift)))
    if with_drift is not None:
        with_drift["drift_sigma"] = drift
    return {"agreement": _agreement(common, sigma), "agreement_with_drift": with_drift}


def _block_drift(blocks: list[list[float]]) -> tuple[list[float], float]:
    """The median of each block of A/B ratios, and their standard deviation (0 for one block)."""
    medians = [float(np.median(block)) for block in blocks if block]
    return medians, float(np.std(medians, ddof=1)) if len(medians) > 1 else 0.0


def _agreement(common: dict, sigma: float) -> dict | None:
    """Do the two runs' ratios of each same model agree within `sigma`, a ratio's spread? A
    difference of two runs' ratios carries it twice (sqrt 2 sigma), and each must be within
    AGREE_SIGMAS of that (a bias common to every timing, such as the order of the rounds, cancels in
    a difference). With sigma the standard deviation of AA_REPEATS A/A ratios, a difference is
    Student's t with 11 degrees of freedom: 1.2% of specs fail by noise alone, and one of 16 does in
    18% of runs (strict rather than lenient). In absolute terms: a faster model's ratio is not
    quieter (x86-vnni, ResNet-18: int8 at 0.375x timed 8 times as a trial times, standard deviation
    0.0036; the A/A beside it, 0.0036)."""
    if not common:
        return None
    diffs = {s: r["two_workers"] - r["one_worker"] for s, r in common.items()}
    worst = max(diffs, key=lambda s: abs(diffs[s]))
    limit = AGREE_SIGMAS * np.sqrt(2) * sigma
    return {"sigma": sigma, "limit": float(limit), "largest_difference": abs(diffs[worst]),
            "largest_in_sigmas": abs(diffs[worst]) / (np.sqrt(2) * sigma) if sigma > 0 else float("inf"),
            "outside": sorted(s for s, d in diffs.items() if abs(d) > limit), "agrees": all(abs(d) <= limit for d in diffs.values())}


def _joined(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def _verdict(agreement: dict) -> str:
    return (f"sigma {agreement['sigma']:.4f}; a two-run difference may be {AGREE_SIGMAS} x sqrt 2 sigma = "
            f"{agreement['limit']:.4f}; the largest is {agreement['largest_difference']:.4f} "
            f"({agreement['largest_in_sigmas']:.1f} sqrt-2 sigmas)"
            + (f"; outside: {', '.join(f'`{s}`' for s in agreement['outside'])}" if agreement["outside"] else ""))


def zoo_run(name: str, quick: bool) -> dict:
    """A full-size zoo model (random weights), fed synthetic scenes (benchmarks/scenes.py), searched for the
    centred output cosine with the original on the held-back scenes: does
    the front reach 0.5x the original's latency, and with what centred cosine (metric()) against
    uniform pruning at the same latency (`fold-bn,prune:ratio=r` for r in 0.3..0.7, timed side by side, interpolated)?"""
    from onnxopt.runtime.sessions import resolve_input_shapes, run_model
    model = models.build(name, seed=0)
    shapes = resolve_input_shapes(model)
    held = zoo_scenes.held_back(model)
    reference_runs = run_model(model, held, optimization="all")

    def metric(candidate):  # self-contained: Ray ships it to the workers by value
        """The cosine of what the input decides (the search's own agreement metric on an output
        that is not a classifier's): a plain cosine rewards a model for keeping the part common to
        every input alone."""
        from onnxopt.runtime.fidelity import centred_cosine
        from onnxopt.runtime.sessions import run_model as _run
        return float(centred_cosine(reference_runs, _run(candidate, held, optimization="all")))
    calib = zoo_scenes.calibration(model)
    common = zoo_scenes.common_share(reference_runs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = search(model, calib, metric=metric, max_drop=0.5, trials=6 if quick else 16, workers=2,
                        storage=f"sqlite:///{tmp}/study.db", timing_budget=2.0)
    seconds = time.perf_counter() - started
    subjects = [Subject("original", model, model.SerializeToString())]
    uniform = {}
    for r in (0.3, 0.4, 0.5, 0.6, 0.7):
        built = Pipeline(parse_spec(f"fold-bn,prune:ratio={r}"), calibration=calib, threads=1).run(model).model
        subjects.append(Subject(f"uniform {r}", built, built.SerializeToString()))
        uniform[r] = metric(built)
    bench = run_bench(subjects, Settings(threads=1, budget_seconds=3.0, session_sets=1, memory=False),
                      input_shapes=shapes)
    points = sorted((next(iter(e.as_dict(bench.reference)["latency"].values()))["median_round_ratio"],
                     uniform[float(e.name.split()[1])]) for e in bench.entries[1:])
    front = [(t.latency_ratio, t.metric, t.spec) for t in result.front]
    reach = [f for f in front if f[0] <= 0.5]
    best = max(reach, key=lambda f: f[1]) if reach else None
    at = None
    if best is not None:  # uniform cosine at the same latency, interpolated between neighbours
        below = [p for p in points if p[0] <= best[0]]
        above = [p for p in points if p[0] > best[0]]
        if below and above:
            (x0, y0), (x1, y1) = below[-1], above[0]
            at = y0 + (y1 - y0) * (best[0] - x0) / (x1 - x0)
        elif below:
            at = below[-1][1]
    return {"model": name, "metric": "centred cosine", "common_share": common, "search_seconds": seconds,
            "front": front, "uniform": points, "reaches_half": best is not None, "best_at_half": best,
            "uniform_cosine_there": at}


DRIFT_REPEATS = 40     # rounds: each times the pruned model, then the int8 one, as the workers' controls do
DRIFT_SECONDS = 180.0  # the first round to the last, at least (a small model's timings would take seconds)


def drift_run(name: str, quick: bool) -> dict:
    """`name`'s pruned and int8 A/B controls (workers_run), each ratio timed as a trial times it
    (fresh sessions, the trials' budget and settling, the original against itself beside it:
    trial.latency_ratio), DRIFT_REPEATS rounds spread over DRIFT_SECONDS in this process, without
    Ray. Per model (the A/A: the one beside the pruned model, a single ratio as the others are): the
    ratios' spread; their lag-1
    autocorrelation (within about ±2/sqrt(rounds) of 0 for independent timings; above it where the
    ratio moves in steps that outlast a round, which two timings minutes apart do not share); and
    their correlation with the original's time as its second session (the A/A's) measured it, not
    the first, whose noise is every ratio's denominator."""
    from onnxopt.search.trial import latency_ratio
    model, calib = _workload(name)
    candidates = {"pruned": PRUNED_CONTROL, "int8": INT8_CONTROL}
    built = dict(zip(candidates, _control_models(model, calib)))
    payload = _timing_payload(model, calib, 1.0 if quick else 2.0)
    rounds = 8 if quick else DRIFT_REPEATS
    span = 20.0 if quick else DRIFT_SECONDS
    series: dict[str, list[tuple[float, float]]] = {"A/A": [], **{kind: [] for kind in candidates}}  # (ratio, ms)
    started = time.perf_counter()
    for i in range(rounds):
        time.sleep(max(0.0, started + i * span / (rounds - 1) - time.perf_counter()))
        for kind in candidates:
            got = latency_ratio(payload, built[kind], with_control=True)
            series[kind].append((got["latency_ratio"], got["control_ms"]))
            if kind == "pruned":
                series["A/A"].append((got["control_ratio"], got["control_ms"]))
    rows = {}
    for kind, pairs in series.items():
        x, ms = np.asarray(pairs).T
        rows[kind] = {"spec": candidates.get(kind), "mean": float(x.mean()), "sd": float(x.std(ddof=1)),
                      "low": float(x.min()), "high": float(x.max()), "lag1": float(np.corrcoef(x[:-1], x[1:])[0, 1]),
                      # the A/A's numerator is that very time: no correlation of its own to show
                      "with_original_ms": float(np.corrcoef(x, ms)[0, 1]) if kind in candidates else None,
                      "ratios": x.tolist()}
    times = [ms for _, ms in series["A/A"]]
    return {"model": name, "rounds": rounds, "seconds": time.perf_counter() - started,
            "original_ms_range": [min(times), max(times)], "kinds": rows}


def _bias(common: dict) -> tuple[float, float, float] | None:
    """(mean, standard error, largest absolute) of the 2-worker minus 1-worker ratios of the same
    models: a mean several standard errors from 0 says one run measured under load."""
    diffs = [r["two_workers"] - r["one_worker"] for r in common.values()]
    if len(diffs) < 2:
        return None
    return float(np.mean(diffs)), float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))), float(np.max(np.abs(diffs)))


def _recipes_within(rows: dict, drop: str) -> tuple[list[str], bool]:
    """The recipes that lose at most one point by `drop` (the test split's or validation's), and
    whether the chosen model is faster than each of them."""
    within = [k for k in RECIPES if k in rows and rows[k].get(drop) is not None and rows[k][drop] <= 0.01 + 1e-9]
    chosen = rows.get("search")
    return within, bool(chosen) and all(chosen["ratio"] < rows[k]["ratio"] for k in within)


def _judged_on_validation(d: dict) -> str:
    """The same verdict with the recipes held to the budget the search was held to: one point on the
    validation images (360 test images at ~99% tell too little: a recipe that loses 3 points on
    validation may lose none on test)."""
    rows = d["rows"]
    within, faster = _recipes_within(rows, "validation_drop")
    chosen = rows.get("search")
    # a lead whose 95% intervals overlap the recipe's is about the noise: said, not counted as a miss
    close = [k for k in within if chosen and chosen["interval"][1] >= rows[k]["interval"][0]
             and rows[k]["interval"][1] >= chosen["interval"][0]]
    noise = f" ({', '.join(close)}: the intervals overlap, about the noise)" if faster and close else ""
    return (f"the recipes held to the search's own budget instead (one point on validation): within it "
            f"{', '.join(within) or 'none'}; the chosen model faster than each: {'yes' if faster else 'NO'}{noise}")


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = ["# onnxopt search", "", f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}. "
             "Latency: ratio to the original, median of per-round ratios, 1 thread, side by side in one process; "
             "top-1 on digits_test.npz (360).", ""]
    for d in data["digits"]:
        lines += [f"## {d['model']}", "", f"chosen: `{d['spec']}` (validation drop {100 * (d['validation_drop'] or 0):.2f} "
                  f"points; {d['trials']} trials, {d['failed']} failed, {d['search_seconds']:.0f} s)", "",
                  "| model | latency / original | 95% interval | test top-1 | drop (points) | validation drop |",
                  "|---|---|---|---|---|---|"]
        for name, r in d["rows"].items():
            seen = r.get("validation_drop")
            lines.append(f"| {name} | {r['ratio']:.3f} | {r['interval'][0]:.3f}-{r['interval'][1]:.3f} | "
                         f"{100 * (r['test_top1'] or 0):.2f}% | {100 * (r['drop'] or 0):.2f} | "
                         + (f"{100 * seen:.2f} |" if seen is not None else "- |"))
        race = (d.get("race") or {}).get("entrants")
        if race:  # the search's own side-by-side rerun of its closest candidates, before it chose
            margin = d["race"].get("margin", RACE_MARGIN)  # wider where the load moved (runs before had none)
            rule = d["race"].get("chosen_by")  # runs before chose the lowest race ratio, and said no more
            how = f"race ratio [95% interval]; chosen: {rule}" if rule else "race ratio"
            lines += ["", f"raced before the choice ({len(race)} within the budget and {margin:.0%} of the fastest; "
                      f"trial ratio -> {how}): "
                      + ", ".join(f"#{e['number']} {e['trial_ratio']:.3f} -> {e['race_ratio']:.3f}"
                                  + (f" [{e['interval'][0]:.3f}-{e['interval'][1]:.3f}]" if rule else "") for e in race)]
        lines += ["", f"within one point on test: {'yes' if d['chosen_within_one_point'] else 'NO'}; faster than every "
                  f"recipe within one point ({', '.join(d['recipes_within']) or 'none'}): "
                  f"{'yes' if d['faster_than_every_recipe_within'] else 'NO'}", _judged_on_validation(d), ""]
    for w in data.get("workers") or []:
        runs = {int(k): v for k, v in w["runs"].items()}  # JSON keys are strings
        same = " (the same specs in the same order)" if w.get("same_specs") else ""
        lines += [f"## Workers: {w['model']}", "", f"16-trial search{same}: 2 workers took {w['wall_ratio']:.2f}x the wall "
                  f"time of 1 ({runs[2]['seconds']:.0f} s vs {runs[1]['seconds']:.0f} s; the trials' own seconds add up to "
                  f"{runs[2]['trial_seconds']:.0f} vs {runs[1]['trial_seconds']:.0f}, a trial's including the seconds it was "
                  f"stopped while another timed; of them timing with the node alone: {runs[2].get('timing_seconds', 0):.0f} vs "
                  f"{runs[1].get('timing_seconds', 0):.0f}). A/A control of a "
                  f"trial ratio: off by {w['a_a_noise']:.3f} (the larger of the two runs').", "",
                  "| spec | 1 worker | 2 workers | difference |", "|---|---|---|---|"]
        for spec, r in w["common_specs"].items():
            lines.append(f"| `{spec}` | {r['one_worker']:.3f} | {r['two_workers']:.3f} | {r['difference']:.3f} |")
        bias = _bias(w["common_specs"])
        if bias is not None:
            mean, se, largest = bias
            lines += ["", f"2 workers minus 1, over these {len(w['common_specs'])} specs: mean {mean:+.4f} (standard error "
                      f"{se:.4f}; a load the gate let through would push it one way), largest {largest:.3f} against the "
                      f"A/A control's {w['a_a_noise']:.3f} (one A/A pair; a difference of two runs carries the noise of two)"]
        agreement = w.get("agreement")
        if agreement is not None:
            aa = w["a_a_ratios"]
            lines += ["", f"Agreement within the A/A noise: {'yes' if agreement['agrees'] else 'NO'}. {len(aa)} A/A ratios "
                      f"timed as a trial times, a third each before, between and after the searches (range "
                      f"{min(aa):.3f}-{max(aa):.3f}): {_verdict(agreement)}"]
        drift = w.get("agreement_with_drift")
        if drift is not None:
            medians, sd = _block_drift(w["a_b_ratios"])
            lines += ["", f"Within the noise and the machine's drift: {'yes' if drift['agrees'] else 'NO'}. The A/B control, "
                      f"a pruned model (`{PRUNED_CONTROL}`) timed against the original in the same rounds, "
                      f"block medians before, between and after the searches {_joined(medians)} (standard deviation "
                      f"{sd:.4f}, added to the A/A sigma in quadrature): {_verdict(drift)}"]
        if w.get("a_b_int8_ratios"):
            medians, sd = _block_drift(w["a_b_int8_ratios"])
            lines += ["", f"The int8 A/B control (`{INT8_CONTROL}` against the original, timed right after each "
                      f"float one), block medians: {_joined(medians)} (standard deviation {sd:.4f}; not in the verdict, "
                      "which the float model's drift widens)"]
        apart = w.get("built_apart") or {}
        if apart:
            lines += ["", "Specs that built a different model in each run (a pass chose by timing), not compared: "
                      + "; ".join(f"`{s}` {r['one_worker']:.3f} / {r['two_workers']:.3f}" for s, r in apart.items())]
        lines.append("")
    for z in data.get("zoo") or []:
        if "common_share" in z:
            lines += [f"## Zoo: {z['model']} (random weights, synthetic scenes; metric: centred output cosine on "
                      f"{zoo_scenes.HELD_BACK} held-back scenes)", "",
                      f"The part of the original's outputs common to every scene: {100 * z['common_share']:.1f}%, "
                      "taken out of both sides before the cosine.", ""]
        else:  # a run from before 2026-12-07, kept while its section is not rerun on that CPU
            lines += [f"## Zoo: {z['model']} (random weights; metric: plain output cosine on white noise, a run "
                      "from before the centred cosine, blind to what the input decides)", ""]
        lines += [f"search: {z['search_seconds']:.0f} s. Front (latency, cosine, spec):", ""]
        lines += [f"- {lat:.3f}, {cos:.4f}, `{spec}`" for lat, cos, spec in sorted(z["front"])]
        lines += ["", "uniform `fold-bn,prune:ratio=r` timed side by side: " + ", ".join(
            f"{lat:.3f}x cos {cos:.4f}" for lat, cos in z["uniform"])]
        if z["reaches_half"]:
            lat, cos, spec = z["best_at_half"]
            there = z["uniform_cosine_there"]
            lines.append(f"front reaches 0.5x: yes ({lat:.3f}x, cosine {cos:.4f}; uniform at that latency: "
                         + (f"{there:.4f})" if there is not None else "no uniform point that fast)"))
        else:
            lines.append("front reaches 0.5x: NO")
        lines.append("")
    for d in data.get("drift") or []:
        low, high = d["original_ms_range"]
        lines += [f"## Drift: {d['model']}", "", f"{d['rounds']} rounds over {d['seconds']:.0f} s in one process, "
                  "without Ray; each round times the pruned model's ratio to the original, then the int8 model's, "
                  "as a trial times a candidate, with the original against itself beside each (the A/A: the one beside "
                  f"the pruned model). The original took {low:.2f} to {high:.2f} ms a run. Lag 1: the correlation of "
                  f"each round's ratio with the next round's, within about ±{2 / np.sqrt(d['rounds']):.2f} of 0 for "
                  "independent timings. The original's time: as its A/A session measured it.", "",
                  "| model | mean ratio | standard deviation | range | lag-1 autocorrelation | "
                  "correlation with the original's time |", "|---|---|---|---|---|---|"]
        for kind, r in d["kinds"].items():
            label = f"{kind} (`{r['spec']}`)" if r["spec"] else "A/A (the original against itself)"
            lines.append(f"| {label} | {r['mean']:.4f} | {r['sd']:.4f} | {r['low']:.4f}-{r['high']:.4f} | "
                         f"{r['lag1']:+.2f} | " + (f"{r['with_original_ms']:+.2f} |" if r["with_original_ms"] is not None
                                                   else "- |"))
        lines.append("")
    lines += ["", f"Took {data['seconds']:.0f} s (the sections rerun this time)."]
    return "\n".join(lines)


def _rerun(data: dict, section: str, names: Sequence[str], known: tuple[str, ...],
           run: Callable[[str, bool], dict], quick: bool) -> None:
    """Run `names` of `section` again; its other models keep their last results; in `known`'s order."""
    data[section] = [r for r in data.get(section) or [] if r["model"] not in names and r["model"] in known]
    for name in names:
        print(f"[search] {section}: {name}", file=sys.stderr, flush=True)
        data[section].append(run(name, quick))
    data[section].sort(key=lambda r: known.index(r["model"]))


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    only = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("--only=")), list(SECTIONS))
    started = time.perf_counter()
    data = {"machine": machine(), **{section: [] for section in SECTIONS}}
    kind = data["machine"].get("cpu_kind", "cpu")
    earlier = results_dir(quick) / f"search-{kind}.json"
    picked = {section: next((a.split("=", 1)[1].split(",") for a in argv if a.startswith(f"--{section}=")), None)
              for section in ("workers", "zoo", "drift")}
    for section, known in (("workers", WORKERS), ("zoo", ZOO), ("drift", WORKERS)):
        unknown = [n for n in picked[section] or [] if n not in known]
        if unknown:
            raise SystemExit(f"--{section}={','.join(unknown)}: choose from {', '.join(known)}")
    # the sections (and the models of a section) not rerun keep their last results
    if (len(only) < len(SECTIONS) or any(picked.values())) and earlier.exists():
        data |= {k: v for k, v in json.loads(earlier.read_text()).items() if k in SECTIONS}
    if "digits" in only:
        data["digits"] = []
        for name in DIGITS[:1] if quick else DIGITS:
            print(f"[search] {name}", file=sys.stderr, flush=True)
            data["digits"].append(digits_run(name, quick))
    # --workers=, --zoo=, --drift=NAME[,NAME]: rerun those models only, keep the others' last results
    if "workers" in only:
        _rerun(data, "workers", picked["workers"] or (("digits_resnet",) if quick else WORKERS), WORKERS, workers_run, quick)
    if "zoo" in only:
        _rerun(data, "zoo", () if quick else picked["zoo"] or ZOO, ZOO, zoo_run, quick)
    if "drift" in only:
        _rerun(data, "drift", picked["drift"] or (("digits_resnet",) if quick else WORKERS), WORKERS, drift_run, quick)
    data["seconds"] = time.perf_counter() - started
    write(f"search-{kind}", data, markdown, quick)
    return data


if __name__ == "__main__":
    main()
