"""benchmarks/results/SUMMARY.md: the setup every number depends on, then each suite's tables.

Written by `python -m benchmarks` after the suites ran, from the results and results/suites.json
(the run's date, machine, versions and wall times); `python -m benchmarks.summary [--quick]`
rewrites it from what is on disk. The README links it.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import re
import sys
from pathlib import Path

from .common import RESULTS, machine, results_dir

TOOLS = ("onnx", "onnxruntime", "onnxsim", "onnxoptimizer", "numpy", "matplotlib")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _demoted(markdown: str) -> str:
    """A suite's own '# Title' becomes '### Title' under the summary's 'Every table'."""
    return re.sub(r"^(#+) ", lambda m: "##" + m.group(1) + " ", markdown, flags=re.M)


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def aa_controls(folder: Path = RESULTS) -> list[tuple[str, str, float, float]]:
    """(suite, model, ratio of medians, median per-round ratio) of every A/A control on record."""
    rows = []
    for r in (_load(folder, "reparam") or {}).get("rows", []):
        for threads, timings in r["latency"].items():
            for t in timings:
                if "(A/A)" in t["name"]:
                    rows.append(("reparam", f"{r['model']} ({threads} thread)", t["ratio_of_medians"],
                                 t["median_round_ratio"]))
    for m in (_load(folder, "peers") or {}).get("models", []):
        aa = m["aa_control"]
        rows.append(("peers", m["model"], aa["ratio_of_medians"], aa["median_round_ratio"]))
    prune = _load(folder, "prune") or {}
    for section, models in (("A", [prune.get("a")]), ("B", prune.get("b", [])), ("D", prune.get("d", []))):
        for m in models:
            if not m or "bench" not in m:
                continue
            for label, row in m["bench"]["rows"].items():
                if "(A/A" in label:
                    rows.append(("prune", f"{section}: {m['model']}", row["ratio_of_medians"],
                                 row["median_round_ratio"]))
    for m in (_load(folder, "quantize") or {}).get("a", []):
        for threads, c in (m.get("aa_control") or {}).items():
            rows.append(("quantize", f"{m['model']} ({threads} thread{'s' * (threads != '1')})",
                         c["ratio_of_medians"], c["median_round_ratio"]))
    return rows


def quantize_headline(folder: Path = RESULTS) -> list[str]:
    """The quantize suite in one screen: INT8/FP32 latency and float islands against onnxruntime's
    quantizer, accuracy on the digits, calibration memory, MobileNetV2 variants (quantize.md has
    the tables behind them)."""
    data = _load(folder, "quantize")
    if not data:
        return []
    from .quantize import AA, FP32, ONNXOPT, ORT_DEFAULT, ORT_U8S8, THREADS

    labels = (ONNXOPT, ORT_U8S8, ORT_DEFAULT, AA)
    lines = ["## At a glance: int8 quantization", "",
             "**A.** INT8 / FP32 latency, ratio of medians at " + " / ".join(f"{t}" for t in THREADS)
             + " intra-op thread(s) (interleaved, same float model and the same 16 random calibration inputs for "
             "every quantizer; random weights), and in brackets the float islands onnxruntime leaves:", "",
             "| model | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for m in data.get("a", []):
        if "error" in m:
            lines.append(f"| {m['model']} | failed: {m['error']} |" + " |" * (len(labels) - 1))
            continue
        variants = {v["label"]: v for v in m["variants"]}
        cells = []
        for label in labels:
            v = variants.get(label, {})
            if v.get("status") == "failed" or label not in m["bench"][str(THREADS[0])]["rows"]:
                cells.append("failed" if v.get("status") == "failed" else "-")
                continue
            ratios = " / ".join(f"{m['bench'][str(t)]['rows'][label]['ratio_of_medians']:.3f}" for t in THREADS)
            islands = (v.get("fusion") or {}).get("float_islands")
            cells.append(ratios + ("" if islands is None else f" ({islands})"))
        lines.append(f"| {m['model']} | " + " | ".join(cells) + " |")
    b = [m for m in (data.get("b") or {}).get("models", []) if "rows" in m]

    def result(r: dict) -> str:
        if r["status"] != "ok":
            return f"n/a ({r['error']})"
        return f"{r['accuracy']:.1%}" + ("" if r.get("cosine") is None else f" ({r['cosine']:.5f})")

    if b:
        main = (FP32, ONNXOPT, ORT_U8S8)
        lines += ["", "**B.** Top-1 accuracy on the 360 held-out digits test samples (calibrated on the 256 "
                  "training samples); cosine against FP32 in brackets:", "",
                  "| model | " + " | ".join(main) + " |", "|---|" + "---:|" * len(main)]
        for m in b:
            rows = {r["label"]: r for r in m["rows"]}
            lines.append(f"| {m['model']} | " + " | ".join(result(rows[k]) if k in rows else "-" for k in main) + " |")
        for m in b:
            others = [r for r in m["rows"] if r["label"] not in main]
            if others:
                lines += ["", f"{m['model']}, onnxopt options: " + "; ".join(
                    f"{r['label'].removeprefix(ONNXOPT).strip()}: {result(r)}" for r in others) + "."]
    c = data.get("c") or {}
    if c.get("tools"):
        lines += ["", f"**C.** Calibration memory on {c['model']} (fresh process per point, random inputs from a "
                  "generator): MB the run adds over the loaded model, per number of calibration samples:", ""]
        for tool, t in c["tools"].items():
            points = ", ".join(f"{p['samples']}: {p['added_mb']:.0f} MB" if "added_mb" in p else
                               f"{p['samples']}: n/a" for p in t["points"])
            g = t["growth"]
            verdict = "-" if g["flat"] is None else (
                f"{'flat' if g['flat'] else 'grows'} ({g['last_segment_mb_per_100']:+.1f} MB per 100 samples "
                "over the last segment)")
            lines.append(f"- {tool}: {points}; {verdict}.")
    d = data.get("d") or {}
    if d.get("threads"):
        lines += ["", f"**D.** {d['model']}, the fastest onnxopt variant against onnxruntime's fastest (ratio of "
                  "medians against FP32):", ""]
        for t, r in d["threads"].items():
            if r.get("wins") is None:
                continue
            lines.append(f"- {t} thread(s): {r['ours']} {r['ours_ratio']:.3f} vs {r['theirs']} "
                         f"{r['theirs_ratio']:.3f}: {'faster' if r['wins'] else 'not faster'} beyond the noise "
                         "(A/A and same-graph controls).")
    return lines + [""]


def prune_headline(folder: Path = RESULTS) -> list[str]:
    """The prune suite's claims in one screen: pruned vs built at half width, recovery vs onnxsim,
    accuracy with recovery, latency-aware ratios (the tables behind them are in prune.md)."""
    data = _load(folder, "prune")
    if not data:
        return []
    lines = ["## At a glance: structured pruning", ""]
    a = data.get("a") or {}
    if "bench" in a:
        p = a["pruned_vs_half"]
        lines += [f"- **A.** VGG-16-BN pruned 50% vs the same net built at half width: same weight shapes "
                  f"{'yes' if a['same_weight_shapes'] else 'NO'}; latency ratio **{p['ratio_of_medians']:.3f}** "
                  f"(median round ratio {p['median_round_ratio']:.3f}, 95% interval [{p['interval'][0]:.3f}, "
                  f"{p['interval'][1]:.3f}]; goal 1 ± 5%); {a['speedup_vs_original']:.2f}x faster than the original."]
    elif a:
        lines.append(f"- **A.** failed: {a.get('error')}")
    lines += ["", "**B.** Digits models at 30%: cosine vs the original / top-1 accuracy on the 360 held-out "
              "test samples / latency ratio vs the original / parameters (recovery calibrated on 256 training "
              "samples; the 'onnxsim's params' row prunes to onnxsim's parameter count):", ""]
    b = [m for m in data.get("b", []) if "bench" in m]
    matched = "(onnxsim's params)"

    def canonical(label: str) -> str:  # the matched row names its own ratio, which differs per model
        return "onnxopt + recovery at onnxsim's params" if label.endswith(matched) else label

    if b:
        labels = list(dict.fromkeys(canonical(label) for m in b for label in m["labels"] if "(A/A" not in label))
        lines += ["| variant | " + " | ".join(m["model"] for m in b) + " |", "|---|" + "---|" * len(b)]
        for label in labels:
            cells = []
            for m in b:
                r = next((v for k, v in m["bench"]["rows"].items() if canonical(k) == label), None)
                cells.append("-" if r is None else
                             f"{'-' if r['cosine'] is None else format(r['cosine'], '.4f')} / "
                             f"{'-' if r['accuracy'] is None else format(r['accuracy'], '.1%')} / "
                             f"{r['ratio_of_medians']:.2f} / {r['params'] / 1e3:.1f}k")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for m in data.get("b", []):
        if "error" in m:
            lines += ["", f"{m['model']}: failed: {m['error']}"]
    c = data.get("c") or {}
    if c.get("models"):
        lines += ["", "**C.** Top-1 accuracy on the digits test split, before → after pruning with recovery "
                  "(without recovery in brackets); removed = share of prunable channels removed (widths rounded to "
                  "onnxruntime's NCHWc block remove less than the ratio on these narrow nets):", "",
                  "| model | spec | removed | accuracy | params |", "|---|---|---:|---|---:|"]
        for m in c["models"]:
            for r in m["rows"]:
                if "error" in r:
                    lines.append(f"| {m['model']} | `{r['spec']}` | - | failed | - |")
                    continue
                lines.append(f"| {m['model']} | `{r['spec']}` | {r.get('channels_removed', float('nan')):.0%} | "
                             f"{m['before']['accuracy']:.1%} → **{r['accuracy']:.1%}** "
                             f"({r['no_recovery']['accuracy']:.1%}) | {m['before']['params']:,} → {r['params']:,} |")
    d = data.get("d") or []
    if d:
        # runs before 2026-12-07 kept only the plain cosine on white noise, which cannot tell here
        centred = all("centred_cosine" in m for m in d if "error" not in m)
        measure = ("centred output cosine vs the original on held-back synthetic scenes, every cut calibrated "
                   "on others" if centred else "plain cosine vs the original on 8 white-noise inputs, which "
                   "cannot tell: these random-weight networks answer nearly one vector whatever such an input "
                   "(notes/zoo-fidelity-x86-vnni.md)")
        lines += ["", "**D.** target-latency=0.6: the pass's own predicted / measured ratio, then measured "
                  f"independently side by side; {measure}; against the uniform-ratio "
                  "models closest to its latency on either side (widths rounded as the pass rounds them):", "",
                  "| model | pass: predicted / measured | measured (independent) | cosine | uniform cut at equal "
                  "latency (interpolated) | uniform models: latency vs the target-latency model, cosine |",
                  "|---|---|---:|---:|---:|---|"]
        from .prune import at_equal_latency
        for m in d:
            if "error" in m:
                lines.append(f"| {m['model']} | failed: {m['error']} | | | | |")
                continue
            chosen = m["latency"]["chosen"]
            key = "centred_cosine" if centred else "cosine"
            target = m["centred_cosine"][m["labels"][1]] if centred else m["bench"]["rows"][m["labels"][1]]["cosine"]
            others = "; ".join(f"r={u['ratio']:.3f}: {u['latency_vs_target_model']:.3f}x, {u[key]:.4f}"
                               for u in m["uniform"])
            equal = at_equal_latency([(u["latency_vs_target_model"], u[key]) for u in m["uniform"]])
            lines.append(f"| {m['model']} | {chosen['predicted']:.3f} / {chosen['measured']:.3f} | "
                         f"**{m['measured_ratio']:.3f}** | {target:.4f} | "
                         f"{'-' if equal is None else format(equal, '.4f')} | {others} |")
    return lines + [""]


def headline(folder: Path = RESULTS) -> list[str]:
    """Per model and job of the peers suite: latency ratio against the original and, for the digits
    models, test accuracy; the A/A row is the noise floor of each column."""
    peers = _load(folder, "peers")
    if not peers:
        return []
    models = [m["model"] for m in peers["models"]]
    labels = list(dict.fromkeys(v["label"] for m in peers["models"] for v in m["variants"]))
    lines = ["## At a glance: onnxopt and its peers", "",
             "Latency as a ratio of medians against the original model (below 1 is faster; 1 thread, "
             "ORT_ENABLE_ALL, batch 1), and for the digits models top-1 accuracy on the 360 held-out "
             "test images. The A/A row is the same model timed against itself: differences smaller "
             "than its distance from 1 are noise. Zoo models have random weights (fidelity only).", "",
             "| job | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for label in labels:
        cells = []
        for m in peers["models"]:
            v = next((v for v in m["variants"] if v["label"] == label), None)
            if v is None or v["status"] != "ok":
                cells.append("-" if v is None else v["status"])
                continue
            latency = next(iter(v["bench"]["latency"].values()))
            cell = f"{latency['ratio_of_medians']:.3f}"
            if v["bench"]["accuracy"] is not None:
                cell += f" ({v['bench']['accuracy']:.1%})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    controls = aa_controls(folder)
    worst = max((max(abs(r - 1), abs(q - 1)) for _, _, r, q in controls), default=float("nan"))
    lines += ["", f"A/A controls of every suite (ratio of medians / median per-round ratio); the largest "
                  f"distance from 1 is {worst:.1%}:", "",
              "| suite | model | ratio of medians | median per-round ratio |", "|---|---|---:|---:|"]
    lines += [f"| {s} | {m} | {r:.3f} | {q:.3f} |" for s, m, r, q in controls]
    return lines + [""]


def record_run(suites: list[str], seconds: dict[str, float], quick: bool = False) -> None:
    """What the summary states about the run, kept with the results so that regenerating the
    summary later does not restamp it with another day, machine or set of versions."""
    folder = results_dir(quick)
    folder.mkdir(parents=True, exist_ok=True)
    run = {"date": datetime.date.today().isoformat(), "machine": machine(), "quick": quick, "suites": suites,
           "wall_seconds": seconds, "versions": {t: _version(t) for t in TOOLS}}
    (folder / "suites.json").write_text(json.dumps(run, indent=2) + "\n")


def cpu_kinds(folder: Path = RESULTS) -> list[str]:
    """The suites that keep one file per CPU kind (quantize_cpu-<kind>.md, startup-<kind>.md), kept
    across runs on other kinds: onnxruntime's integer kernels, and so the right int8 format and its
    speed-up, differ by CPU, and so does start-up."""
    found = sorted(folder.glob("quantize_cpu-*.md")) + sorted(folder.glob("startup-*.md"))
    if not found:
        return []
    lines = ["## Each CPU kind: int8 and start-up", "",
             "Measured on each kind of CPU this project has run on (`python -m benchmarks.quantize_cpu`, "
             "`python -m benchmarks.startup`); the other tables are from the machine named at the top.", ""]
    for path in found:
        lines += [_demoted(path.read_text()).rstrip(), ""]
    return lines


def write_summary(quick: bool = False, threads: int = 1) -> str:
    folder = results_dir(quick)
    run = json.loads((folder / "suites.json").read_text())
    m, seconds = run["machine"], run["wall_seconds"]
    lines = ["# onnxopt benchmark summary" + (" (--quick smoke run)" if run["quick"] else ""), "",
             f"Generated by `python -m benchmarks` on {run['date']}. "
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}. "
             f"Timed with {threads} intra-op thread(s) (2 threads on this shared 2-core machine were too "
             "noisy: an A/A control off by 4%; the quantize suite times 2 threads too, with its A/A controls), "
             "onnxruntime's `ORT_ENABLE_ALL` unless a table says "
             "otherwise, interleaved rounds in one process, medians. Read the ratios: absolute "
             "milliseconds drift between runs on a shared machine, ratios measured side by side do not.", "",
             "Versions: " + ", ".join(f"{t} {v}" for t, v in run["versions"].items()) + ".", "",
             "| suite | wall time | tables |", "|---|---:|---|"]
    for name in run["suites"]:
        per_kind = [f.stem for f in sorted(folder.glob(f"{name}-*.md"))]  # suites that keep a file per CPU kind
        files = [name] if (folder / f"{name}.md").exists() or not per_kind else per_kind
        lines.append(f"| {name} | {seconds.get(name, float('nan')):.0f} s | "
                     + ", ".join(f"[{f}.md]({f}.md), [{f}.json]({f}.json)" for f in files) + " |")
    lines.append("")
    lines += headline(folder)
    lines += prune_headline(folder)
    lines += quantize_headline(folder)
    lines += cpu_kinds(folder)
    lines += ["## Every table", ""]
    for name in run["suites"]:
        path = folder / f"{name}.md"
        if path.exists():
            lines += [_demoted(path.read_text()).rstrip(), ""]
    text = "\n".join(lines).rstrip() + "\n"
    (folder / "SUMMARY.md").write_text(text)
    return text


if __name__ == "__main__":
    print(write_summary(quick="--quick" in sys.argv[1:]))
