"""Foundation numbers: the graph layer scales linearly, and `onnxopt run` on ResNet-50 is fast.

1. Load + fold-bn + save of synthetic Conv+BN+Relu chains with residual Adds (the shape used in
   ../shared/research/style.md §9.1) at 1k..10k nodes, in-process, median of 3 runs each.
2. `onnxopt run resnet50.onnx --passes fold-bn,cleanup` with verification on, as a subprocess (the
   user's wall time, interpreter start-up included), median of 3.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt import models
from onnxopt.graph.core import Graph
from onnxopt.graph.io import load_model, save_model
from onnxopt.passes import FoldBatchNorm
from onnxopt.pipeline.contract import PassContext

from .common import machine, median, write


def chain_model(blocks: int, channels: int = 16, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """`blocks` x [Conv -> BN -> Relu], with a residual Add every second block (3.5 nodes/block)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    skip = x
    for b in range(blocks):
        w = (rng.standard_normal((channels, channels, 3, 3)) * (0.5 / np.sqrt(channels * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{b}"))
        for k, v in zip("gbmv", (rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                                 rng.normal(0, 0.1, channels), rng.uniform(0.5, 1.5, channels))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"{k}{b}"))
        nodes.append(helper.make_node("Conv", [x, f"w{b}"], [f"c{b}"], kernel_shape=[3, 3], pads=[1] * 4))
        nodes.append(helper.make_node("BatchNormalization", [f"c{b}", f"g{b}", f"b{b}", f"m{b}", f"v{b}"], [f"n{b}"]))
        nodes.append(helper.make_node("Relu", [f"n{b}"], [f"r{b}"]))
        x = f"r{b}"
        if b % 2 == 1:
            nodes.append(helper.make_node("Add", [x, skip], [f"a{b}"]))
            x = skip = f"a{b}"
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def time_fold(path: Path, out: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    model = load_model(path)
    graph = Graph(model)
    result = FoldBatchNorm().run(graph, PassContext())
    save_model(graph.to_model(), out)
    return time.perf_counter() - t0, int(result.stats.get("bn_folded", 0))


def fold_zoo(names: list[str]) -> list[dict]:
    """fold-bn on each zoo model: BN left, max rel error vs the original, and each model's error vs
    a float64 evaluation (onnx.reference) next to onnxruntime's own Conv+BN fusion."""
    from onnx.reference import ReferenceEvaluator

    from onnxopt.pipeline.run import Pipeline
    from onnxopt.runtime.fidelity import compare
    from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
    from onnxopt.testing import as_float64, count_ops

    rows = []
    for name in names:
        model = models.build(name)
        t0 = time.perf_counter()
        run = Pipeline.parse("fold-bn", verify=False).run(model)
        seconds = time.perf_counter() - t0
        feeds = random_feeds(model, resolve_input_shapes(model), seed=0, count=1)
        truth = ReferenceEvaluator(as_float64(model)).run(None, {"input": feeds[0]["input"].astype(np.float64)})[0]
        outs = {"original": run_model(model, feeds), "folded": run_model(run.model, feeds),
                "ort_fused": run_model(model, feeds, optimization="all")}
        scale = float(np.abs(truth).max())
        vs_truth = {k: float(np.abs(v[0]["output"] - truth).max() / scale) for k, v in outs.items()}
        fold = run.report.passes[0]
        rows.append({"model": name, "bn_before": count_ops(model).get("BatchNormalization", 0),
                     "bn_after": count_ops(run.model).get("BatchNormalization", 0),
                     "lone_bn_declined": sum("nothing to fold into" in s.reason for s in fold.skipped),
                     "max_rel_vs_original": compare(outs["original"], outs["folded"]).max_rel,
                     "vs_float64": vs_truth, "pass_seconds": seconds})
    return rows


def main(argv: list[str] | None = None) -> dict:
    quick = "--quick" in (argv or [])
    scale = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        for blocks in ([286] if quick else [286, 715, 1430, 2858]):
            path = tmpdir / f"chain{blocks}.onnx"
            model = chain_model(blocks)
            onnx.save(model, path)
            n = len(model.graph.node)
            times, folded = zip(*(time_fold(path, tmpdir / "out.onnx") for _ in range(3)))
            scale.append({"nodes": n, "bn_folded": folded[0], "seconds_median": median(times),
                          "us_per_node": median(times) / n * 1e6})
        r50 = tmpdir / "resnet50.onnx"
        onnx.save(models.build("resnet50"), r50)
        cli = [sys.executable, "-m", "onnxopt", "run", str(r50), "--passes", "fold-bn,cleanup", "-o",
               str(tmpdir / "r50_out.onnx")]
        walls = []
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            subprocess.run(cli, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    zoo = fold_zoo(["resnet18-tiny"] if quick else [n for n in models.available() if "tiny" not in n
                                                     and "deploy" not in n])
    data = {"machine": machine(), "graph_scale": scale, "fold_bn_zoo": zoo,
            "resnet50_run": {"command": "onnxopt run resnet50.onnx --passes fold-bn,cleanup (verify on)",
                             "seconds": walls, "seconds_median": median(walls)}}
    md = ["# Foundation benchmarks", "",
          f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores; onnx {data['machine']['onnx']}, "
          f"onnxruntime {data['machine']['onnxruntime']}, Python {data['machine']['python']}.", "",
          "## Load + fold-bn + save (in-process, median of 3)", "",
          "| nodes | BN folded | seconds | µs/node |", "|---:|---:|---:|---:|"]
    md += [f"| {r['nodes']:,} | {r['bn_folded']:,} | {r['seconds_median']:.3f} | {r['us_per_node']:.1f} |" for r in scale]
    md += ["", "## `onnxopt run` on zoo ResNet-50 (fold-bn + cleanup, verification on, wall time incl. start-up)", "",
           f"median {median(walls):.2f} s over {len(walls)} runs: " + ", ".join(f"{w:.2f}" for w in walls)]
    md += ["", "## fold-bn on the zoo (full size, one seeded random input)", "",
           "Max relative error = max |difference| / max |reference output|. The last three columns measure each "
           "float32 model against a float64 evaluation of the original (onnx.reference): deep float32 nets are "
           "only that accurate, and onnxruntime's own Conv+BN fusion (`ORT_ENABLE_ALL`) lands as far.", "",
           "| model | BN before | BN after (identity BN, nothing to fold into) | max rel vs original | original vs f64 "
           "| folded vs f64 | ORT-fused vs f64 | fold-bn time |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['bn_before']} | {r['bn_after']} ({r['lone_bn_declined']}) | {r['max_rel_vs_original']:.2e} "
           f"| {r['vs_float64']['original']:.2e} | {r['vs_float64']['folded']:.2e} | {r['vs_float64']['ort_fused']:.2e} "
           f"| {r['pass_seconds']:.2f} s |" for r in zoo]
    write("foundation", data, "\n".join(md), quick=quick)
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
