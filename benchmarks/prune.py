"""prune: structured filter pruning, measured against what it claims.

A. VGG-16-BN (CIFAR head, 32x32) pruned 50% by `fold-bn,prune:ratio=0.5` against the same
   architecture built directly at half width (`vgg16_bn-half`, fold-bn): the Conv/Gemm weight shapes
   must be identical, and then the latency must be too. Timed side by side (half width as the
   reference, pruned, original, half width again as the A/A control).
B. Recovery (least-squares refit on the 256 calibration samples of digits_calib.npz) against no
   recovery (the same data-ranked channels removed, nothing refit; and l1 ranking without any data)
   and against onnxsim's structured pruning, on the trained digits ResNet and MobileNetV2 at 30%,
   and at the parameter count onnxsim's result has (our ratio found by bisection on
   parameters: onnxsim prunes only the layers it can match, so the same nominal ratio removes a
   different amount). Fidelity and accuracy on the 360 held-out test samples, never the calibration
   ones; latency side by side against the original with an A/A row. One more row prunes with the
   other rounding of widths than the pass's default (see round_specs): widths that are not
   multiples of onnxruntime's NCHWc block drop Convs out of its blocked x86 kernels, which can make
   a pruned model slower than the original.
C. Top-1 accuracy on the digits test split at 20/30/50% with recovery (and without, for scale), on
   the three digits models (RepVGG through `fold-bn,reparam,prune`), plus criterion=l1 (the default
   with calibration data is data-driven importance) and global ranking at 30% on one model.
D. Latency-aware ratios: `prune:target-latency=0.6` on the zoo ResNet-50 and MobileNetV2 (224x224,
   seeded random weights, calibrated on synthetic scenes: data-driven importance and recovery, as a
   user with data runs it): the pass's own predicted and measured ratios, then an independent
   side-by-side run of original, target-latency model, and the uniform-ratio models closest to its
   latency on either side (ratios found by a few interleaved measurements; widths rounded, because
   unrounded a uniform cut leaves NCHWc and may never get that fast; the closest ratio unrounded is
   timed too), with fidelity the centred output cosine on held-back scenes: at equal latency, which
   plan kept more of what the input decides? (Uncalibrated, no cut kept any of it: centred cosines
   within 0.05 of 0 for every cut of either model on x86-vnni, where the plain cosine on white noise
   said 0.44 to 0.90.)

Everything runs with one intra-op thread and ORT_ENABLE_ALL. Layer timings of the latency planner
come from its cache ($ONNXOPT_CACHE_DIR, default ~/.cache/onnxopt) when there; the JSON says whether
they did. `--quick`: smaller budgets, 30% only in C, MobileNetV2 only in D; results/quick/.
Run: `python -m benchmarks.prune [--quick]`.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnxopt import models
from onnxopt.analysis.cost import model_stats
from onnxopt.data.feeds import FeedSet
from onnxopt.data.files import load_feeds
from onnxopt.errors import one_line
from onnxopt.measure.sidebyside import Settings, Subject, run_bench
from onnxopt.measure.timing import interleave, session_runner
from onnxopt.pipeline.run import Pipeline
from onnxopt.runtime.fidelity import centred_cosine, compare
from onnxopt.runtime.fidelity import top1 as accuracy
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model

from . import peer_tools
from .common import machine, write
from . import scenes as zoo_scenes

THREADS = 1  # 2 threads on this shared 2-core machine measured too noisy (A/A off by 4%)
AA = "(A/A control)"
CALIB = models.FIXTURES / "digits_calib.npz"
TEST = models.FIXTURES / "digits_test.npz"
PARAMS_TOLERANCE = 0.02       # B: our parameter count within 2% of onnxsim's
LATENCY_TARGET = 0.6          # D
LATENCY_TOLERANCE = 0.1       # D: the goal is target ± 10% of it (0.54..0.66)
HALF_WIDTH_GOAL = 0.05        # A: pruned within 5% of the half-width model's latency
SAME_LATENCY = 0.03           # D: a uniform model counts as equally fast within 3%


def log(text: str) -> None:
    print(f"[prune] {text}", file=sys.stderr, flush=True)


# -- pure helpers (tests/test_bench_prune.py) --------------------------------------------------------

def weight_shapes(model: onnx.ModelProto) -> list[tuple[str, tuple[int, ...]]]:
    """(op, weight dims) of every Conv/Gemm/MatMul with an initializer weight, in graph order: the
    structure a pruned model must share with one built at that width."""
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [(n.op_type, dims[n.input[1]]) for n in model.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in dims]


def bisect(f: Callable[[float], float], target: float, lo: float, hi: float, *, rel_tol: float,
           steps: int, decreasing: bool = True) -> tuple[float, float, list[tuple[float, float]]]:
    """x in [lo, hi] with f(x) within rel_tol of target, f monotone (decreasing by default); at most
    `steps` evaluations. Returns the best x tried, its value and every (x, f(x)) tried."""
    tried: list[tuple[float, float]] = []
    for _ in range(steps):
        x = (lo + hi) / 2
        y = f(x)
        tried.append((x, y))
        if abs(y - target) <= rel_tol * abs(target):
            break
        if (y > target) == decreasing:
            lo = x
        else:
            hi = x
    x, y = min(tried, key=lambda p: abs(p[1] - target))
    return x, y, tried


def next_ratio(points: Sequence[tuple[float, float]], lo: float = 0.0, hi: float = 0.9) -> float:
    """The next pruning ratio to try when looking for g(r) = 0, g decreasing in r (g = latency of
    the candidate / latency of the model to match - 1), from the points (r, g) measured so far:
    safeguarded regula falsi inside the tightest bracket, else a secant step outwards from the
    outermost point (at most 0.25, and only along a decreasing slope; 0.1 otherwise)."""
    above = sorted(p for p in points if p[1] > 0)  # still too slow: prune more
    below = sorted(p for p in points if p[1] <= 0)
    if above and below:
        a, b = above[-1], below[0]
        if b[0] > a[0]:
            x = a[0] + (b[0] - a[0]) * a[1] / (a[1] - b[1])
            margin = 0.1 * (b[0] - a[0])
            return float(min(max(x, a[0] + margin), b[0] - margin))
        return float((a[0] + b[0]) / 2)  # not monotone (noise): between the two
    outer = above[-2:] if above else below[:2]
    edge = outer[-1] if above else outer[0]
    (x0, y0), (x1, y1) = outer if len(outer) == 2 else (edge, edge)
    if x1 != x0 and (y1 - y0) / (x1 - x0) < 0:
        x = edge[0] - edge[1] * (x1 - x0) / (y1 - y0)
    else:
        x = edge[0] + (0.1 if above else -0.1)
    x = min(max(x, edge[0] + 0.01), edge[0] + 0.25) if above else max(min(x, edge[0] - 0.01), edge[0] - 0.25)
    return float(min(max(x, lo), hi))


def ratio_from_latency(latency_ratio: float) -> float:
    """First guess of the uniform ratio giving a latency ratio: a Conv between two pruned layers
    loses (1 - r)^2 of its work."""
    return 1 - math.sqrt(min(max(latency_ratio, 0.0), 1.0))


def within(value: float, target: float, rel: float) -> bool:
    return abs(value - target) <= rel * target


def bracket(points: Sequence[tuple[float, float]]) -> list[float]:
    """The ratios of the measured uniform models closest in latency on either side of the model to
    match (g = latency ratio - 1: the slower one with the smallest g > 0, the faster one with the
    largest g <= 0), in increasing order; one ratio when every point lies on one side. With a
    round-to, latency is a step function of the ratio and no ratio may match exactly: a model on
    each side shows what the comparison of fidelity depends on."""
    slower = [p for p in points if p[1] > 0]
    faster = [p for p in points if p[1] <= 0]
    out = []
    if slower:
        out.append(min(slower, key=lambda p: p[1])[0])
    if faster:
        out.append(max(faster, key=lambda p: p[1])[0])
    return sorted(set(out))


def verdict(cosine: float, uniforms: Sequence[tuple[float, float]]) -> dict:
    """Is the target-latency model (its cosine vs the original) more faithful than the uniform models
    (each: latency relative to it, cosine)? Conclusive only against one that is no faster (within
    SAME_LATENCY): a faster uniform model has removed more."""
    as_slow = [(lat, cos) for lat, cos in uniforms if lat >= 1 - SAME_LATENCY]
    return {"better_than_all": all(cosine > cos for _, cos in uniforms),
            "better_than_as_slow": all(cosine > cos for _, cos in as_slow) if as_slow else None,
            "as_slow_compared": len(as_slow),
            "uniform_cosine_at_equal_latency": at_equal_latency(uniforms)}


def at_equal_latency(uniforms: Sequence[tuple[float, float]]) -> float | None:
    """The cosine a uniform cut would have at exactly the target-latency model's latency: linear
    between the closest slower and the closest faster uniform model (rounded widths make latency a
    step function of the ratio, so none lands on it); None without a model on each side."""
    slower = [u for u in uniforms if u[0] >= 1]
    faster = [u for u in uniforms if u[0] < 1]
    if not slower or not faster:
        return None
    (l1, c1), (l0, c0) = min(slower), max(faster)
    return c0 + (c1 - c0) * (1 - l0) / (l1 - l0)


# -- rounding of widths ----------------------------------------------------------------------------
# Widths that are not multiples of onnxruntime's NCHWc block (8 or 16: onnxopt.runtime.nchwc_block asks) take Convs
# out of its blocked x86 kernels: a pruned model can then be slower than the original. The pass's
# round-to option rounds kept widths; the suite times the pass's default and the other choice, so
# that it reads the same whichever default the pass has.

def default_round_to() -> str:
    """The prune pass's default round-to, as a spec would write it ('auto' resolves per CPU)."""
    from onnxopt.passes.prune import Prune

    return str(Prune.Options().round_to)


def round_specs() -> tuple[str, str]:
    """Spec suffixes (rounded, unrounded): the default where it already is one of them; else 8 for
    rounded (onnxruntime's smallest NCHWc block) and 1 for unrounded."""
    rounded = default_round_to() != "1"
    return ("" if rounded else ",round-to=8"), (",round-to=1" if rounded else "")


def described(suffix: str) -> str:
    """How a table names the rounding a spec suffix asks for."""
    return suffix.lstrip(",") or f"round-to={default_round_to()} (default)"


# -- running onnxopt and the bench ----------------------------------------------------------------

class PassFailed(RuntimeError):
    pass


def optimize(model: onnx.ModelProto, spec: str, calibration: FeedSet | None = None, *, verify: bool = True,
             progress: Callable[[str, int, int], None] | None = None,
             unchanged_ok: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Run `spec` (verification on unless told); the model and what the run says. A pass that did
    not apply raises PassFailed (a table must never show an unpruned model as pruned), except a
    prune that found nothing to remove when `unchanged_ok` (the row then says so)."""
    kwargs = {"progress": progress} if progress else {}
    t0 = time.perf_counter()
    run = Pipeline.parse(spec, calibration=calibration, verify=verify, threads=THREADS, **kwargs).run(model)
    seconds = time.perf_counter() - t0
    passes = []
    info: dict = {"spec": spec, "seconds": seconds, "passes": passes}
    for p in run.report.passes:
        passes.append({"name": p.name, "status": p.status, "seconds": p.seconds, "stats": p.stats,
                       "notes": p.notes, "message": p.message})
        if p.name == "prune":
            groups = p.details.get("groups", [])
            info["groups"] = {"candidates": len(groups), "pruned": sum(g["kept"] < g["channels"] for g in groups),
                              "channels": sum(g["channels"] for g in groups), "kept": sum(g["kept"] for g in groups)}
            info["frozen_groups"] = len(p.details.get("frozen", []))
            info["criterion"] = p.details.get("criterion")
            info["round_to"] = p.details.get("round_to")  # as resolved (auto: per CPU)
            if "latency" in p.details:
                info["latency"] = p.details["latency"]
        if p.name == "prune":
            info["prune_status"] = p.status
        if p.status not in ("applied", "unchanged") or (
                p.name == "prune" and p.status != "applied" and not (unchanged_ok and p.status == "unchanged")):
            raise PassFailed(f"{spec}: {p.name} {p.status}" + (f": {p.message}" if p.message else "")
                             + (f" ({'; '.join(p.notes)})" if p.notes else ""))
    return run.model, info


def size(model: onnx.ModelProto) -> dict:
    """Parameters and MACs at batch 1 (the digits models leave the batch dynamic)."""
    s = model_stats(model, resolve_input_shapes(model))
    return {"params": s.params, "macs": s.macs}


def bench_rows(rows: Sequence[tuple[str, onnx.ModelProto]], settings: Settings, data=None, what: str = "") -> dict:
    """run_bench over `rows` (the first is the reference): per label, the numbers the tables show."""
    subjects = [Subject(label, m, m.SerializeToString()) for label, m in rows]
    last = [""]

    def progress(step: str, done: int, total: int) -> None:
        if step != last[0]:
            last[0] = step
            log(f"  {what}: {step}")

    report = run_bench(subjects, settings, data=data, progress=progress)
    out = {}
    for e in report.entries:
        d = e.as_dict(report.reference)
        t = next(iter(d["latency"].values()))
        f = d["fidelity_vs_reference"] or {}
        out[e.name] = {"params": d["params"], "macs": d["macs"], "nodes": d["nodes"], "file_bytes": d["file_bytes"],
                       "median_ms": t["median_ms"], "p90_ms": t["p90_ms"], "rounds": t["rounds"],
                       "ratio_of_medians": t["ratio_of_medians"], "median_round_ratio": t["median_round_ratio"],
                       "interval": t["median_round_ratio_interval"], "cosine": f.get("cosine"),
                       "max_abs": f.get("max_abs"), "top1_agreement": f.get("top1_agreement"),
                       "accuracy": d["accuracy"]}
    meta = report.as_dict()
    meta.pop("models")
    meta.pop("machine")
    return {"settings": meta, "rows": out}


def digits(name: str) -> tuple[onnx.ModelProto, FeedSet]:
    model = onnx.load(models.fixture_path(name))
    return model, load_feeds(CALIB, model)


def outputs_on(model: onnx.ModelProto, test: FeedSet) -> list[dict]:
    return run_model(model, [test.arrays], optimization="all", threads=THREADS)


# -- A: pruned 50% vs built at half width ----------------------------------------------------------

def section_a(quick: bool) -> dict:
    log("A: vgg16_bn pruned 50% vs vgg16_bn-half")
    original, half = models.build("vgg16_bn"), models.build("vgg16_bn-half")
    pruned, info = optimize(original, "fold-bn,prune:ratio=0.5")
    half_folded, _ = optimize(half, "fold-bn")
    original_folded, _ = optimize(original, "fold-bn")
    same = weight_shapes(pruned) == weight_shapes(half_folded)
    log(f"  same weight shapes as the half-width model: {same}; pruning took {info['seconds']:.1f} s")
    settings = Settings(threads=THREADS, budget_seconds=4.0 if quick else 18.0, rounds=20000, session_sets=3,
                        warmup=5, memory=False)
    labels = ["half width (built)", "pruned 50%", "original", f"half width {AA}"]
    bench = bench_rows(list(zip(labels, (half_folded, pruned, original_folded, half_folded))), settings,
                       what="vgg16_bn")
    rows = bench["rows"]
    ratio = rows["pruned 50%"]["ratio_of_medians"]
    return {"model": "vgg16_bn", "reference": "vgg16_bn-half", "spec": info["spec"], "prune": info,
            "same_weight_shapes": same, "shapes": {"pruned": weight_shapes(pruned), "half": weight_shapes(half_folded)},
            "labels": labels, "bench": bench,
            "pruned_vs_half": {"ratio_of_medians": ratio,
                               "median_round_ratio": rows["pruned 50%"]["median_round_ratio"],
                               "interval": rows["pruned 50%"]["interval"],
                               "within_goal": within(ratio, 1.0, HALF_WIDTH_GOAL)},
            "speedup_vs_original": rows["original"]["median_ms"] / rows["pruned 50%"]["median_ms"]}


# -- B: recovery vs none vs onnxsim ----------------------------------------------------------------

B_MODELS = ("digits_resnet", "digits_mobilenetv2")
B_RATIO = 0.3


def section_b_model(name: str, quick: bool) -> dict:
    log(f"B: {name}")
    model, calib = digits(name)
    variants: list[tuple[str, onnx.ModelProto, dict]] = []
    spec = f"fold-bn,prune:ratio={B_RATIO}"
    # without calibration data: l1 filter norms (the default criterion=auto), nothing refit
    m0, i0 = optimize(model, spec)
    variants.append((f"onnxopt {B_RATIO:.0%}, l1, no data", m0, i0))
    # with it, auto means data-driven importance: the same channels as the recovered row, not refit
    m1, i1 = optimize(model, spec + ",recover=false", calibration=calib)
    variants.append((f"onnxopt {B_RATIO:.0%}, data importance, no recovery", m1, i1))
    m2, i2 = optimize(model, spec, calibration=calib)
    variants.append((f"onnxopt {B_RATIO:.0%} + recovery", m2, i2))
    log(f"  recovery at {B_RATIO:.0%}: {i2['seconds']:.1f} s")
    # the same with the other choice of rounding (see round_specs): what the widths cost in latency
    rounded, unrounded = round_specs()
    other = unrounded if not rounded else rounded
    m2r, i2r = optimize(model, spec + other, calibration=calib)
    variants.append((f"onnxopt {B_RATIO:.0%} + recovery, {other.lstrip(',')}", m2r, i2r))
    t0 = time.perf_counter()
    m3 = peer_tools.onnxsim_prune(model, sparsity=B_RATIO)
    i3 = {"spec": f"onnxopt fold-bn,cleanup; onnxsim.apply_structured_pruning(sparsity={B_RATIO}, "
                  "importance_norm='l1')", "seconds": time.perf_counter() - t0}
    variants.append((f"onnxsim {B_RATIO:.0%}", m3, i3))
    goal = size(m3)["params"]
    # rounded widths move the parameter count in steps: where the default rounding cannot come within
    # the tolerance of onnxsim's count, the search runs again without rounding
    searches = {}
    for suffix in dict.fromkeys(("", ",round-to=1")):
        def params_at(r: float, suffix=suffix) -> float:
            pruned = optimize(model, f"fold-bn,prune:ratio={r:.4f},recover=false{suffix}", verify=False)[0]
            return size(pruned)["params"]

        r, got, tried = bisect(params_at, goal, 0.0, 0.9, rel_tol=PARAMS_TOLERANCE, steps=14)
        searches[suffix] = {"ratio": r, "params": got, "steps": [list(p) for p in tried]}
        log(f"  onnxsim's parameter count {goal:,}: ratio {r:.4f}{suffix} gives {got:,.0f} ({len(tried)} steps)")
        if within(got, goal, PARAMS_TOLERANCE):
            break
    suffix = next((k for k, v in searches.items() if within(v["params"], goal, PARAMS_TOLERANCE)), "")
    r, got = searches[suffix]["ratio"], searches[suffix]["params"]
    m4, i4 = optimize(model, f"fold-bn,prune:ratio={r:.4f}{suffix}", calibration=calib)
    i4["bisection"] = {"target_params": goal, "searches": searches, "used": suffix}
    variants.append((f"onnxopt {r:.1%}{suffix.replace(',', ', ')} + recovery (onnxsim's params)", m4, i4))
    settings = Settings(threads=THREADS, budget_seconds=1.0 if quick else 15.0, rounds=20000, session_sets=6,
                        warmup=5, memory=False)
    rows = [("original", model), (f"original {AA}", model)] + [(label, m) for label, m, _ in variants]
    bench = bench_rows(rows, settings, data=TEST, what=name)
    return {"model": name, "calibration": f"{CALIB.name}: {calib.samples} training samples",
            "test": f"{TEST.name}: {bench['settings']['labelled_samples']} held-out samples",
            "labels": [label for label, _ in rows], "runs": {label: info for label, _, info in variants},
            "bench": bench, "matched_params": {"onnxsim": goal, "onnxopt": got, "ratio": r, "spec": i4["spec"]}}


# -- C: accuracy at modest ratios ------------------------------------------------------------------

C_MODELS = ("digits_resnet", "digits_mobilenetv2", "digits_repvgg")
C_VARIANT_MODEL = "digits_resnet"


def section_c(quick: bool) -> dict:
    ratios = (0.3,) if quick else (0.2, 0.3, 0.5)
    out = {"ratios": list(ratios), "models": []}
    for name in C_MODELS:
        log(f"C: {name}")
        model, calib = digits(name)
        test = load_feeds(TEST, model)
        reference = outputs_on(model, test)
        prefix = "fold-bn,reparam," if name == "digits_repvgg" else "fold-bn,"
        entry = {"model": name, "before": {**size(model), "accuracy": accuracy(reference, test.labels)}, "rows": []}
        # the pass's default widths and the other rounding (see round_specs): on these narrow nets
        # (16..128 channels) rounding to 16 removes less than the ratio asks, or nothing
        rounded, unrounded = round_specs()
        other = unrounded if not rounded else rounded
        specs = [(f"{prefix}prune:ratio={r}{suffix}", r) for r in ratios for suffix in ("", other)]
        if name == C_VARIANT_MODEL:
            # the default importance with calibration data is criterion=data (auto): the filter norm
            # of Li et al. and a global ranking are the variants
            specs += [(f"{prefix}prune:ratio=0.3,criterion=l1", 0.3), (f"{prefix}prune:ratio=0.3,global=true", 0.3)]
        for spec, r in specs:
            row: dict = {"spec": spec, "ratio": r}
            try:
                # the same calibration data, the same channels removed: only the refit differs
                plain, _ = optimize(model, spec + ",recover=false", calibration=calib, unchanged_ok=True)
                row["no_recovery"] = {"accuracy": accuracy(outputs_on(plain, test), test.labels)}
                pruned, info = optimize(model, spec, calibration=calib, unchanged_ok=True)
                outputs = outputs_on(pruned, test)
                groups = info.get("groups") or {}
                row.update(size(pruned), accuracy=accuracy(outputs, test.labels), criterion=info.get("criterion"),
                           cosine=compare(reference, outputs).cosine, seconds=info["seconds"], groups=groups,
                           round_to=info.get("round_to"), status=info.get("prune_status"),
                           channels_removed=1 - groups["kept"] / groups["channels"] if groups.get("channels") else 0.0)
                log(f"  {spec}: accuracy {row['accuracy']:.1%} (no recovery {row['no_recovery']['accuracy']:.1%}), "
                    f"{info['seconds']:.1f} s")
            except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                row["error"] = one_line(exc, 300)
                log(f"  {spec}: FAILED {row['error']}")
            entry["rows"].append(row)
        out["models"].append(entry)
    return out


# -- D: latency-aware ratios -----------------------------------------------------------------------

def latency_vs(model: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict, budget: float, seed: int) -> float:
    """Median per-round latency ratio candidate / model, interleaved in one process."""
    runners = [("model", session_runner(model, feed, threads=THREADS)),
               ("candidate", session_runner(candidate, feed, threads=THREADS))]
    timings = interleave(runners, warmup=3, rounds=400, budget_seconds=budget, seed=seed)
    return timings[1].median_round_ratio


def centred_fidelity(reference: onnx.ModelProto, subjects: Sequence[tuple[str, onnx.ModelProto]]) -> tuple[dict, float]:
    """Each subject's centred output cosine with `reference` on the held-back synthetic scenes, and
    the share of the reference's outputs common to every scene. On the seeded random inputs the
    timings use, these random-weight models answer nearly one vector whatever the input, and a plain
    cosine cannot tell a cut that kept what the input decides from one that did not (benchmarks/scenes.py)."""
    held = zoo_scenes.held_back(reference)
    reference_runs = run_model(reference, held, optimization="all")
    cosines = {label: float(centred_cosine(reference_runs, run_model(model, held, optimization="all")))
               for label, model in subjects}
    return cosines, zoo_scenes.common_share(reference_runs)


def section_d_model(name: str, quick: bool) -> dict:
    log(f"D: {name}, target latency {LATENCY_TARGET}")
    original = models.build(name)
    folded, _ = optimize(original, "fold-bn")
    calib = zoo_scenes.calibration(original)
    last = [""]

    def progress(what: str, done: int, total: int) -> None:
        if what.startswith("prune:") and (what != last[0] or done == total):
            log(f"  {what} {done}/{total}")
            last[0] = what

    target, info = optimize(original, f"fold-bn,prune:target-latency={LATENCY_TARGET}", calib, progress=progress)
    lat = info["latency"]
    log(f"  target-latency pass: {info['seconds']:.0f} s, predicted {lat['chosen']['predicted']:.3f}, measured "
        f"{lat['chosen']['measured']:.3f}; {lat['layers_measured_now']} layer timings measured now")
    # the uniform ratio whose model runs as fast as the target-latency one: g(r) = uniform / target - 1
    feed = random_feeds(original, resolve_input_shapes(original), seed=0)[0]
    budget = 1.5 if quick else 4.0
    prior = lat["chosen"]["measured"]
    points: list[tuple[float, float]] = []
    search = []
    r = round(ratio_from_latency(prior), 4)
    rounded, unrounded = round_specs()
    for step in range(3 if quick else 4):
        candidate, _ = optimize(original, f"fold-bn,prune:ratio={r}{rounded}", calib, verify=False)
        g = latency_vs(target, candidate, feed, budget, seed=step) - 1
        points.append((r, g))
        search.append({"ratio": r, "latency_vs_target_model": 1 + g})
        log(f"  uniform ratio {r:.3f} ({described(rounded)}): latency {1 + g:.3f} x the target-latency model's")
        if abs(g) <= 0.01:
            break
        r = round(next_ratio(points + [(0.0, 1 / prior - 1)]), 4)
    chosen = bracket(points)
    best = min(points, key=lambda p: abs(p[1]))[0]
    runs = {f"target-latency {LATENCY_TARGET}": info}
    subjects = [("original (fold-bn)", folded), (f"target-latency {LATENCY_TARGET}", target)]
    for ratio in chosen:
        m, i = optimize(original, f"fold-bn,prune:ratio={ratio}{rounded}", calib)  # verified this time
        subjects.append((f"uniform {ratio:.3f}", m))
        runs[subjects[-1][0]] = i
    m, i = optimize(original, f"fold-bn,prune:ratio={best}{unrounded}", calib)
    subjects.append((f"uniform {best:.3f}, {described(unrounded)}", m))
    runs[subjects[-1][0]] = i
    subjects.append((f"original {AA}", folded))
    settings = Settings(threads=THREADS, budget_seconds=4.0 if quick else 30.0, rounds=20000, session_sets=3,
                        warmup=5, memory=False, samples=8)
    bench = bench_rows(subjects, settings, what=name)
    labels = [label for label, _ in subjects]
    centred, common = centred_fidelity(folded, subjects)
    rows = bench["rows"]
    t = rows[labels[1]]
    measured = t["ratio_of_medians"]
    compared = [{"label": label, "ratio": ratio, "latency_vs_target_model": rows[label]["ratio_of_medians"] / measured,
                 "centred_cosine": centred[label], "cosine": rows[label]["cosine"], "spec": runs[label]["spec"],
                 "round_to": runs[label].get("round_to"), "groups": runs[label].get("groups")}
                for ratio, label in zip(chosen, labels[2:2 + len(chosen)])]
    return {"model": name, "labels": labels, "target": LATENCY_TARGET, "pass": info, "latency": lat,
            "layer_timings_from_cache": lat["layers_measured_now"] == 0,
            "uniform_search": {"prior_point": [0.0, 1 / prior - 1], "steps": search, "rounding": described(rounded)},
            "uniform": compared, "runs": runs, "bench": bench, "measured_ratio": measured,
            "within_goal": within(measured, LATENCY_TARGET, LATENCY_TOLERANCE),
            "size": {"original": size(folded), "target": size(target)},
            "centred_cosine": centred, "common_share": common,
            "verdict": verdict(centred[labels[1]],
                               [(u["latency_vs_target_model"], u["centred_cosine"]) for u in compared])}


def guarded(what: str, fn: Callable[[], dict], **known) -> dict:
    """Run one model's section; its failure becomes a row, not the end of the suite."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        error = one_line(exc, 300)
        log(f"{what}: FAILED {error}")
        return {**known, "error": error}


# -- Markdown --------------------------------------------------------------------------------------

def _macs(macs: int | None) -> str:
    if macs is None:
        return "-"
    return f"{macs / 1e9:.2f} G" if macs >= 1e9 else f"{macs / 1e6:.1f} M"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _cos(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _widths(round_to) -> str:
    return "-" if round_to is None else f"x{round_to}"


def _interval(iv) -> str:
    return f"[{iv[0]:.3f}, {iv[1]:.3f}]"


def markdown_a(a: dict) -> list[str]:
    lines = ["## A. VGG-16-BN pruned 50% vs built at half width", ""]
    if "error" in a:
        return lines + [f"Failed: {a['error']}", ""]
    b = a["bench"]
    s = b["settings"]["settings"]
    lines += [f"`{a['spec']}` on vgg16_bn (32x32 input, random weights) against `fold-bn` of vgg16_bn-half. "
              f"Same Conv/Gemm weight shapes: **{'yes' if a['same_weight_shapes'] else 'NO'}**. "
              f"Timed side by side: {s['session_sets']} session sets, {s['budget_seconds_per_batch']:g} s, "
              "reference = the half-width model.", "",
              "| variant | params | MACs | median ms | ratio of medians | median round ratio | 95% interval | rounds |",
              "|---|---:|---:|---:|---:|---:|---|---:|"]
    for label in a["labels"]:
        r = b["rows"][label]
        lines.append(f"| {label} | {r['params']:,} | {_macs(r['macs'])} | {r['median_ms']:.3f} | "
                     f"{r['ratio_of_medians']:.3f} | {r['median_round_ratio']:.3f} | {_interval(r['interval'])} | "
                     f"{r['rounds']} |")
    p = a["pruned_vs_half"]
    lines += ["", f"Pruned / half width: **{p['ratio_of_medians']:.3f}** (ratio of medians; median round ratio "
              f"{p['median_round_ratio']:.3f}, interval {_interval(p['interval'])}): "
              f"{'within' if p['within_goal'] else 'OUTSIDE'} the ±{HALF_WIDTH_GOAL:.0%} goal. Speed-up of the "
              f"pruned model over the original: **{a['speedup_vs_original']:.2f}x**. Pruning took "
              f"{a['prune']['seconds']:.1f} s.", ""]
    return lines


def markdown_b(b: list[dict], data_round: str) -> list[str]:
    lines = ["## B. Recovery vs no recovery vs onnxsim (digits, 30%)", "",
             "Trained digits models (train-time form with BN). Calibration data: the 256 training samples "
             "of digits_calib.npz (with it, the default criterion=auto ranks channels by their output energy on "
             "that data, and recovery refits the layers reading pruned channels; without it, l1 filter norms as "
             "onnxsim uses); cosine, top-1 agreement and accuracy are on the 360 held-out samples of "
             "digits_test.npz. The last onnxopt row prunes at the ratio whose parameter count matches "
             "onnxsim's (bisection, within 2%; without rounding where rounded widths cannot get that close). "
             "Latency: ratio of medians against the original, side by side. Widths: the multiple kept widths "
             "are rounded to (the pass's default is round-to=" + data_round + "); channel counts that are "
             "not multiples of onnxruntime's NCHWc block (8 here; onnxopt asks onnxruntime for it) take Convs out of its "
             "blocked kernels, which the row with the other rounding shows.", ""]
    for m in b:
        lines += [f"### {m['model']}", ""]
        if "error" in m:
            lines += [f"Failed: {m['error']}", ""]
            continue
        rows = m["bench"]["rows"]
        lines += ["| variant | widths | params | MACs | cosine vs original | top-1 agreement | accuracy | "
                  "latency ratio | median round ratio | optimizer time |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label in m["labels"]:
            r = rows[label]
            run = m["runs"].get(label)
            took = f"{run['seconds']:.1f} s" if run else "-"
            widths = _widths(run.get("round_to") if run else None)
            lines.append(f"| {label} | {widths} | {r['params']:,} | {_macs(r['macs'])} | {_cos(r['cosine'])} | "
                         f"{_pct(r['top1_agreement'])} | {_pct(r['accuracy'])} | {r['ratio_of_medians']:.3f} | "
                         f"{r['median_round_ratio']:.3f} | {took} |")
        mp = m["matched_params"]
        lines += ["", f"onnxsim's parameter count {mp['onnxsim']:,}; onnxopt `{mp['spec']}`: "
                  f"{mp['onnxopt']:,.0f} ({mp['onnxopt'] / mp['onnxsim'] - 1:+.1%}).", ""]
    return lines


def markdown_c(c: dict) -> list[str]:
    lines = ["## C. Accuracy with recovery at modest ratios (digits test split)", "",
             "Top-1 accuracy on the 360 held-out samples before and after `fold-bn,prune:ratio=R` (RepVGG: "
             "`fold-bn,reparam,prune:ratio=R`) with the 256 calibration samples as calibration data: the "
             "importance criterion is `auto` (data-driven with calibration data) unless the spec names one, "
             "and the layers reading pruned channels are refit. Without recovery: the same spec and data with "
             "`recover=false` (the same channels removed, nothing refit). Each ratio with the pass's default "
             "rounding of widths and with the other one: rounded to a multiple of "
             f"{max((r.get('round_to') or 1) for m in c['models'] for r in m['rows'])}, these "
             "narrow nets lose fewer channels than the ratio asks (removed = the share of prunable channels "
             "actually removed), or none.", "",
             "| model | spec | criterion | widths | removed | params before → after | MACs before → after | "
             "accuracy before | after (recovery) | without recovery | cosine vs original | pass time |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in c["models"]:
        before = m["before"]
        for r in m["rows"]:
            if "error" in r:
                lines.append(f"| {m['model']} | `{r['spec']}` | failed: {r['error']} | | | | | | | | | |")
                continue
            lines.append(f"| {m['model']} | `{r['spec']}` | {r['criterion']} | {_widths(r['round_to'])} | "
                         f"{r['channels_removed']:.0%} | {before['params']:,} → {r['params']:,} | "
                         f"{_macs(before['macs'])} → {_macs(r['macs'])} | {_pct(before['accuracy'])} | "
                         f"**{_pct(r['accuracy'])}** | {_pct(r['no_recovery']['accuracy'])} | {_cos(r['cosine'])} | "
                         f"{r['seconds']:.1f} s |")
    return lines + [""]


def markdown_d(d: list[dict]) -> list[str]:
    lines = [f"## D. Latency-aware ratios: target-latency={LATENCY_TARGET}", "",
             f"Zoo models at 224x224 with seeded random weights, every cut calibrated on {zoo_scenes.CALIBRATION} "
             "synthetic scenes (data-driven importance, least-squares recovery). The pass plans "
             "from per-layer timings and corrects its plan by measuring the pruned model (its attempts below); "
             "then an independent side-by-side run against the original (fold-bn) with the uniform-ratio "
             "models closest to its latency on either side (widths rounded, so latency is a step function of "
             "the ratio; unrounded, the odd widths leave onnxruntime's NCHWc kernels and a uniform cut can be "
             "slower than the original: the closest ratio is timed that way too) and an A/A "
             f"row. Fidelity: the centred output cosine vs the original on {zoo_scenes.HELD_BACK} synthetic scenes "
             "(benchmarks/scenes.py: each output less the original's mean over the scenes, the part common to "
             "every input, before the cosine), which the verdict compares; beside it the plain cosine on 8 seeded "
             "random inputs, which cannot tell: on white noise these random-weight models answer nearly one "
             f"vector whatever the input. Goal: measured {LATENCY_TARGET} ± {LATENCY_TOLERANCE:.0%} "
             f"({LATENCY_TARGET * (1 - LATENCY_TOLERANCE):.2f}..{LATENCY_TARGET * (1 + LATENCY_TOLERANCE):.2f}).", ""]
    for m in d:
        lines += [f"### {m['model']}", ""]
        if "error" in m:
            lines += [f"Failed: {m['error']}", ""]
            continue
        lat = m["latency"]
        attempts = "; ".join(f"aim {a['aim']:.3f} → predicted {a['predicted']:.3f}, measured {a['measured']:.3f}"
                             for a in lat["attempts"])
        lines += [f"The pass ({m['pass']['seconds']:.0f} s; {lat['timed_layers']} layers, "
                  f"{lat['layers_measured_now']} layer timings measured now"
                  f"{' — all from the cache' if m['layer_timings_from_cache'] else ''}; timed layers sum to "
                  f"{lat['layers_share_of_model']:.2f} of the model's time): {attempts}; chosen: predicted "
                  f"{lat['chosen']['predicted']:.3f}, measured {lat['chosen']['measured']:.3f}.", "",
                  f"Uniform ratio search, {m['uniform_search']['rounding']} (latency of the uniform model / the "
                  "target-latency model's): "
                  + ", ".join(f"r={s['ratio']:.3f}: {s['latency_vs_target_model']:.3f}"
                              for s in m["uniform_search"]["steps"])
                  + ".", "",
                  "| variant | widths | params | MACs | median ms | ratio of medians | median round ratio | "
                  "95% interval | centred cosine (scenes) | cosine (random inputs) | top-1 agreement |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for label in m["labels"]:
            r = m["bench"]["rows"][label]
            run = m["runs"].get(label)
            widths = _widths(run.get("round_to") if run else None)
            lines.append(f"| {label} | {widths} | {r['params']:,} | {_macs(r['macs'])} | {r['median_ms']:.3f} | "
                         f"{r['ratio_of_medians']:.3f} | {r['median_round_ratio']:.3f} | {_interval(r['interval'])} | "
                         f"{_cos(m['centred_cosine'][label])} | {_cos(r['cosine'])} | {_pct(r['top1_agreement'])} |")
        v = m["verdict"]
        others = "; ".join(f"{u['label']}: {u['latency_vs_target_model']:.3f}x its latency, centred cosine "
                           f"{_cos(u['centred_cosine'])}" for u in m["uniform"])
        equal = at_equal_latency([(u["latency_vs_target_model"], u["centred_cosine"]) for u in m["uniform"]])
        cos_t = m["centred_cosine"][m["labels"][1]]
        if equal is not None:
            say = (f"at equal latency (linear between the two uniform models) a uniform cut would have centred cosine "
                   f"{equal:.4f}: the target-latency plan is " + ("**more faithful**" if cos_t > equal else
                                                                  "**NOT more faithful**"))
        elif v["better_than_as_slow"] is None:
            say = ("every uniform model compared is faster than it (not like-for-like): "
                   + ("it is more faithful than all of them" if v["better_than_all"] else "not more faithful than all"))
        else:
            say = ("more faithful than the uniform cut that is as fast or slower" if v["better_than_as_slow"] else
                   "NOT more faithful than a uniform cut that is as fast or slower")
        lines += ["", f"Target-latency model measured at **{m['measured_ratio']:.3f}** of the original: "
                  f"{'within' if m['within_goal'] else 'OUTSIDE'} the goal. Centred cosine {_cos(cos_t)} (the part "
                  f"common to every scene: {100 * m['common_share']:.1f}% of the original's outputs); "
                  f"{others}: {say}.", ""]
    return lines


def markdown(data: dict) -> str:
    mach = data["machine"]
    lines = ["# prune: structured filter pruning", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores (shared); onnxruntime {mach['onnxruntime']}; "
             f"{THREADS} intra-op thread, ORT_ENABLE_ALL, batch 1. Latency: interleaved rounds in one process over "
             "several sets of sessions, medians; the interval is the 95% interval of the median per-round "
             "ratio. A row marked (A/A control) is the reference timed against itself: the noise floor. "
             "Params and MACs as onnxopt counts them. onnxsim " + data["onnxsim"] + ".", ""]
    lines += (markdown_a(data["a"]) + markdown_b(data["b"], data["prune_round_to_default"]) + markdown_c(data["c"])
              + markdown_d(data["d"]))
    lines.append("Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in data["section_seconds"].items())
                 + f"; suite {data['wall_seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    quick = "--quick" in (argv or [])
    start = time.perf_counter()
    peer_tools.warm_imports()
    seconds = {}

    def timed(key: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        value = fn()
        seconds[key] = time.perf_counter() - t0
        log(f"{key} done in {seconds[key]:.0f} s")
        return value

    a = timed("A", lambda: guarded("A", lambda: section_a(quick), model="vgg16_bn"))
    b = timed("B", lambda: [guarded(f"B {n}", lambda n=n: section_b_model(n, quick), model=n) for n in B_MODELS])
    c = timed("C", lambda: section_c(quick))
    d_models = ("mobilenetv2",) if quick else ("resnet50", "mobilenetv2")
    d = timed("D", lambda: [guarded(f"D {n}", lambda n=n: section_d_model(n, quick), model=n) for n in d_models])
    from importlib import metadata
    try:
        onnxsim_version = metadata.version("onnxsim")
    except metadata.PackageNotFoundError:
        onnxsim_version = "not installed"
    data = {"machine": machine(), "threads": THREADS, "ort_optimization": "all", "quick": quick,
            "onnxsim": onnxsim_version, "prune_round_to_default": default_round_to(),
            "a": a, "b": b, "c": c, "d": d, "section_seconds": seconds,
            "wall_seconds": time.perf_counter() - start}
    write("prune", data, markdown(data), quick=quick)
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
