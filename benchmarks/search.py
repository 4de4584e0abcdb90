"""onnxopt search against the fixed recipes, and its scaling over workers.

digits: each bundled digits model searched with `--eval` on 360 training images that are neither
the calibration samples (the first 256 of the balanced training order) nor digits_test.npz, budget
one point, 24 trials, 2 workers. The chosen model and the README's fixed recipes (fold-bn,reparam;
fold-bn,prune:ratio=0.3; fold-bn,quantize; fold-bn,prune:ratio=0.3,quantize), each built from the
same calibration data, are then timed side by side in one process (onnxopt.measure.sidebyside: 1
thread, interleaved rounds, two session sets, an A/A control) with their top-1 on digits_test.npz.
The question: is the chosen model within one point on the test split, and faster than every recipe
that is?

workers: one 16-trial search with 1 worker, then with 2, on this 2-core machine, of the digits
ResNet (cheap builds: timing, which has the node alone, is most of a trial) and of a full-size
ResNet-18 with random weights (agreement with the original on held-back random inputs; builds
dominate): the wall-time ratio, and the latency ratios of the specs both runs measured against the
A/A noise of their trial timings.

zoo: full-size MobileNetV2 and ResNet-50 with random weights, searched for output cosine with the
original; does the front reach 0.5x the original's latency, and is its cosine there above uniform
pruning's at the same latency?

Run: `python -m benchmarks search [--quick]` (needs `pip install -e ".[search]"`).
"""
from __future__ import annotations

import sys
import tempfile
import time

import onnx

from onnxopt import models
from onnxopt.data.feeds import FeedSet
from onnxopt.data.files import load_feeds
from onnxopt.measure.sidebyside import Settings, Subject, run_bench
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import parse_spec
from onnxopt.search import search

from .common import machine, write

DIGITS = ("digits_resnet", "digits_mobilenetv2", "digits_mobilenet", "digits_repvgg")
RECIPES = ("fold-bn,reparam", "fold-bn,prune:ratio=0.3", "fold-bn,quantize", "fold-bn,prune:ratio=0.3,quantize")
TEST = models.FIXTURES / "digits_test.npz"
CALIB = models.FIXTURES / "digits_calib.npz"


def validation() -> FeedSet:
    """360 labelled training images disjoint from the calibration set and from the test split."""
    from onnxopt.models import digits
    images, labels = digits.load("train")
    order = digits.balanced_order(labels)[digits.CALIBRATION_SAMPLES:digits.CALIBRATION_SAMPLES + 360]
    return FeedSet({"input": images[order]}, 1, labels[order], "digits train[256:616] (balanced order)")


def _top1(bench_entry) -> float | None:
    return bench_entry.accuracy


def digits_run(name: str, quick: bool) -> dict:
    model = onnx.load(str(models.fixture_path(name)))
    calib = load_feeds(CALIB, model)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = search(model, calib, evaluation=validation(), max_drop=0.01, trials=8 if quick else 24, workers=2,
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
    within = {k: v for k, v in rows.items() if k in RECIPES and v["drop"] is not None and v["drop"] <= 0.01 + 1e-9}
    chosen = rows.get("search")
    return {"model": name, "search_seconds": seconds, "spec": result.spec,
            "validation_drop": next((t.drop for t in result.trials if t.spec == result.spec), None),
            "trials": len(result.trials), "failed": sum(t.state == "failed" for t in result.trials),
            "front": [t.as_dict() for t in result.front], "rows": rows,
            "chosen_within_one_point": bool(chosen and chosen["drop"] <= 0.01 + 1e-9),
            "faster_than_every_recipe_within": bool(chosen and all(chosen["ratio"] < v["ratio"] for v in within.values())),
            "recipes_within": sorted(within)}


def workers_run(name: str, quick: bool) -> dict:
    """One search of `name` with 1 worker, then with 2: wall times, and the specs both measured."""
    if name.startswith("digits"):
        model = onnx.load(str(models.fixture_path(name)))
        calib, evaluation = load_feeds(CALIB, model), validation()
    else:  # a zoo model (random weights): agreement with the original on held-back random inputs
        from onnxopt.data.files import random_calibration
        model = models.build(name, seed=0)
        calib, evaluation = random_calibration(model, samples=40), None
    runs = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            result = search(model, calib, evaluation=evaluation, max_drop=0.01, trials=6 if quick else 16,
                            workers=workers, storage=f"sqlite:///{tmp}/study.db", timing_budget=1.0 if quick else 2.0)
            runs[workers] = {"seconds": time.perf_counter() - started, "control": result.report["control"],
                             "ratios": {t.spec: t.latency_ratio for t in result.trials if t.state == "complete"},
                             "trial_seconds": sum(t.seconds or 0 for t in result.trials)}
    common = sorted(set(runs[1]["ratios"]) & set(runs[2]["ratios"]))
    noise = max(abs(runs[w]["control"]["control_ratio"] - 1) for w in (1, 2))
    agree = {s: {"one_worker": runs[1]["ratios"][s], "two_workers": runs[2]["ratios"][s],
                 "difference": abs(runs[1]["ratios"][s] - runs[2]["ratios"][s])} for s in common}
    return {"model": name, "wall_ratio": runs[2]["seconds"] / runs[1]["seconds"], "runs": runs, "a_a_noise": noise,
            "common_specs": agree}


def zoo_run(name: str, quick: bool) -> dict:
    """A full-size zoo model (random weights) searched for output cosine with the original on 8
    held-back random inputs: does the front reach 0.5x the original's latency, and with what cosine
    against uniform pruning at the same latency (`fold-bn,prune:ratio=r` for r in 0.3..0.7, timed
    side by side, interpolated)?"""
    from onnxopt.data.files import random_calibration
    from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
    model = models.build(name, seed=0)
    shapes = resolve_input_shapes(model)
    held = random_feeds(model, shapes, seed=7, count=8)
    reference = run_model(model, held, optimization="all")

    def cosine(candidate):  # self-contained: Ray ships it to the workers by value
        from onnxopt.runtime.fidelity import compare as _compare
        from onnxopt.runtime.sessions import run_model as _run
        return float(_compare(reference, _run(candidate, held, optimization="all")).cosine)
    calib = random_calibration(model, samples=48)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = search(model, calib, metric=cosine, max_drop=0.5, trials=6 if quick else 16, workers=2,
                        storage=f"sqlite:///{tmp}/study.db", timing_budget=2.0)
    seconds = time.perf_counter() - started
    subjects = [Subject("original", model, model.SerializeToString())]
    uniform = {}
    for r in (0.3, 0.4, 0.5, 0.6, 0.7):
        built = Pipeline(parse_spec(f"fold-bn,prune:ratio={r}"), calibration=calib, threads=1).run(model).model
        subjects.append(Subject(f"uniform {r}", built, built.SerializeToString()))
        uniform[r] = cosine(built)
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
    return {"model": name, "search_seconds": seconds, "front": front, "uniform": points,
            "reaches_half": best is not None, "best_at_half": best, "uniform_cosine_there": at}


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = ["# onnxopt search", "", f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}. "
             "Latency: ratio to the original, median of per-round ratios, 1 thread, side by side in one process; "
             "top-1 on digits_test.npz (360).", ""]
    for d in data["digits"]:
        lines += [f"## {d['model']}", "", f"chosen: `{d['spec']}` (validation drop {100 * (d['validation_drop'] or 0):.2f} "
                  f"points; {d['trials']} trials, {d['failed']} failed, {d['search_seconds']:.0f} s)", "",
                  "| model | latency / original | 95% interval | test top-1 | drop (points) |", "|---|---|---|---|---|"]
        for name, r in d["rows"].items():
            lines.append(f"| {name} | {r['ratio']:.3f} | {r['interval'][0]:.3f}-{r['interval'][1]:.3f} | "
                         f"{100 * (r['test_top1'] or 0):.2f}% | {100 * (r['drop'] or 0):.2f} |")
        lines += ["", f"within one point on test: {'yes' if d['chosen_within_one_point'] else 'NO'}; faster than every "
                  f"recipe within one point ({', '.join(d['recipes_within']) or 'none'}): "
                  f"{'yes' if d['faster_than_every_recipe_within'] else 'NO'}", ""]
    for w in data.get("workers") or []:
        runs = {int(k): v for k, v in w["runs"].items()}  # JSON keys are strings
        lines += [f"## Workers: {w['model']}", "", f"16-trial search: 2 workers took {w['wall_ratio']:.2f}x the wall "
                  f"time of 1 ({runs[2]['seconds']:.0f} s vs {runs[1]['seconds']:.0f} s). A/A control of a "
                  f"trial ratio: off by {w['a_a_noise']:.3f} (the larger of the two runs').", "",
                  "| spec | 1 worker | 2 workers | difference |", "|---|---|---|---|"]
        for spec, r in w["common_specs"].items():
            lines.append(f"| `{spec}` | {r['one_worker']:.3f} | {r['two_workers']:.3f} | {r['difference']:.3f} |")
        lines.append("")
    for z in data.get("zoo") or []:
        lines += [f"## Zoo: {z['model']} (random weights; metric: output cosine on 8 held-back inputs)", "",
                  f"search: {z['search_seconds']:.0f} s. Front (latency, cosine, spec):", ""]
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
    lines += ["", f"Took {data['seconds']:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    started = time.perf_counter()
    data = {"machine": machine(), "digits": [], "workers": None}
    for name in DIGITS[:1] if quick else DIGITS:
        print(f"[search] {name}", file=sys.stderr, flush=True)
        data["digits"].append(digits_run(name, quick))
    data["workers"] = []
    for name in ("digits_resnet",) if quick else ("digits_resnet", "resnet18"):
        print(f"[search] workers: {name}", file=sys.stderr, flush=True)
        data["workers"].append(workers_run(name, quick))
    data["zoo"] = []
    for name in () if quick else ("mobilenetv2", "resnet50"):
        print(f"[search] zoo: {name}", file=sys.stderr, flush=True)
        data["zoo"].append(zoo_run(name, quick))
    data["seconds"] = time.perf_counter() - started
    kind = data["machine"].get("cpu_kind", "cpu")
    write(f"search-{kind}", data, markdown(data), quick)
    return data


if __name__ == "__main__":
    main()
