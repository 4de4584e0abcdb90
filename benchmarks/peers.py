"""onnxopt next to the peer tools users would otherwise pick, on the same models, side by side.

For each model: the original, the original again (the A/A control: its ratio is the noise floor),
onnxopt fold-bn and fold-bn+reparam, onnxoptimizer fuse_bn_into_conv, onnxsim simplify, ORT
quantize_static (defaults, and U8S8 per-channel after quant_pre_process), onnxsim quantize_static
(as called, and after onnxsim simplify), onnxsim structured pruning at 30% and onnxopt's at 30% with
least-squares recovery on the calibration samples (peer_tools.JOBS says exactly what each calls). Each job's own wall time is the "optimizer time". All variants of one model
are measured in one `onnxopt.measure.sidebyside.run_bench` call: one session each, interleaved rounds,
medians, one intra-op thread, ORT_ENABLE_ALL (what a deployment uses); reference = the original.

Models: the digits fixtures (trained, train-time form with BN; accuracy on the 360-sample test
split, quantizers calibrated on the 256 training samples of digits_calib.npz) and the zoo's
resnet18 / mobilenetv2 / repvgg_a0 at 224x224 (seeded random weights and inputs: fidelity only;
quantizers calibrated on 16 seeded random inputs, not those fidelity is measured on).
Each variant's graph after ORT_ENABLE_EXTENDED (SessionOptions.optimized_model_filepath) is counted
by op type: a QDQ model is only fast where ORT fused Q/DQ into integer kernels (anchors.md §1.4).
Run: `python -m benchmarks.peers [--quick]`.
"""
from __future__ import annotations

import collections
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnxopt import models
from onnxopt.data.feeds import FeedSet
from onnxopt.errors import one_line
from onnxopt.measure.sidebyside import Settings, Subject, check_same_interface, run_bench
from onnxopt.measure.timing import runner
from onnxopt.runtime.sessions import make_session, random_feeds, resolve_input_shapes

from . import peer_tools
from .common import machine, write

THREADS = 1  # 2 threads on this shared 2-core machine measured too noisy (A/A off by 4%)
AA_TOLERANCE = 0.03
AA_LABEL = "original (A/A control)"
DIGITS = ("digits_resnet", "digits_mobilenetv2", "digits_repvgg")
ZOO = ("resnet18", "mobilenetv2", "repvgg_a0")
DIGITS_CALIB_BATCH = 32
ZOO_CALIB_SAMPLES = 16
ZOO_CALIB_SEED = 100  # run_bench draws its timing/fidelity inputs from seeds 0 and 1


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Case:
    """One model to measure, with the data its quantizers calibrate on and its bench settings."""

    name: str
    model: onnx.ModelProto
    calib: list[dict[str, np.ndarray]]
    calib_source: str
    data: Path | None          # labelled test data for run_bench (digits), None: random inputs
    settings: Settings


def digits_cases(quick: bool) -> list[Case]:
    with np.load(models.FIXTURES / "digits_calib.npz") as calib:
        # never the test split: that is what accuracy is measured on
        feeds = list(FeedSet({"input": calib["input"]}, batch=DIGITS_CALIB_BATCH))
    source = f"digits_calib.npz: {sum(len(f['input']) for f in feeds)} training samples"
    # ~0.3 ms models: where each session lands in memory moves them by a few percent, so more sets of
    # sessions (built in shuffled orders) are pooled than for the zoo
    settings = Settings(threads=THREADS, budget_seconds=0.5 if quick else 15.0, rounds=20000, session_sets=6,
                        memory=not quick)
    return [Case(name, onnx.load(models.FIXTURES / f"{name}.onnx"), feeds, source,
                 models.FIXTURES / "digits_test.npz", settings) for name in DIGITS]


def zoo_cases(quick: bool) -> list[Case]:
    settings = Settings(threads=THREADS, budget_seconds=0.5 if quick else 40.0, rounds=4000, memory=not quick)
    cases = []
    for name in ZOO:
        name = f"{name}-tiny" if quick else name
        model = models.build(name)
        feeds = random_feeds(model, resolve_input_shapes(model), seed=ZOO_CALIB_SEED, count=ZOO_CALIB_SAMPLES)
        cases.append(Case(name, model, feeds, f"{len(feeds)} seeded random normal inputs (seed {ZOO_CALIB_SEED})",
                          None, settings))
    return cases


def run_job(job: peer_tools.PeerJob, case: Case) -> dict:
    """Run one job on a fresh copy of the model (a tool must not see another's edits): the result,
    the job's wall time, and what went wrong if it did."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    peer_tools.take_notes()
    t0 = time.perf_counter()
    try:
        result = job.run(model, case.calib if job.calibrates else None)
    except peer_tools.PeerUnavailable as exc:
        return {"status": "unavailable", "error": exc.reason, "notes": peer_tools.take_notes()}
    except Exception as exc:  # noqa: BLE001 - a peer failing is a result, not a crash of the suite
        return {"status": "failed", "error": one_line(exc, 200), "seconds": time.perf_counter() - t0,
                "notes": peer_tools.take_notes()}
    seconds = time.perf_counter() - t0
    return {"status": "ok", "seconds": seconds, "model": result, "notes": peer_tools.take_notes()}


def runnable(original: onnx.ModelProto, label: str, candidate: onnx.ModelProto, feed: dict) -> str | None:
    """Why run_bench could not measure `candidate` next to the original (None if it can): checked
    one by one, so that one bad result costs its own row, not the whole model's table."""
    try:
        check_same_interface([Subject("original", original, b""), Subject(label, candidate, b"")])
        session = make_session(candidate.SerializeToString(), optimization="all", threads=THREADS)
        runner(session, feed)()
    except Exception as exc:  # noqa: BLE001 - onnxruntime and the interface check raise many types
        return f"cannot be measured: {one_line(exc, 200)}"
    return None


def optimized_graph(model: onnx.ModelProto, level: str) -> onnx.GraphProto | None:
    """The graph onnxruntime runs at `level` (SessionOptions.optimized_model_filepath)."""
    with tempfile.TemporaryDirectory(prefix="peers-ops-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        try:
            make_session(model.SerializeToString(), optimization=level, threads=THREADS,
                         optimized_model_path=str(path))
            return onnx.load(path).graph
        except Exception:  # noqa: BLE001 - no histogram is better than no table
            return None


def ort_ops(model: onnx.ModelProto) -> dict[str, int] | None:
    """Nodes per op type after ORT_ENABLE_EXTENDED (the fusions, before ORT_ENABLE_ALL's layout
    rewrite): shows which Q/DQ pairs became integer kernels and which Convs stayed float."""
    graph = optimized_graph(model, "extended")
    if graph is None:
        return None
    return dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))


def ort_layout(model: onnx.ModelProto) -> dict[str, int] | None:
    """After ORT_ENABLE_ALL: nodes in ORT's blocked NCHWc layout (its fast float Conv path on x86,
    taken only for channel counts it can block) and the reorders in and out of it."""
    graph = optimized_graph(model, "all")
    if graph is None:
        return None
    return {"nchwc_nodes": sum(n.domain == "com.microsoft.nchwc" for n in graph.node),
            "reorders": sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in graph.node),
            "nodes": len(graph.node)}


def key_ops(ops: dict[str, int] | None) -> dict[str, int] | None:
    """The counts that explain a speed difference: integer kernels vs float Conv/Add left."""
    if ops is None:
        return None
    get = ops.get
    return {"QLinearConv": get("QLinearConv", 0),
            "float Conv": get("Conv", 0) + get("FusedConv", 0),
            "QLinear other": sum(v for k, v in ops.items() if k.startswith(("QLinear", "QGemm")) and k != "QLinearConv"),
            "float Add": get("Add", 0) + get("Sum", 0),
            "Q": get("QuantizeLinear", 0), "DQ": get("DequantizeLinear", 0),
            "BN": get("BatchNormalization", 0), "nodes": sum(ops.values())}


def op_diff(ops: dict[str, int] | None, base: dict[str, int] | None) -> dict[str, int] | None:
    if ops is None or base is None:
        return None
    return {k: ops.get(k, 0) - base.get(k, 0) for k in sorted(set(ops) | set(base)) if ops.get(k, 0) != base.get(k, 0)}


def optimize_all(case: Case) -> list[dict]:
    """The original twice (the second is the A/A control), then every job's result or its failure."""
    variants = [{"key": "original", "label": "original", "status": "ok", "seconds": None, "model": case.model,
                 "notes": []},
                {"key": "original_aa", "label": AA_LABEL, "status": "ok", "seconds": None, "model": case.model,
                 "notes": []}]
    feed = random_feeds(case.model, resolve_input_shapes(case.model), seed=0)[0]
    for job in peer_tools.JOBS:
        row = {"key": job.key, "label": job.label, **run_job(job, case)}
        if row["status"] == "ok":
            problem = runnable(case.model, job.label, row["model"], feed)
            if problem:
                row.update(status="failed", error=problem)
        took = f"{row['seconds']:.2f} s" if row.get("seconds") is not None else "-"
        log(f"  {job.label}: {row['status']} ({took}){': ' + row['error'] if row.get('error') else ''}")
        variants.append(row)
    return variants


def aa_control(entries: dict[str, dict]) -> dict:
    """The A/A control's ratios (the noise floor of this run) and its memory next to the original's."""
    latency = entries[AA_LABEL]["latency"]
    batch = next(iter(latency))
    control = {"batch": int(batch), "ratio_of_medians": latency[batch]["ratio_of_medians"],
               "median_round_ratio": latency[batch]["median_round_ratio"]}
    control["within_tolerance"] = abs(control["ratio_of_medians"] - 1) <= AA_TOLERANCE
    memory = [entries[k]["peak_session_memory_bytes"] for k in ("original", AA_LABEL)]
    control["peak_memory_mb"] = None if None in memory else [b / 1e6 for b in memory]
    return control


def measure(case: Case) -> dict:
    log(f"{case.name}: running the optimizers")
    variants = optimize_all(case)
    measured = [v for v in variants if v["status"] == "ok"]
    for v in measured:
        v["ort_ops"] = ort_ops(v["model"])
        v["ort_layout"] = ort_layout(v["model"])
    subjects = [Subject(v["label"], v["model"], v["model"].SerializeToString()) for v in measured]
    last = [""]

    def progress(what: str, done: int, total: int) -> None:
        if what != last[0]:
            last[0] = what
            log(f"  {case.name}: {what}")

    log(f"{case.name}: measuring {len(subjects)} variants side by side")
    report = run_bench(subjects, case.settings, data=case.data, progress=progress)
    entries = {e.name: e.as_dict(report.reference) for e in report.entries}
    rows = []
    for v in variants:
        row = {k: v.get(k) for k in ("key", "label", "status", "error", "notes")}
        row["optimizer_seconds"] = v.get("seconds")
        if v["status"] == "ok":
            row.update(bench=entries[v["label"]], ort_ops_extended=v["ort_ops"], ort_key_ops=key_ops(v["ort_ops"]),
                       ort_ops_vs_original=op_diff(v["ort_ops"], measured[0]["ort_ops"]),
                       ort_all_layout=v["ort_layout"])
        rows.append(row)
    bench = report.as_dict()
    bench.pop("models")  # each variant's entry is in its row
    return {"model": case.name, "calibration": case.calib_source, "bench": bench, "variants": rows,
            "aa_control": aa_control(entries)}


# -- Markdown ------------------------------------------------------------------------------------

def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    return f"{nbytes / 1e6:.2f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"


def _macs(macs: int | None) -> str:
    if macs is None:
        return "-"
    return f"{macs / 1e9:.2f} G" if macs >= 1e9 else f"{macs / 1e6:.1f} M"


def timing_table(m: dict) -> list[str]:
    labelled = m["bench"]["labelled_samples"] > 0
    head = ("| variant | optimizer time | median ms | ratio of medians | median round ratio | size | params | MACs "
            "| peak session memory | max rel | cosine | top-1 agreement |" + (" accuracy |" if labelled else ""))
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if labelled else "")]
    for v in m["variants"]:
        if v["status"] != "ok":
            what = "not installed" if v["status"] == "unavailable" else "failed"
            error = v["error"].replace("|", "\\|")  # a pipe would end the table cell
            lines.append(f"| {v['label']} | {what}: {error} |" + " |" * (10 + labelled))
            continue
        b = v["bench"]
        t = next(iter(b["latency"].values()))
        f = b["fidelity_vs_reference"] or {}
        agree = f.get("top1_agreement")
        memory = b["peak_session_memory_bytes"]
        cells = [v["label"], _num(v["optimizer_seconds"], ".2f") + (" s" if v["optimizer_seconds"] is not None else ""),
                 f"{t['median_ms']:.3f}", f"{t['ratio_of_medians']:.3f}", f"{t['median_round_ratio']:.3f}",
                 _size(b["file_bytes"]), f"{b['params']:,}", _macs(b["macs"]),
                 "-" if memory is None else f"{memory / 1e6:.1f} MB",
                 _num(f.get("max_rel"), ".2e"), _num(f.get("cosine"), ".6f"),
                 "-" if agree is None else f"{agree:.1%}"]
        if labelled:
            cells.append("-" if b["accuracy"] is None else f"{b['accuracy']:.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ops_table(m: dict) -> list[str]:
    keys = ["QLinearConv", "float Conv", "QLinear other", "float Add", "Q", "DQ", "BN", "nodes"]
    lines = ["| variant | " + " | ".join(keys) + " | nodes in file | NCHWc nodes / reorders (all) "
             "| other changes vs original (extended) |",
             "|---|" + "---:|" * (len(keys) + 2) + "---|"]
    for v in m["variants"]:
        if v["status"] != "ok":
            continue
        ops = v["ort_key_ops"]
        shown = {"QuantizeLinear", "DequantizeLinear", "Conv", "FusedConv", "QLinearConv", "Add", "Sum",
                 "BatchNormalization"}
        diff = {k: d for k, d in (v["ort_ops_vs_original"] or {}).items()
                if k not in shown and not k.startswith(("QLinear", "QGemm"))}
        other = ", ".join(f"{k} {d:+d}" for k, d in diff.items()) or "-"
        cells = ["-"] * len(keys) if ops is None else [str(ops[k]) for k in keys]
        layout = v["ort_all_layout"]
        blocked = "-" if layout is None else f"{layout['nchwc_nodes']} / {layout['reorders']}"
        lines.append(f"| {v['label']} | " + " | ".join(cells) + f" | {v['bench']['nodes']} | {blocked} | {other} |")
    return lines


def model_section(m: dict) -> list[str]:
    b, c = m["bench"], m["aa_control"]
    source = b["data"].replace(str(models.FIXTURES), "models/fixtures")
    inputs = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in b["inputs"].items())
    s = b["settings"]
    lines = [f"## {m['model']}", "",
             f"Input {inputs}; timing and fidelity data: {source}; fidelity on {b['fidelity_samples']} samples"
             + (f", accuracy on {b['labelled_samples']} labelled samples" if b["labelled_samples"] else "")
             + f". Quantizers calibrated on {m['calibration']}. Timing: {s['warmup']} warm-up rounds, up to "
             f"{s['max_rounds']} rounds or {s['budget_seconds_per_batch']:g} s.", ""]
    lines += timing_table(m)
    notes = [f"{v['label']}: {n}" for v in m["variants"] for n in (v.get("notes") or [])]
    if notes:
        lines += [""] + [f"- {n}" for n in dict.fromkeys(notes)]
    lines += ["", "The graph onnxruntime runs, counted by op type after ORT_ENABLE_EXTENDED (its fusions: QLinearConv = "
              "a Q/DQ-wrapped Conv turned into an integer kernel, float Conv includes FusedConv); the timing used "
              "ORT_ENABLE_ALL, which also moves Convs it can block into its NCHWc layout (the column before last, "
              "with the reorders in and out of that layout):", ""]
    lines += ops_table(m)
    verdict = "within" if c["within_tolerance"] else "OUTSIDE"
    memory = c.get("peak_memory_mb")
    lines += ["", f"A/A control: ratio of medians {c['ratio_of_medians']:.3f}, median round ratio "
              f"{c['median_round_ratio']:.3f}: {verdict} ±{AA_TOLERANCE:.0%}. Latency differences no larger than the "
              "A/A control's are noise." + (f" Peak session memory of the same model measured twice: {memory[0]:.1f} and "
                          f"{memory[1]:.1f} MB." if memory else ""), ""]
    return lines


def markdown(data: dict) -> str:
    mach = data["machine"]
    lines = ["# onnxopt next to peer tools", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores (shared); onnxruntime {mach['onnxruntime']}, onnx "
             f"{mach['onnx']}, Python {mach['python']}; {', '.join(f'{k} {v}' for k, v in data['tools'].items())}. "
             f"Threads: {data['threads']} (intra-op). ORT optimization level: {data['ort_optimization']} "
             "(ORT_ENABLE_ALL, what a deployment uses: it folds BatchNormalization into Conv itself at load time, "
             "so BN folding alone is not expected to change latency here). Batch 1.", "",
             "Columns: optimizer time = wall time of the job's call (peer_tools.py); median ms = median latency of "
             "one inference; ratio of medians = median / the original's median; median round ratio = median over "
             "rounds of (this variant / the original in the same round); size = serialized model; params and MACs "
             "as onnxopt counts them (a quantized weight counts as its int8 elements); peak session memory = peak "
             "resident bytes a fresh process adds building the session and running once; max rel = max |difference| "
             "/ max |original output|, cosine and top-1 agreement against the original on the same inputs; "
             "accuracy = top-1 on the labelled test split.", "",
             f"CPU int8 dot products: {'VNNI present' if data['vnni'] else 'no VNNI'}, so the U8S8 job runs with "
             f"reduce_range={data['u8s8_reduce_range']}. Zoo models have random weights and are calibrated on "
             "random inputs: their quantization fidelity is indicative only; the digits models are trained and "
             "calibrated on real training samples.", "",
             "Jobs:", ""]
    lines += [f"- **{label}**: {note}" for label, note in data["jobs"].items()]
    lines.append("")
    for m in data["models"]:
        lines += model_section(m)
    lines.append(f"Suite wall time: {data['wall_seconds']:.0f} s.")
    return "\n".join(lines)


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in ("onnxsim", "onnxoptimizer"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def main(argv: list[str] | None = None) -> dict:
    quick = "--quick" in (argv or [])
    start = time.perf_counter()
    peer_tools.warm_imports()
    cases = digits_cases(quick) + zoo_cases(quick)
    results = []
    for case in cases:
        results.append(measure(case))
        log(f"{case.name}: done at {time.perf_counter() - start:.0f} s")
    data = {"machine": machine(), "tools": tool_versions(), "threads": THREADS, "ort_optimization": "all",
            "ort_ops_level": "extended", "quick": quick, "vnni": peer_tools.has_vnni(),
            "u8s8_reduce_range": not peer_tools.has_vnni(),
            "jobs": {job.label: job.note for job in peer_tools.JOBS}, "models": results,
            "wall_seconds": time.perf_counter() - start}
    write("peers", data, markdown(data), quick=quick)
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
