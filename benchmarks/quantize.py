"""quantize: static int8 QDQ, measured against what it claims and against onnxruntime's quantizer.

A. Zoo ResNet-18, ResNet-50, MobileNetV2, RepVGG-A0 (after reparam) and VGG-16-BN (32x32), seeded
   random weights: INT8/FP32 latency (ratio of medians, interleaved, 1 and 2 intra-op threads) of
   onnxopt `fold-bn,quantize` with its defaults (RepVGG: `fold-bn,reparam,quantize`) and with
   speed=false (int8 everywhere: the default keeps float what is not faster on this CPU) next to
   onnxruntime's quantize_static U8S8 per-channel (after quant_pre_process) and with its defaults,
   all three calibrated on the same 16 seeded random inputs (seed 100) and given the same float
   model (fold-bn, RepVGG also reparam: the FP32 reference is that model too). Fidelity against
   FP32 on 8 other seeded inputs (seed 1: cosine, max abs error, top-1 agreement); the fusion
   audit's float islands (ops onnxruntime still runs in float between Q/DQ) of each. The FP32 model
   timed twice is the A/A control (the noise floor) of every model and thread setting.
B. Digits (trained, real data): top-1 accuracy on the 360 held-out samples of digits_test.npz of
   FP32, onnxopt quantize (speed=false: the int8 model whatever this CPU's speed) and ORT U8S8, calibrated on the 256 training samples of digits_calib.npz,
   for the digits models; and for the depthwise ones the options meant for such networks: cle,
   bias-correction, both, max-drop (digits_mobilenetv2, Relu6, also every range method;
   digits_mobilenet has plain ReLU, which CLE can equalize across). A variant that raises is a row
   saying so ("n/a (error)"), not the end of the suite.
C. Calibration memory: peak RSS of a fresh process per point running the pass on MobileNetV2
   (224x224) fed by a generator of random inputs (nothing accumulates on the caller's side) at 32,
   128 and 512 calibration samples, and onnxruntime's quantize_static (MinMax calibrator) at 32 and
   512 for comparison.
D. MobileNetV2, where onnxruntime's U8S8 already fuses every op: onnxopt variants (per-tensor
   weights, int8 activations, a clipping range method) timed in the same interleaved run as A's
   MobileNetV2 rows, to see whether any gets further than ORT's best. Reported as measured.

Full mode: about 3.8 minutes on the shared 2-core machine (A+D ~2.3, B ~0.5, C ~1.0), estimated.
`--quick`: the zoo's -tiny models (32x32) and tiny budgets in A/D, three of the B variants, 8 and
32 samples in C; results/quick/. Run: `python -m benchmarks.quantize [--quick]`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx

from onnxopt import models
from onnxopt.analysis.fusion import audit
from onnxopt.data.files import load_feeds
from onnxopt.errors import one_line
from onnxopt.measure.sidebyside import Settings, Subject, run_bench
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import parse_spec
from onnxopt.runtime.fidelity import compare, top1
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model

from . import peer_tools
from .common import machine, write

THREADS = (1, 2)
FP32 = "FP32"
AA = "FP32 (A/A control)"
ONNXOPT = "onnxopt quantize"
ONNXOPT_ALL = "onnxopt quantize speed=false"  # int8 everywhere: the default keeps float what is not faster here
ORT_U8S8 = "ORT U8S8 per-channel"
ORT_DEFAULT = "ORT default"
AA_TOLERANCE = 0.03
ZOO = ("resnet18", "resnet50", "mobilenetv2", "repvgg_a0", "vgg16_bn")
CALIB_SAMPLES = 16
CALIB_SEED = 100          # run_bench draws its timing input from seed 0 and its fidelity inputs from seed 1
FIDELITY_SAMPLES = 8
FIDELITY_THREADS = 2      # fidelity does not depend on the threads: measured once, in the faster run
DIGITS = ("digits_resnet", "digits_mobilenetv2", "digits_mobilenet", "digits_repvgg")
CALIB = models.FIXTURES / "digits_calib.npz"
TEST = models.FIXTURES / "digits_test.npz"
B_VARIANTS = (("defaults (method=minmax)", ""), ("cle=true", "cle=true"),
              ("bias-correction=true", "bias-correction=true"),
              ("cle=true, bias-correction=true", "cle=true,bias-correction=true"),
              ("max-drop=0.005", "max-drop=0.005"),
              ("method=mean-minmax", "method=mean-minmax"), ("method=mse", "method=mse"),
              ("method=percentile", "method=percentile"), ("method=entropy", "method=entropy"))
B_VARIANTS_QUICK = (B_VARIANTS[0], B_VARIANTS[3], B_VARIANTS[6])  # every code path, a third of the time
# the depthwise models: MobileNetV2 (Relu6 between its convs: not scale-invariant, so CLE can pair few
# layers) gets every option and range method; digits_mobilenet (plain ReLU, CLE pairs every layer) the
# options meant for depthwise networks
# per-tensor weights are where Nagel et al. show CLE and bias correction at work (per-channel scales
# already absorb most of what CLE equalizes)
PER_TENSOR_VARIANTS = (("per-channel=false", "per-channel=false"),
                       ("per-channel=false, cle=true", "per-channel=false,cle=true"),
                       ("per-channel=false, bias-correction=true", "per-channel=false,bias-correction=true"),
                       ("per-channel=false, cle=true, bias-correction=true",
                        "per-channel=false,cle=true,bias-correction=true"))
B_VARIANTS_BY_MODEL = {"digits_mobilenetv2": B_VARIANTS + PER_TENSOR_VARIANTS,
                       "digits_mobilenet": B_VARIANTS[:5] + PER_TENSOR_VARIANTS}
MIN_FLOOR = 0.02          # D: no difference below 2% counts as faster, whatever the A/A control says
C_MODEL = "mobilenetv2"
C_POINTS = {"onnxopt": (32, 128, 512), "onnxruntime": (32, 512)}
C_POINTS_QUICK = {"onnxopt": (8, 32), "onnxruntime": (8, 32)}
C_FLAT_MB_PER_100 = 2.0   # C: "does not grow" = at most this many MB per 100 more samples between the last two points
D_MODEL = "mobilenetv2"
SAME_GRAPH = "method=percentile"  # D: changes only the scales, not the graph, of the default
D_VARIANTS = (("per-channel=false", "per-channel=false"), ("activations=int8", "activations=int8"),
              ("method=percentile", "method=percentile"))


def log(text: str) -> None:
    print(f"[quantize] {text}", file=sys.stderr, flush=True)


# -- pure helpers (tests/test_bench_quantize.py) -----------------------------------------------------

def float_spec(name: str) -> str:
    """The float model every quantizer of a model starts from (RepVGG: reparameterized)."""
    return "fold-bn,reparam" if "repvgg" in name else "fold-bn"


def quantize_spec(name: str, options: str = "") -> str:
    """`float_spec` then quantize with `options` ("k=v,k=v"; "" = the pass's defaults)."""
    return f"{float_spec(name)},quantize" + (f":{options}" if options else "")


def na(error: str | None) -> str:
    """How a table shows a row that could not be measured."""
    return f"n/a ({error})"


def feed_stream(model: onnx.ModelProto, count: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """`count` seeded random normal feeds, made one at a time: a one-shot generator, so that the
    data itself never accumulates on the caller's side (section C)."""
    shapes = resolve_input_shapes(model)
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def growth(points: Sequence[dict]) -> dict:
    """From measured points ({"samples", "added_mb"}, ordered by samples): the growth of the memory
    a run adds from the first to the last point and over the last segment, in MB per 100 more
    samples. Flat when the last segment grows at most C_FLAT_MB_PER_100 (a buffer bounded by a
    sample count, like the bias-correction reserve, saturates before it; unbounded growth does not)."""
    ok = [p for p in points if p.get("added_mb") is not None]
    if len(ok) < 2:
        return {"first_to_last_mb": None, "last_segment_mb_per_100": None, "flat": None}
    a, b = ok[-2], ok[-1]
    slope = (b["added_mb"] - a["added_mb"]) / (b["samples"] - a["samples"]) * 100
    return {"first_to_last_mb": ok[-1]["added_mb"] - ok[0]["added_mb"], "last_segment_mb_per_100": slope,
            "flat": slope <= C_FLAT_MB_PER_100}


def best_row(rows: dict[str, dict], labels: Iterable[str]) -> str | None:
    """The fastest of `labels` measured in `rows` (by median per-round ratio), None if none was."""
    present = [label for label in labels if label in rows]
    return min(present, key=lambda label: rows[label]["median_round_ratio"]) if present else None


def beats(candidate: dict, other: dict, aa: dict, floor: float = 0.0) -> bool:
    """Is `candidate` faster than `other` beyond the noise? Its ratio of medians and median per-round
    ratio must both be lower by more than the noise floor (the largest of the A/A control's distance
    from 1, `floor` and MIN_FLOOR), and the 95% interval of its per-round ratio must lie below the
    other's median."""
    floor = max(abs(aa["ratio_of_medians"] - 1), abs(aa["median_round_ratio"] - 1), floor, MIN_FLOOR)
    return (candidate["ratio_of_medians"] < other["ratio_of_medians"] * (1 - floor)
            and candidate["median_round_ratio"] < other["median_round_ratio"] * (1 - floor)
            and candidate["interval"][1] < other["median_round_ratio"])


def same_graph_floor(rows: dict[str, dict], a: str, b: str) -> float | None:
    """How far apart two int8 models with the same graph (only their scales differ) timed: a noise
    floor between int8 models, where the FP32 A/A control only shows one between float ones. None
    when either is missing or their graphs differ in size."""
    if a not in rows or b not in rows or rows[a]["nodes"] != rows[b]["nodes"]:
        return None
    return max(abs(rows[b]["ratio_of_medians"] / rows[a]["ratio_of_medians"] - 1),
               abs(rows[b]["median_round_ratio"] / rows[a]["median_round_ratio"] - 1))


# -- running the quantizers ----------------------------------------------------------------------

class QuantizeFailed(RuntimeError):
    pass


def float_model(original: onnx.ModelProto, name: str) -> onnx.ModelProto:
    run = Pipeline(parse_spec(float_spec(name))).run(original)
    bad = [p for p in run.report.passes if p.status not in ("applied", "unchanged")]
    if bad:
        raise QuantizeFailed(f"{float_spec(name)}: {bad[0].name} {bad[0].status}: {bad[0].message}")
    return run.model


def fusion(model: onnx.ModelProto) -> dict:
    """The fusion audit in the numbers the tables show."""
    found = audit(model)
    return {"float_islands": len(found.islands), "islands": [str(i) for i in found.islands],
            "integer_ops": sum(found.integer_ops.values()), "integer_op_counts": found.integer_ops,
            "quantize_linear": found.quantize, "dequantize_linear": found.dequantize}


def run_onnxopt(model: onnx.ModelProto, spec: str, calibration) -> tuple[onnx.ModelProto, dict]:
    """`Pipeline(parse_spec(spec), calibration=...)` as the brief of the pass has it (verification on).
    A quantize that did not apply raises QuantizeFailed: a table must never show a float model as
    quantized. The one exception is said in the record: `stayed_float`, the pass timed int8 against
    float on this CPU and kept the float model, as it does by default when int8 does not pay."""
    t0 = time.perf_counter()
    run = Pipeline(parse_spec(spec), calibration=calibration).run(model)
    seconds = time.perf_counter() - t0
    info: dict = {"spec": spec, "seconds": seconds}
    for p in run.report.passes:
        if p.name == "quantize" and p.status == "unchanged" and (p.details.get("speed") or {}).get("pays") is False:
            info.update(stayed_float=True, notes=list(p.notes), speed=p.details["speed"])  # int8 does not pay here
            continue
        if p.status not in ("applied", "unchanged") or (p.name == "quantize" and p.status != "applied"):
            raise QuantizeFailed(f"{p.name} {p.status}" + (f": {p.message}" if p.message else "")
                                 + (f" ({'; '.join(p.notes)})" if p.notes and p.status != "applied" else ""))
        if p.name == "quantize":
            info.update(pass_seconds=p.seconds, notes=list(p.notes), stats=dict(p.stats),
                        calibration=p.details.get("calibration"), held_back=p.details.get("held_back"),
                        kept_float=len(p.details.get("kept_float") or {}), speed=p.details.get("speed"))
    return run.model, info


def attempt(label: str, fn: Callable[[], tuple[onnx.ModelProto, dict]]) -> dict:
    """One quantizer's result, or what went wrong, as a variant record."""
    peer_tools.take_notes()
    t0 = time.perf_counter()
    try:
        model, info = fn()
    except Exception as exc:  # noqa: BLE001 - a quantizer failing is a row, not the end of the suite
        error = one_line(exc, 240)
        log(f"  {label}: FAILED {error}")
        return {"label": label, "status": "failed", "error": error, "seconds": time.perf_counter() - t0}
    info.setdefault("seconds", time.perf_counter() - t0)
    notes = peer_tools.take_notes()
    if notes:
        info["tool_notes"] = notes
    try:
        info["fusion"] = fusion(model)
    except Exception as exc:  # noqa: BLE001
        info["fusion"] = {"error": one_line(exc, 240)}
    islands = info["fusion"].get("float_islands", "?")
    log(f"  {label}: {info['seconds']:.1f} s, {islands} float islands")
    return {"label": label, "status": "ok", "model": model, **info}


def ort(job: Callable, model: onnx.ModelProto, calib: list[dict]) -> Callable[[], tuple[onnx.ModelProto, dict]]:
    def go() -> tuple[onnx.ModelProto, dict]:
        t0 = time.perf_counter()
        result = job(model, calib)
        return result, {"seconds": time.perf_counter() - t0}

    return go


def bench_rows(subjects: Sequence[tuple[str, onnx.ModelProto]], settings: Settings, data=None, what: str = "") -> dict:
    """run_bench over `subjects` (the first is the reference): per label, the numbers the tables show."""
    last = [""]

    def progress(step: str, done: int, total: int) -> None:
        if step != last[0]:
            last[0] = step
            log(f"  {what}: {step}")

    report = run_bench([Subject(label, m, m.SerializeToString()) for label, m in subjects], settings, data=data,
                       progress=progress)
    rows = {}
    for e in report.entries:
        d = e.as_dict(report.reference)
        t = next(iter(d["latency"].values()))
        f = d["fidelity_vs_reference"] or {}
        rows[e.name] = {"params": d["params"], "file_bytes": d["file_bytes"], "nodes": d["nodes"],
                        "median_ms": t["median_ms"], "p90_ms": t["p90_ms"], "rounds": t["rounds"],
                        "ratio_of_medians": t["ratio_of_medians"], "median_round_ratio": t["median_round_ratio"],
                        "interval": t["median_round_ratio_interval"], "cosine": f.get("cosine"),
                        "max_abs": f.get("max_abs"), "top1_agreement": f.get("top1_agreement"),
                        "accuracy": d["accuracy"]}
    meta = report.as_dict()
    meta.pop("models")
    meta.pop("machine")
    return {"settings": meta, "rows": rows}


def public(variant: dict) -> dict:
    """A variant record without its model (for the JSON)."""
    return {k: v for k, v in variant.items() if k != "model"}


# -- A (and D): zoo latency, fidelity, float islands ----------------------------------------------

def budgets(name: str, quick: bool) -> dict[int, float]:
    """Seconds of interleaved timing per thread setting: ResNet-50 (~75 ms per FP32 inference at one
    thread) and MobileNetV2 (A's and D's rows share one run) get more."""
    if quick:
        return {1: 0.6, 2: 0.4}
    if name in ("resnet50", D_MODEL):
        return {1: 8.0, 2: 5.0}
    return {1: 5.0, 2: 3.5}


def section_a_model(name: str, quick: bool) -> dict:
    built = f"{name}-tiny" if quick else name
    log(f"A: {built}")
    original = models.build(built, seed=0)
    reference = float_model(original, name)
    shapes = resolve_input_shapes(original)
    calib = random_feeds(original, shapes, seed=CALIB_SEED, count=CALIB_SAMPLES)
    variants = [attempt(ONNXOPT, lambda: run_onnxopt(original, quantize_spec(name), calib)),
                attempt(ONNXOPT_ALL, lambda: run_onnxopt(original, quantize_spec(name, "speed=false"), calib)),
                attempt(ORT_U8S8, ort(peer_tools.ort_quantize_u8s8, reference, calib)),
                attempt(ORT_DEFAULT, ort(peer_tools.ort_quantize_default, reference, calib))]
    if name == D_MODEL:
        for label, options in D_VARIANTS:
            variants.append(attempt(f"onnxopt {label}",
                                    lambda o=options: run_onnxopt(original, quantize_spec(name, o), calib)))
    subjects = [(FP32, reference), (AA, reference)] + [(v["label"], v["model"]) for v in variants
                                                      if v["status"] == "ok"]
    bench = {}
    for threads in THREADS:
        settings = Settings(threads=threads, budget_seconds=budgets(name, quick)[threads], rounds=20000,
                            session_sets=1 if quick else 2, warmup=2, memory=False,
                            samples=(4 if quick else FIDELITY_SAMPLES) if threads == FIDELITY_THREADS else 1)
        bench[str(threads)] = bench_rows(subjects, settings, what=f"{built}, {threads} thread(s)")
        rows = bench[str(threads)]["rows"]
        log(f"  {threads} thread(s): " + ", ".join(f"{label} {rows[label]['ratio_of_medians']:.3f}"
                                                   for label, _ in subjects[1:]))
    first = bench[str(FIDELITY_THREADS)]
    fidelity = {label: {k: first["rows"][label][k] for k in ("cosine", "max_abs", "top1_agreement")}
                for label, _ in subjects[1:]}
    return {"model": built, "float_spec": float_spec(name), "input": {k: list(v) for k, v in shapes.items()},
            "calibration": f"{CALIB_SAMPLES} seeded random normal inputs (seed {CALIB_SEED})",
            "fidelity_inputs": f"{first['settings']['fidelity_samples']} seeded random normal inputs (seed 1)",
            "labels": [label for label, _ in subjects], "variants": [public(v) for v in variants],
            "bench": bench, "fidelity": fidelity,
            "aa_control": {t: {k: bench[t]["rows"][AA][k] for k in ("ratio_of_medians", "median_round_ratio")}
                           for t in bench}}


def section_d(a_models: list[dict]) -> dict:
    """D's verdict from A's MobileNetV2 run: the fastest onnxopt row against ORT's fastest."""
    m = next((m for m in a_models if m.get("model", "").startswith(D_MODEL) and "bench" in m), None)
    if m is None:
        return {"error": "A's MobileNetV2 run failed"}
    ours = [v["label"] for v in m["variants"] if v["label"].startswith("onnxopt")]
    theirs = [ORT_U8S8, ORT_DEFAULT]
    out = {"model": m["model"], "variants": ours, "threads": {}}
    for t, b in m["bench"].items():
        rows = b["rows"]
        mine, best = best_row(rows, ours), best_row(rows, theirs)
        twin = same_graph_floor(rows, ONNXOPT, f"onnxopt {SAME_GRAPH}")
        if mine is None or best is None:
            out["threads"][t] = {"ours": mine, "theirs": best, "wins": None}
            continue
        out["threads"][t] = {"ours": mine, "theirs": best, "ours_ratio": rows[mine]["ratio_of_medians"],
                             "theirs_ratio": rows[best]["ratio_of_medians"],
                             "ours_round_ratio": rows[mine]["median_round_ratio"],
                             "theirs_round_ratio": rows[best]["median_round_ratio"],
                             "same_graph_control": twin,
                             "wins": beats(rows[mine], rows[best], rows[AA], twin or 0.0)}
    return out


# -- B: digits accuracy ----------------------------------------------------------------------------

def section_b_model(name: str, variants: Sequence[tuple[str, str]]) -> dict:
    log(f"B: {name}")
    original = onnx.load(models.fixture_path(name))
    calib = load_feeds(CALIB, original)
    test = load_feeds(TEST, original)
    reference = float_model(original, name)
    ref_out = run_model(reference, [test.arrays], optimization="all")
    rows = [{"label": FP32, "status": "ok", "accuracy": top1(ref_out, test.labels), "spec": float_spec(name)}]
    jobs = [(f"{ONNXOPT} {label}" if options else ONNXOPT,
             lambda o=options: run_onnxopt(original, quantize_spec(name, accuracy_options(o)), calib))
            for label, options in variants]
    jobs.insert(1, (ORT_U8S8, ort(peer_tools.ort_quantize_u8s8, reference, list(calib))))
    for label, fn in jobs:
        v = attempt(label, fn)
        if v["status"] == "ok":
            try:
                out = run_model(v.pop("model"), [test.arrays], optimization="all")
                fid = compare(ref_out, out)
                v.update(accuracy=top1(out, test.labels), cosine=fid.cosine, max_abs=fid.max_abs,
                         top1_agreement=fid.top1_agreement)
                log(f"    accuracy {v['accuracy']:.1%}, cosine {fid.cosine:.5f}")
            except Exception as exc:  # noqa: BLE001
                v.update(status="failed", error=f"cannot be measured: {one_line(exc, 240)}")
        rows.append(public(v))
    return {"model": name, "calibration": f"{CALIB.name}: {calib.samples} training samples",
            "test": f"{TEST.name}: {test.samples} held-out samples", "rows": rows}


def accuracy_options(options: str) -> str:
    """B measures what each option does to int8 accuracy: int8 everywhere (speed=false), so that a CPU
    where the default keeps a model float still shows the int8 model (quantize_cpu has the defaults)."""
    return ",".join(filter(None, ("speed=false", options)))


def b_variants(name: str, quick: bool) -> tuple[tuple[str, str], ...]:
    """The onnxopt rows of a digits model in B (the first: the pass's defaults)."""
    full = B_VARIANTS_BY_MODEL.get(name, B_VARIANTS[:1])
    return tuple(v for v in full if v in B_VARIANTS_QUICK) if quick else full


def section_b(quick: bool) -> dict:
    out = []
    for name in DIGITS:
        variants = b_variants(name, quick)
        try:
            out.append(section_b_model(name, variants))
        except Exception as exc:  # noqa: BLE001
            log(f"B {name}: FAILED {one_line(exc, 240)}")
            out.append({"model": name, "error": one_line(exc, 240)})
    return {"models": out}


# -- C: calibration memory -------------------------------------------------------------------------

# One fresh process per point: a process's peak RSS only grows, so the first big run would set it
# for every later one. The child builds the float model, resets its peak (onnxopt.measure.memory: Linux
# /proc/self/clear_refs), runs the quantizer on a generator of random inputs and prints its peak.
_CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np

from onnxopt.measure.memory import lifetime_peak, reset_peak, status

tool, name = sys.argv[1], sys.argv[2]
samples, holdback, reduce_range = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
import onnx
from onnxopt import models
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import get_pass, parse_spec
from onnxopt.runtime.sessions import resolve_input_shapes
import onnxruntime.quantization as q

model = Pipeline(parse_spec("fold-bn"), verify=False).run(models.build(name, seed=0)).model
shapes = resolve_input_shapes(model)

def stream(count):
    rng = np.random.default_rng(100)
    for _ in range(count):
        yield {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}

tmp = Path(tempfile.mkdtemp(prefix="quantize-mem-"))
onnx.save(model, tmp / "float.onnx")
resettable = reset_peak()
before = status("VmRSS") if resettable else lifetime_peak()
t0 = time.perf_counter()
if tool == "onnxopt":
    # the pass reads `holdback` samples first (its agreement check), then `samples` to calibrate on
    step = get_pass("quantize")(calibration=stream(samples + holdback), samples=samples, holdback=holdback,
                                speed=False)  # memory of calibration, not the speed decision
    report = Pipeline([step], verify=False).run(model).report.passes[0]
    if report.status != "applied":
        raise SystemExit(f"quantize {report.status}: {report.message}")
    seen = (report.details.get("calibration") or {}).get("batches")
else:
    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.rest = stream(samples)
            self.seen = 0
        def get_next(self):
            feed = next(self.rest, None)
            self.seen += feed is not None
            return feed
    reader = Reader()
    q.quantize_static(tmp / "float.onnx", tmp / "int8.onnx", reader, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
    seen = reader.seen
seconds = time.perf_counter() - t0
peak = status("VmHWM") if resettable else lifetime_peak()
print(json.dumps({"peak_bytes": peak, "before_bytes": before, "seconds": seconds, "calibrated": seen,
                  "peak_reset": resettable}))
"""

HOLDBACK = 32  # the pass's default holdback: read before the calibration samples from a one-shot source


def memory_point(tool: str, name: str, samples: int, timeout: float = 300.0) -> dict:
    """Peak RSS of one fresh process calibrating `name` on `samples` generated samples with `tool`."""
    args = [sys.executable, "-c", _CHILD, tool, name, str(samples), str(HOLDBACK),
            "0" if peer_tools.has_vnni() else "1"]
    point: dict = {"tool": tool, "samples": samples}
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**point, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return {**point, "error": f"exit {done.returncode}: {tail[0][:240]}"}
    try:
        got = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {**point, "error": "no result printed"}
    return {**point, "peak_mb": got["peak_bytes"] / 1e6, "before_mb": got["before_bytes"] / 1e6,
            "added_mb": (got["peak_bytes"] - got["before_bytes"]) / 1e6, "seconds": got["seconds"],
            "calibrated": got["calibrated"], "peak_reset": got["peak_reset"]}


def section_c(quick: bool) -> dict:
    points = C_POINTS_QUICK if quick else C_POINTS
    try:  # how many feeds of a one-shot source the pass keeps to reuse for bias correction
        from onnxopt.passes.quantize.driver import BIAS_CORRECTION_SAMPLES as reserve
    except ImportError:
        reserve = None
    out: dict = {"model": C_MODEL, "points": {k: list(v) for k, v in points.items()}, "reserve": reserve,
                 "tools": {}}
    for tool, counts in points.items():
        measured = []
        for n in counts:
            p = memory_point(tool, C_MODEL, n)
            measured.append(p)
            log(f"C: {tool} {n} samples: " + (f"peak {p['peak_mb']:.0f} MB, +{p['added_mb']:.0f} MB over the "
                                               f"model, {p['seconds']:.1f} s" if "error" not in p else p["error"]))
        out["tools"][tool] = {"points": measured, "growth": growth(measured)}
    return out


# -- Markdown --------------------------------------------------------------------------------------

def _r(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _islands(v: dict) -> str:
    f = v.get("fusion") or {}
    return "-" if "float_islands" not in f else f"{f['float_islands']} ({f['integer_ops']} int ops)"


def markdown_a(a: list[dict]) -> list[str]:
    lines = ["## A. INT8 / FP32 latency, fidelity and float islands (zoo, 224x224 but VGG-16-BN 32x32)", "",
             "Seeded random weights; every quantizer gets the same float model (fold-bn; RepVGG-A0 also reparam, so "
             f"the ratio is against the reparameterized FP32 model) and the same {CALIB_SAMPLES} seeded random "
             f"calibration inputs (seed {CALIB_SEED}). {ONNXOPT} = `Pipeline(parse_spec('fold-bn[,reparam],quantize'), "
             f"calibration=...)` with the pass's defaults; {ORT_U8S8} = quant_pre_process, then quantize_static QDQ, "
             f"U8 activations, S8 per-channel weights; {ORT_DEFAULT} = quantize_static's defaults (S8S8 per-tensor). "
             "Latency: ratio of medians against FP32 (interleaved rounds, ORT_ENABLE_ALL, batch 1; in brackets the "
             "median per-round ratio and its 95% interval), at 1 and 2 intra-op threads. Fidelity against FP32 on "
             f"held-out seeded inputs (seed 1; random weights: indicative only). Float islands: ops onnxruntime "
             "still runs in float between Q/DQ after its fusions (onnxopt.analysis.fusion.audit).", ""]
    head = ("| model | variant | " + " | ".join(f"{t} thread{'s' * (t > 1)}: ratio [round ratio, interval]"
                                                for t in THREADS)
            + " | cosine | max abs | top-1 agr. | float islands | quantizer time |")
    for m in a:
        if "error" in m:
            lines += [f"{m['model']}: failed: {m['error']}", ""]
            continue
        lines += [f"### {m['model']}", "", head, "|---|---|" + "---:|" * (len(THREADS) + 5)]
        variants = {v["label"]: v for v in m["variants"]}
        for label in (FP32, AA, ONNXOPT, ONNXOPT_ALL, ORT_U8S8, ORT_DEFAULT):  # D's variants: in D
            v = variants.get(label, {})
            if v.get("status") == "failed":
                lines.append(f"| {m['model']} | {label} | {_cell(na(v['error']))} |" + " |" * (len(THREADS) + 4))
                continue
            cells = []
            for t in THREADS:
                r = m["bench"][str(t)]["rows"][label]
                iv = r["interval"]
                cells.append(f"**{r['ratio_of_medians']:.3f}** [{r['median_round_ratio']:.3f}, "
                             f"{iv[0]:.3f}-{iv[1]:.3f}] ({r['median_ms']:.2f} ms)" if label != FP32 else
                             f"1 ({r['median_ms']:.2f} ms)")
            f = m["fidelity"].get(label, {})
            took = f"{v['seconds']:.1f} s" if v.get("seconds") is not None else "-"
            lines.append(f"| {m['model']} | {label} | " + " | ".join(cells) + f" | {_r(f.get('cosine'), '.4f')} | "
                         f"{_r(f.get('max_abs'), '.3g')} | {_pct(f.get('top1_agreement'))} | {_islands(v)} | {took} |")
        rounds = ", ".join(f"{t} thread(s): {m['bench'][str(t)]['rows'][FP32]['rounds']} rounds"
                           for t in THREADS)
        aa = "; ".join(f"{t} thread(s) {c['ratio_of_medians']:.3f} / {c['median_round_ratio']:.3f}"
                       for t, c in m["aa_control"].items())
        lines += ["", f"A/A control (ratio of medians / median round ratio): {aa}. {rounds}. Fidelity on "
                  f"{m['fidelity_inputs']}.", ""]
        notes = [f"{v['label']}: {n}" for v in m["variants"] for n in v.get("tool_notes", [])]
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    return lines


def markdown_b(b: dict) -> list[str]:
    lines = ["## B. Accuracy on real data (digits)", "",
             f"Trained digits models; calibration: the 256 training samples of {CALIB.name} (onnxopt "
             "holds the last 32 of them back for its agreement check and calibrates on the rest; ORT reads all "
             f"256); top-1 accuracy, cosine, max abs error and top-1 agreement against FP32 on the 360 held-out "
             f"samples of {TEST.name}. ORT U8S8 gets the same float model (fold-bn; RepVGG also reparam). Below "
             "the first onnxopt row of the two depthwise models: the pass's options for such networks (cle, "
             "bias-correction, max-drop) and, on digits_mobilenetv2, its range methods. digits_mobilenetv2 has "
             "Relu6 between its convs, which is not scale-invariant: CLE can pair few of its layers; "
             "digits_mobilenet has plain ReLU and CLE pairs all of them (the pass's notes in the JSON say how "
             "many).", "",
             "| model | variant | accuracy | cosine | max abs | top-1 agr. | float islands | quantizer time |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in b["models"]:
        if "error" in m:
            lines.append(f"| {m['model']} | {_cell(na(m['error']))} | | | | | | |")
            continue
        for r in m["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {m['model']} | {r['label']} | {_cell(na(r['error']))} | | | | | |")
                continue
            took = f"{r['seconds']:.1f} s" if r.get("seconds") is not None else "-"
            lines.append(f"| {m['model']} | {r['label']} | **{_pct(r['accuracy'])}** | {_r(r.get('cosine'), '.5f')} | "
                         f"{_r(r.get('max_abs'), '.3g')} | {_pct(r.get('top1_agreement'))} | {_islands(r)} | "
                         f"{took if r['label'] != FP32 else '-'} |")
    return lines + [""]


def markdown_c(c: dict) -> list[str]:
    lines = ["## C. Calibration memory", "",
             f"{c['model']} (224x224, fold-bn) calibrated in a fresh process per point on a generator of seeded random "
             "inputs made one at a time (nothing accumulates on the caller's side). Peak RSS = the process's VmHWM "
             "after the run, its peak reset once the model was built; added = peak minus the RSS at that reset. "
             f"onnxopt: `Quantize(calibration=generator, samples=N)` through a Pipeline (verification off); it first "
             f"reads its {HOLDBACK} held-back samples, then N to calibrate on, then runs its agreement check and "
             "fusion audit" + (f" (from a one-shot source it keeps the first {c['reserve']} calibration feeds to "
                               "reuse for bias correction: memory may grow up to that many samples)"
                               if c.get("reserve") else "")
             + ". onnxruntime: quantize_static U8S8 per-channel, MinMax calibrator (its default), reading N. "
             f"Flat = the last segment grows at most {C_FLAT_MB_PER_100:g} MB per 100 samples.", "",
             "| tool | samples | peak RSS | added by the run | run time |", "|---|---:|---:|---:|---:|"]
    for tool, t in c["tools"].items():
        for p in t["points"]:
            if "error" in p:
                lines.append(f"| {tool} | {p['samples']} | {_cell(na(p['error']))} | | |")
                continue
            lines.append(f"| {tool} | {p['samples']} | {p['peak_mb']:.0f} MB | **{p['added_mb']:.0f} MB** | "
                         f"{p['seconds']:.1f} s |")
    lines.append("")
    for tool, t in c["tools"].items():
        g = t["growth"]
        if g["flat"] is None:
            lines.append(f"- {tool}: not enough points measured.")
            continue
        pts = [p for p in t["points"] if "added_mb" in p]
        lines.append(f"- {tool}: {pts[0]['samples']} → {pts[-1]['samples']} samples: {g['first_to_last_mb']:+.0f} MB; "
                     f"last segment {g['last_segment_mb_per_100']:+.1f} MB per 100 samples: "
                     f"**{'flat' if g['flat'] else 'GROWS'}**.")
    return lines + [""]


def markdown_d(d: dict, a: list[dict]) -> list[str]:
    lines = ["## D. MobileNetV2: onnxopt variants against onnxruntime's best", ""]
    if "error" in d:
        return lines + [f"Failed: {d['error']}", ""]
    m = next(m for m in a if m.get("model") == d["model"])
    lines += [f"Timed in the same interleaved run as A's {d['model']} rows (ratio of medians against FP32, median "
              "per-round ratio in brackets): onnxruntime fuses every op of this network already (0 float islands "
              "with U8S8), so any gain has to come from the quantization scheme itself. Faster = lower by more "
              f"than the noise floor in both ratios (the largest of: the A/A control's distance from 1, the "
              f"same-graph control's, {MIN_FLOOR:.0%}), with the 95% interval of the per-round ratio below the "
              f"other's median. Same-graph control: {SAME_GRAPH} changes only the scales of the default's graph, "
              "so how far apart the two time is noise between int8 models.", "",
              "| variant | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in THREADS)
              + " | cosine | float islands |", "|---|" + "---:|" * (len(THREADS) + 2)]
    variants = {v["label"]: v for v in m["variants"]}
    for label in [AA, ORT_U8S8, ORT_DEFAULT, ONNXOPT, *d["variants"][1:]]:
        v = variants.get(label, {})
        if v.get("status") == "failed":
            lines.append(f"| {label} | {_cell(na(v['error']))} |" + " |" * (len(THREADS) + 1))
            continue
        if label not in m["bench"][str(THREADS[0])]["rows"]:
            continue
        cells = [f"{m['bench'][str(t)]['rows'][label]['ratio_of_medians']:.3f} "
                 f"[{m['bench'][str(t)]['rows'][label]['median_round_ratio']:.3f}]" for t in THREADS]
        f = m["fidelity"].get(label, {})
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_r(f.get('cosine'), '.4f')} | {_islands(v)} |")
    lines.append("")
    for t, r in d["threads"].items():
        if r.get("wins") is None:
            lines.append(f"- {t} thread(s): nothing to compare.")
            continue
        lines.append(f"- {t} thread(s): fastest onnxopt row {r['ours']} {r['ours_ratio']:.3f} "
                     f"[{r['ours_round_ratio']:.3f}] vs {r['theirs']} {r['theirs_ratio']:.3f} "
                     f"[{r['theirs_round_ratio']:.3f}]: "
                     + ("**faster beyond the noise**" if r["wins"] else "**not faster beyond the noise**")
                     + (f" (same-graph control: the default's graph with {SAME_GRAPH}'s scales timed "
                        f"{r['same_graph_control']:.1%} away from the default)"
                        if r.get("same_graph_control") is not None else "") + ".")
    return lines + [""]


def markdown(data: dict) -> str:
    mach = data["machine"]
    lines = ["# quantize: static int8 QDQ", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores (shared with other work: 2-thread timings are the "
             f"noisier); onnxruntime {mach['onnxruntime']}, onnx {mach['onnx']}. CPU int8 dot products: "
             f"{'VNNI' if data['vnni'] else 'no VNNI (ORT U8S8 runs with reduce_range)'}. A row marked (A/A control) "
             "is the FP32 model timed against itself: latency differences no larger than its distance from 1 are "
             "noise." + (" **--quick smoke run: tiny models, tiny budgets; the numbers mean little.**"
                         if data["quick"] else ""), ""]
    lines += markdown_a(data["a"]) + markdown_b(data["b"]) + markdown_c(data["c"]) + markdown_d(data["d"], data["a"])
    lines.append("Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in data["section_seconds"].items())
                 + f"; suite {data['wall_seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    quick = "--quick" in (argv or [])
    start = time.perf_counter()
    peer_tools.warm_imports()
    seconds: dict[str, float] = {}

    def timed(key: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        value = fn()
        seconds[key] = time.perf_counter() - t0
        log(f"{key} done in {seconds[key]:.0f} s")
        return value

    def a_model(name: str) -> dict:
        try:
            return section_a_model(name, quick)
        except Exception as exc:  # noqa: BLE001 - one model failing must not lose the others
            log(f"A {name}: FAILED {one_line(exc, 240)}")
            return {"model": name, "error": one_line(exc, 240)}

    a = timed("A+D", lambda: [a_model(n) for n in ZOO])
    d = section_d(a)
    b = timed("B", lambda: section_b(quick))
    c = timed("C", lambda: section_c(quick))
    data = {"machine": machine(), "threads": list(THREADS), "ort_optimization": "all", "quick": quick,
            "vnni": peer_tools.has_vnni(), "a": a, "b": b, "c": c, "d": d, "section_seconds": seconds,
            "wall_seconds": time.perf_counter() - start}
    write("quantize", data, markdown(data), quick=quick)
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
