"""quantize on *this* CPU: int8 against float and against onnxruntime's recipe for this CPU kind.

onnxruntime's int8 kernels differ by CPU (onnxopt.runtime.cpu): with VNNI u8 x s8 products are exact; on
AVX2 without it they saturate in int16 and int8 gains little speed. So every number here is for the
CPU kind named in the table's title, and results/ keeps one file per kind (quantize_cpu-<kind>).

Per model, timed side by side by onnxopt.measure.sidebyside (what `onnxopt bench` runs: 1 intra-op thread,
ORT_ENABLE_ALL, interleaved rounds in two session sets, ratio of medians and the 95% interval of the
median round ratio), with the float model timed twice as the A/A control:
- FP32: the model after fold-bn (RepVGG: fold-bn,reparam), the reference of every row;
- onnxopt quantize: the pass's defaults (target=auto; regions slower in int8 return to float; a
  model int8 does not speed up stays float);
- onnxopt int8 everywhere: `speed=false`, this CPU's format on every op it can quantize;
- onnxopt 8-bit (VNNI format): `target=x86-vnni,speed=false`, only where this CPU saturates: what
  unbounded 8-bit weights do here;
- ORT U8S8 per-channel after quant_pre_process (with reduce_range where this CPU saturates, as
  onnxruntime's docs advise), and ORT U8U8 per-channel where it saturates (the other advice).
Digits models (trained): top-1 accuracy on the 360 held-out images, calibrated on the 256 training
images. Zoo models (seeded random weights, 224x224; VGG-16-BN 32x32): cosine with FP32 on 8 seeded
random inputs, calibrated on 16 others.

Run: `python -m benchmarks.quantize_cpu [--quick] [MODEL ...]` (about 6 minutes on 2 cores;
--quick: digits only, short budgets, results/quick/).
"""
from __future__ import annotations

import sys
import time

import onnx

from onnxopt import models
from onnxopt.data.files import load_feeds
from onnxopt.errors import one_line
from onnxopt.measure.sidebyside import Settings
from onnxopt.runtime.cpu import cpu_summary
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes

from . import peer_tools
from .common import machine, write
from .quantize import (
    AA,
    CALIB,
    CALIB_SAMPLES,
    CALIB_SEED,
    DIGITS,
    FP32,
    TEST,
    attempt,
    bench_rows,
    float_model,
    log,
    ort,
    public,
    quantize_spec,
    run_onnxopt,
)

ZOO = ("resnet18", "resnet50", "mobilenetv2", "repvgg_a0", "vgg16_bn")
DEFAULTS = "onnxopt quantize"
EVERYWHERE = "onnxopt int8 everywhere"
VNNI_FORMAT = "onnxopt 8-bit (VNNI format)"
ORT_U8S8 = "ORT U8S8 per-channel"
ORT_U8U8 = "ORT U8U8 per-channel"
LABELS = (DEFAULTS, EVERYWHERE, VNNI_FORMAT, ORT_U8S8, ORT_U8U8)


def variants(name: str, original: onnx.ModelProto, reference: onnx.ModelProto, calib, saturates: bool) -> list[dict]:
    jobs = [(DEFAULTS, lambda: run_onnxopt(original, quantize_spec(name), calib)),
            (EVERYWHERE, lambda: run_onnxopt(original, quantize_spec(name, "speed=false"), calib))]
    if saturates:
        jobs.append((VNNI_FORMAT, lambda: run_onnxopt(original, quantize_spec(name, "target=x86-vnni,speed=false"),
                                                        calib)))
    jobs.append((ORT_U8S8 + (" reduce_range" if saturates else ""),
                 ort(peer_tools.ort_quantize_u8s8, reference, list(calib))))
    if saturates:
        jobs.append((ORT_U8U8, ort(peer_tools.ort_quantize_u8u8, reference, list(calib))))
    return [attempt(label, fn) for label, fn in jobs]


def measure(name: str, quick: bool, saturates: bool) -> dict:
    digits = name in DIGITS
    log(f"quantize_cpu: {name}")
    original = onnx.load(models.fixture_path(name)) if digits else models.build(name, seed=0)
    reference = float_model(original, name)
    if digits:
        calib = load_feeds(CALIB, original)
    else:
        calib = random_feeds(original, resolve_input_shapes(original), seed=CALIB_SEED, count=CALIB_SAMPLES)
    found = variants(name, original, reference, calib, saturates)
    subjects = [(FP32, reference), (AA, reference)] + [(v["label"], v["model"]) for v in found if v["status"] == "ok"]
    budget = 1.0 if quick else (12.0 if name in ("resnet50", "mobilenetv2") else 6.0)
    settings = Settings(threads=1, budget_seconds=budget, rounds=20000, session_sets=1 if quick else 2, warmup=3,
                        memory=False, samples=8)
    bench = bench_rows(subjects, settings, data=TEST if digits else None, what=name)
    return {"model": name, "kind": "digits" if digits else "zoo", "float_spec": quantize_spec(name).rsplit(",", 1)[0],
            "variants": [public(v) for v in found], "bench": bench}


def _f(v, fmt=".3f") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(data: dict) -> str:
    cpu = data["cpu"]
    lines = [f"# quantize on {cpu['kind']} ({cpu['model']})", "",
             f"CPU flags: {', '.join(cpu['flags']) or 'none'}; onnxruntime's u8 x s8 products "
             f"{ {True: 'saturate in int16', False: 'are exact', None: 'are of unknown kind'}[cpu['u8s8_saturates']]} "
             "here (onnxopt.runtime.cpu probe). "
             f"onnxruntime {data['machine']['onnxruntime']}, 1 intra-op thread, ORT_ENABLE_ALL, batch 1; "
             "ratios measured side by side (interleaved, medians), interval = 95% CI of the median round ratio.",
             "", "| model | variant | INT8/FP32 | interval | accuracy | cosine | top-1 agr. | note |",
             "|---|---|---|---|---|---|---|---|"]
    for m in data["models"]:
        if "error" in m:
            lines.append(f"| {m['model']} | failed: {m['error']} | | | | | | |")
            continue
        rows = m["bench"]["rows"]
        notes = {v["label"]: v for v in m["variants"]}
        for label, row in rows.items():
            if label == FP32:
                note = "reference"
            elif label == AA:
                note = "A/A control"
            else:
                v = notes.get(label, {})
                note = "stayed float: int8 does not pay here" if v.get("stayed_float") else ""
                speed = v.get("speed") or {}
                regions = [r for r in speed.get("regions", []) if r.get("kept_float")]
                if not note and regions:
                    note = f"{len(regions)} of {len(speed['regions'])} regions kept float"
            lo, hi = row["interval"]
            lines.append(f"| {m['model']} | {label} | {row['ratio_of_medians']:.3f} | {lo:.3f}-{hi:.3f} | "
                         f"{_f(row['accuracy'], '.1%')} | {_f(row['cosine'], '.5f')} | "
                         f"{_f(row['top1_agreement'], '.0%')} | {note} |")
        for v in m["variants"]:
            if v["status"] != "ok":
                lines.append(f"| {m['model']} | {v['label']} | n/a | | | | | {v['error']} |")
    lines += ["", f"Took {data['seconds']:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("--")] or (list(DIGITS) if quick else [*DIGITS, *ZOO])
    cpu = cpu_summary()
    saturates = bool(cpu["u8s8_saturates"])
    start = time.perf_counter()
    out = []
    for name in names:
        try:
            out.append(measure(name, quick, saturates))
        except Exception as exc:  # noqa: BLE001 - one model failing is a row
            out.append({"model": name, "error": one_line(exc, 200)})
    data = {"machine": machine(), "cpu": cpu, "quick": quick, "models": out, "seconds": time.perf_counter() - start}
    write(f"quantize_cpu-{cpu['kind']}", data, markdown(data), quick)
    return data


if __name__ == "__main__":
    main()
