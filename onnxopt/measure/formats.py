"""`onnxopt bench` results as a terminal table, Markdown, CSV and a latency-vs-quality plot
(JSON is BenchReport.as_dict()).

Two tables: latency per model and batch size (the ratios are what to read; milliseconds drift
between runs on a shared machine), then size, cost, memory and fidelity per model.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError
from ..text import human, human_bytes, table
from .sidebyside import BenchReport, Entry

LATENCY_HEADER = ["model", "batch", "median ms", "p90 ms", "p99 ms", "min ms", "ratio", "round ratio", "interval",
                  "per s"]
MODEL_HEADER = ["model", "size", "params", "MACs", "memory", "max abs", "max rel", "cosine", "centred", "top-1 agr",
                "accuracy"]


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def latency_rows(report: BenchReport) -> list[list[str]]:
    rows = []
    for e in report.entries:
        for batch, t in e.timings.items():
            ref = report.reference.timings[batch]
            rows.append([e.name, str(batch), f"{t.median * 1e3:.3f}", f"{t.quantile(0.9) * 1e3:.3f}",
                         f"{t.quantile(0.99) * 1e3:.3f}", f"{min(t.seconds) * 1e3:.3f}",
                         f"{t.median / ref.median:.3f}", f"{t.median_round_ratio:.3f}", _interval(t),
                         f"{batch / t.median:.1f}"])
    return rows


def _interval(t) -> str:
    low, high = t.round_ratio_interval()
    return f"{low:.3f}-{high:.3f}"


def model_rows(report: BenchReport) -> list[list[str]]:
    rows = []
    for e in report.entries:
        fid = e.fidelity
        rows.append([e.name, human_bytes(e.file_bytes), human(e.params), human(e.macs),
                     human_bytes(e.memory_bytes) if e.memory_bytes is not None else "-",
                     "ref" if fid is None else f"{fid.max_abs:.3g}", "ref" if fid is None else f"{fid.max_rel:.3g}",
                     "ref" if fid is None else f"{fid.cosine:.6f}",
                     "ref" if fid is None else _f(fid.centred_cosine, ".6f"),
                     "ref" if fid is None else _f(fid.top1_agreement, ".1%"), _f(e.accuracy, ".2%")])
    return rows


def setup_line(report: BenchReport) -> str:
    s, m = report.settings, report.machine
    rounds = sorted({len(t.seconds) for e in report.entries for t in e.timings.values()})
    return (f"threads {s.threads} (intra-op), ORT optimization '{s.optimization}', {s.session_sets} session set(s) x "
            f"{s.warmup} warm-up, {'/'.join(map(str, rounds))} interleaved rounds per batch; {m['cpu']}, {m['cores']} cores; "
            f"onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, Python {m['python']}")


def data_line(report: BenchReport) -> str:
    shapes = ", ".join(f"{k} {'x'.join(map(str, v)) or 'scalar'}" for k, v in report.inputs.items())
    acc = f"; accuracy on {report.labelled_samples} labelled samples" if report.labelled_samples else ""
    return f"inputs {shapes}; feeds: {report.data}; fidelity on {report.fidelity_samples} samples{acc}"


def _per_output_notes(report: BenchReport) -> list[str]:
    notes = []
    for e in report.entries[1:]:
        if e.fidelity is not None and len(e.fidelity.outputs) > 1:
            parts = [f"{name}: max rel {o.max_rel:.3g}, cosine {o.cosine:.6f}"
                     + (f" (centred {o.centred_cosine:.6f})" if o.centred_cosine is not None else "")
                     for name, o in e.fidelity.outputs.items()]
            notes.append(f"{e.name} per output: " + "; ".join(parts))
    return notes


def headline(report: BenchReport) -> str:
    """One line per model against the reference: what a user asks first."""
    ref = report.reference
    batch = report.batches[0]
    lines = []
    for e in report.entries[1:]:
        t = e.timings[batch]
        parts = [f"latency x{t.median / ref.timings[batch].median:.3f} (median of {len(t.seconds)} interleaved rounds; "
                 f"per-round x{t.median_round_ratio:.3f}, interval {_interval(t)})",
                 f"size {human_bytes(ref.file_bytes)} -> {human_bytes(e.file_bytes)}",
                 f"MACs {human(ref.macs)} -> {human(e.macs)}"]
        if e.accuracy is not None and ref.accuracy is not None:
            parts.append(f"accuracy {ref.accuracy:.2%} -> {e.accuracy:.2%} on {report.labelled_samples} labelled samples")
        elif e.fidelity is not None:
            parts.append(f"max rel output change {e.fidelity.max_rel:.2g}")
        lines.append(f"{e.name} vs {ref.name}: " + "; ".join(parts))
    return "\n".join(lines)


def format_table(report: BenchReport) -> str:
    ref = report.reference.name
    out = [f"reference: {ref}; {setup_line(report)}", data_line(report), "",
           table(latency_rows(report), LATENCY_HEADER, align="lrrrrrrrrr"), "",
           table(model_rows(report), MODEL_HEADER, align="lrrrrrrrrrr")]
    notes = _per_output_notes(report)
    if notes:
        out += [""] + notes
    out += ["", f"ratio = median / {ref}'s median; round ratio = median over rounds of (time / {ref}'s time in "
                "the same round); interval = its 95% confidence interval, widened to every set of sessions' own "
                "median. Below 1 is faster. Fidelity compares each model's outputs with the reference's; "
                "centred = the cosine once the reference's mean over the samples is taken out of both (what the input "
                "decides; a plain cosine hides its loss where most of an output is common to every input)."]
    return "\n".join(out)


def _md_table(header: list[str], rows: list[list[str]], align: str) -> str:
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def format_markdown(report: BenchReport) -> str:
    out = [f"Reference: `{report.reference.name}`; {setup_line(report)}.", "", data_line(report) + ".", "",
           _md_table(LATENCY_HEADER, latency_rows(report), "lrrrrrrrrr"), "",
           _md_table(MODEL_HEADER, model_rows(report), "lrrrrrrrrrr")]
    notes = _per_output_notes(report)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


CSV_HEADER = ["model", "path", "batch", "rounds", "median_ms", "p90_ms", "p99_ms", "min_ms", "ratio_of_medians",
              "median_round_ratio", "throughput_per_s", "file_bytes", "params", "macs", "peak_session_memory_bytes",
              "max_abs", "max_rel", "cosine", "top1_agreement", "accuracy", "threads", "round_ratio_interval_low",
              "round_ratio_interval_high", "centred_cosine"]


def format_csv(report: BenchReport) -> str:
    """One row per model and batch size, raw numbers (no units), for spreadsheets and pandas."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    # the reference agrees with itself wherever the others have a top-1 agreement at all
    ref_top1 = 1.0 if any(e.fidelity and e.fidelity.top1_agreement is not None for e in report.entries) else ""
    ref_centred = 1.0 if any(e.fidelity and e.fidelity.centred_cosine is not None for e in report.entries) else ""
    for e in report.entries:
        fid = e.fidelity
        for batch, t in e.timings.items():
            d = t.as_dict(report.reference.timings[batch])
            w.writerow([e.name, e.path or "", batch, d["rounds"], d["median_ms"], d["p90_ms"], d["p99_ms"],
                        d["min_ms"], d["ratio_of_medians"], d["median_round_ratio"], batch / t.median, e.file_bytes,
                        e.params, _blank(e.macs), _blank(e.memory_bytes),
                        0.0 if fid is None else fid.max_abs, 0.0 if fid is None else fid.max_rel,
                        1.0 if fid is None else fid.cosine,
                        ref_top1 if fid is None else _blank(fid.top1_agreement), _blank(e.accuracy),
                        report.settings.threads, *d["median_round_ratio_interval"],
                        ref_centred if fid is None else _blank(fid.centred_cosine)])
    return buf.getvalue()


def _blank(x):
    return "" if x is None else x


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost (x) with higher-or-equal
    quality (y), strictly better in one of them. NaN points are never on the front."""
    front = []
    for i, (x, y) in enumerate(points):
        if math.isnan(x) or math.isnan(y):
            continue
        dominated = any(not (math.isnan(a) or math.isnan(b)) and a <= x and b >= y and (a < x or b > y)
                        for j, (a, b) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def quality(report: BenchReport) -> tuple[str, list[float]]:
    """The y axis of the plot: accuracy when labelled, else top-1 agreement, else the centred cosine
    with the reference, else the plain one (the reference scores 1)."""
    entries = report.entries
    if all(e.accuracy is not None for e in entries):
        return "top-1 accuracy", [e.accuracy for e in entries]
    others = [e.fidelity for e in entries[1:]]
    if others and all(f.top1_agreement is not None for f in others):
        return "top-1 agreement with reference", [1.0] + [f.top1_agreement for f in others]
    if others and all(f.centred_cosine is not None for f in others):
        return "centred cosine with reference", [1.0] + [f.centred_cosine for f in others]
    return "cosine similarity to reference", [1.0] + [f.cosine for f in others]


def _latency(e: Entry, batch: int) -> float:
    return e.timings[batch].median * 1e3


def require_matplotlib():
    """matplotlib.pyplot on a file-only backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'onnxopt[plot]'") from None
    return plt


def _label(name: str) -> str:
    return name if len(name) <= 32 else Path(name).name  # long paths crowd the plot


def plot_png(report: BenchReport) -> bytes:
    """Median latency (first batch size) against quality, the Pareto front joined by a line."""
    plt = require_matplotlib()
    batch = report.batches[0]
    ylabel, ys = quality(report)
    xs = [_latency(e, batch) for e in report.entries]
    front = sorted(pareto_front(list(zip(xs, ys))), key=lambda i: xs[i])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(xs, ys, color="tab:gray", zorder=2)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "o-", color="tab:red", zorder=3, label="Pareto front")
    for i, (e, x, y) in enumerate(zip(report.entries, xs, ys)):
        # staggered, so that models with the same score and similar latency stay legible
        ax.annotate(_label(e.name), (x, y), textcoords="offset points", xytext=(5, 4 - 11 * (i % 3)), fontsize=8)
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel(f"median latency, ms (batch {batch}, {report.settings.threads} thread(s))")
    ax.set_ylabel(ylabel)
    ax.set_title(f"onnxopt bench: {report.machine['cpu']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot(report: BenchReport, path: str | Path) -> None:
    """plot_png, written atomically to `path`."""
    from ..graph.io import atomic_write_bytes

    atomic_write_bytes(path, plot_png(report))
