"""reparam: the train-time RepVGG-A0 / MobileOne-S0 graphs, reparameterized by onnxopt, against the
deploy form built directly, timed side by side in one process.

For each model: `reparam` (and `fold-bn,reparam`) through the verifying pipeline; structure and
size before/after; max relative output error vs the train-time graph next to the float32 noise
floor (how far onnxruntime's own graph optimizations move the train-time graph's outputs); then
latency of deploy form, reparameterized, train-time form and a second deploy session (the A/A
control), interleaved, ORT_ENABLE_ALL, one intra-op thread, batch 1.
"""
from __future__ import annotations

import sys
import time

from onnxopt import models
from onnxopt.analysis.cost import model_stats
from onnxopt.bench import interleave, session_runner
from onnxopt.pipeline import Pipeline
from onnxopt.runtime import random_feeds, resolve_input_shapes, run_model
from onnxopt.testing import count_ops
from onnxopt.verify import compare

from .common import machine, write

THREADS = 1


def conv_signature(model) -> list[tuple]:
    """(kernel_shape, strides, pads, group) of each Conv, in graph order: the deploy structure."""
    from onnx import helper

    out = []
    for n in model.graph.node:
        if n.op_type == "Conv":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            out.append((tuple(a.get("kernel_shape", ())), tuple(a.get("strides", ())), tuple(a.get("pads", ())),
                        a.get("group", 1)))
    return out


def measure(name: str, budget: float) -> dict:
    train, deploy = models.build(name), models.build(f"{name}-deploy")
    row: dict = {"model": name}
    for spec in ("reparam", "fold-bn,reparam"):
        t0 = time.perf_counter()
        run = Pipeline.parse(spec).run(train)
        row[spec] = {"pipeline_seconds": time.perf_counter() - t0,
                     "passes": {p.name: {"status": p.status, "stats": p.stats} for p in run.report.passes}}
        if spec == "reparam":
            merged = run.model
    feeds = random_feeds(train, resolve_input_shapes(train), seed=0, count=2)
    reference = run_model(train, feeds)
    row["max_rel_vs_train"] = compare(reference, run_model(merged, feeds)).max_rel
    row["ort_all_vs_disabled_on_train"] = compare(reference, run_model(train, feeds, optimization="all")).max_rel
    row["same_structure_as_deploy"] = conv_signature(merged) == conv_signature(deploy)
    row["stats"] = {k: model_stats(m).as_dict() for k, m in (("train", train), ("reparam", merged),
                                                             ("deploy", deploy))}
    for v in row["stats"].values():
        v.pop("ops", None)
    variants = (("train", train), ("reparam", merged), ("deploy", deploy))
    row["bytes"] = {k: m.ByteSize() for k, m in variants}
    row["conv_counts"] = {k: count_ops(m).get("Conv", 0) for k, m in variants}
    feed = feeds[0]
    runners = [("deploy", session_runner(deploy, feed, threads=THREADS)),
               ("reparam", session_runner(merged, feed, threads=THREADS)),
               ("train", session_runner(train, feed, threads=THREADS)),
               ("deploy (A/A)", session_runner(deploy, feed, threads=THREADS))]

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r  {name}: round {done}", end="", file=sys.stderr, flush=True)
        elif done % 50 == 0:
            print(f"  {name}: round {done}", file=sys.stderr, flush=True)

    timings = interleave(runners, warmup=3, rounds=400, budget_seconds=budget, progress=progress)
    print(file=sys.stderr)
    row["latency"] = [t.as_dict(timings[0]) for t in timings]
    return row


def main(argv: list[str] | None = None) -> dict:
    quick = "--quick" in (argv or [])
    names = ["repvgg_a0-tiny", "mobileone_s0-tiny"] if quick else ["repvgg_a0", "mobileone_s0"]
    rows = [measure(n, 5.0 if quick else 90.0) for n in names]
    data = {"machine": machine(), "threads": THREADS, "ort_optimization": "all", "rows": rows}
    md = ["# reparam: reparameterized vs deploy form vs train-time form", "",
          f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores; onnxruntime "
          f"{data['machine']['onnxruntime']}; {THREADS} intra-op thread, ORT_ENABLE_ALL, batch 1, 224x224 "
          "(32x32 for -tiny). Latency: rounds interleaved in one process (order alternating), medians; "
          "ratios are against the deploy form built directly. `deploy (A/A)` is a second session of the "
          "same deploy model: the noise floor.", "",
          "| model | variant | median ms | p90 ms | ratio of medians | median per-round ratio | rounds |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for t in r["latency"]:
            md.append(f"| {r['model']} | {t['name']} | {t['median_ms']:.2f} | {t['p90_ms']:.2f} | "
                      f"{t['ratio_of_medians']:.3f} | {t['median_round_ratio']:.3f} | {t['rounds']} |")
    md += ["", "| model | Conv train → reparam (deploy) | params train → reparam | MACs train → reparam | "
           "same Conv structure as deploy | max rel vs train | float32 floor (ORT all vs disabled) | "
           "reparam time | fold-bn,reparam time |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        s = r["stats"]
        conv = r["conv_counts"]
        md.append(f"| {r['model']} | {conv['train']} → {conv['reparam']} ({conv['deploy']}) | "
                  f"{s['train']['params']:,} → {s['reparam']['params']:,} | {s['train']['macs']:,} → "
                  f"{s['reparam']['macs']:,} | {'yes' if r['same_structure_as_deploy'] else 'NO'} | "
                  f"{r['max_rel_vs_train']:.2e} | {r['ort_all_vs_disabled_on_train']:.2e} | "
                  f"{r['reparam']['pipeline_seconds']:.2f} s | {r['fold-bn,reparam']['pipeline_seconds']:.2f} s |")
    md += ["", "Pipeline times include onnxopt's own verification (checker + two onnxruntime runs per pass)."]
    write("reparam", data, "\n".join(md))
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
