"""Helpers for tests of onnxopt and of user passes: seeded feeds, exactness checks, op counts."""
from __future__ import annotations

import collections

import numpy as np
import onnx

from .graph.core import Graph
from .pipeline.contract import Pass, PassContext, PassResult
from .runtime.fidelity import Fidelity, compare
from .runtime.sessions import random_feeds, resolve_input_shapes, run_model


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node))


def make_model(nodes, initializers: dict, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    """A float32 model from nodes, {name: array} initializers and (name, shape) inputs/outputs,
    checked in full."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def parse_model(text: str, seed: int = 0, **initializers: np.ndarray) -> onnx.ModelProto:
    """A model from ONNX text syntax; keyword arrays become initializers (names as keywords)."""
    model = onnx.parser.parse_model(text)
    for name, value in initializers.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def fidelity(before: onnx.ModelProto, after: onnx.ModelProto, *, samples: int = 2, seed: int = 0,
             input_shapes: dict | None = None) -> Fidelity:
    """Run both models in ORT (optimizations off) on the same seeded random inputs and compare."""
    shapes = resolve_input_shapes(before, input_shapes)
    feeds = random_feeds(before, shapes, seed=seed, count=samples)
    return compare(run_model(before, feeds), run_model(after, feeds))


def assert_exact(before: onnx.ModelProto, after: onnx.ModelProto, rtol: float = 1e-5, **kwargs) -> Fidelity:
    fid = fidelity(before, after, **kwargs)
    assert fid.max_rel <= rtol, f"outputs differ: max rel {fid.max_rel:.3g} > {rtol:g} (max abs {fid.max_abs:.3g})"
    return fid


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float32 constants, inputs and outputs widened to float64, for a float64
    evaluation with onnx.reference (onnxruntime has no float64 Conv): the truth that float32
    rewrites are measured against."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            v.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    return model


def apply(p: Pass, model: onnx.ModelProto, **ctx) -> tuple[onnx.ModelProto, PassResult]:
    """Run one pass directly (no pipeline, no verification); returns the new model and the result.
    When the pass reports no change the input model itself is returned."""
    shapes = ctx.pop("input_shapes", None)
    graph = Graph(model, input_shapes=shapes or resolve_input_shapes(model))
    result = p.run(graph, PassContext(input_shapes=graph.input_shapes, **ctx))
    return (graph.to_model() if result.changed else model), result


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`onnxopt ARGS` in-process, its streams captured by pytest's `capsys`: (exit code, stdout,
    stderr). main() always ends with SystemExit."""
    from .cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, expected_code: int, *words: str,
                          prefix: str = "onnxopt: error:") -> str:
    """The CLI's contract for every error a user can cause: the documented exit code, exactly one
    line on stderr, no traceback. Returns the line."""
    assert code == expected_code, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr should be one line, got {len(lines)}: {err!r}"
    assert lines[0].startswith(prefix), lines[0]
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


def masked_original(graph, analysis, keep) -> onnx.ModelProto:
    """The exactness oracle of channel surgery: `graph`'s model with every dense reader's input
    columns of the channels `keep` removes set to zero. Removed channels then reach nothing that is
    kept (couplings only carry them to other removed positions), so for ANY keep-set the graph
    `onnxopt.graph.shrink.shrink(graph, analysis, keep)` makes must compute the same outputs."""
    g = Graph(graph.to_model(), input_shapes=graph.input_shapes)
    for n in g.nodes():
        if n.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or g.constant(n.input(1)) is None:
            continue
        kept = analysis.kept_positions(n.input(0), keep)
        if kept is None:
            continue
        w = g.constant(n.input(1)).copy()
        cin = len(analysis.maps[n.input(0)])
        gone = np.setdiff1d(np.arange(cin), kept)
        group = int(n.attr("group", 1)) if n.op == "Conv" else 1
        if n.op == "Conv" and group > 1:
            per = cin // group
            if per == 1:
                continue  # depthwise: its removed outputs are dropped downstream
            rows = w.shape[0] // group
            for c in gone:
                block, rel = divmod(int(c), per)
                w[block * rows:(block + 1) * rows, rel] = 0
        elif n.op == "Conv" or (n.op == "Gemm" and int(n.attr("transB", 0))):
            w[:, gone] = 0
        else:  # ConvTranspose [Cin, Cout, ...], MatMul and Gemm without transB [K, M]
            w[gone] = 0
        g.set_input_constant(n, 1, w)
    return g.to_model()


def load_benchmark(module: str):
    """`benchmarks.<module>` of this source checkout, for the tests of the benchmark suites:
    benchmarks/ is not installed and the repo root is not on sys.path (pytest's importlib mode), and
    the suites import their siblings relatively, so the package is loaded from its folder first."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (folder / "__init__.py").is_file():
        raise FileNotFoundError(f"{folder}: the benchmarks are in the source checkout, not in an installed onnxopt")
    if "benchmarks" not in sys.modules:
        spec = importlib.util.spec_from_file_location("benchmarks", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"benchmarks.{module}")


# -- small quantizable models (the quantize tests share them; so can a user's pass) ------------

def random_weights(seed: int, *shape: int, std: float = 0.3) -> np.ndarray:
    """Seeded normal float32 weights of `shape`, scaled by `std`."""
    return (std * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def conv_node(x: str, y: str, name: str, cin: int, cout: int, seed: int, k: int = 3, pad: int = 1):
    """A k x k Conv `x` -> `y` with bias, and its {name.w, name.b} initializers."""
    from onnx import helper
    node = helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[pad] * 4)
    return node, {f"{name}.w": random_weights(seed, cout, cin, k, k), f"{name}.b": random_weights(seed + 100, cout)}


def small_cnn() -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Add(residual) -> Relu -> Conv, input 'x' [1, 3, 8, 8]."""
    from onnx import helper
    c1, i1 = conv_node("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv_node("r", "b", "c2", 4, 4, seed=1)
    c3, i3 = conv_node("s", "y", "c3", 4, 4, seed=2)
    nodes = [c1, helper.make_node("Relu", ["a"], ["r"], name="relu1"), c2,
             helper.make_node("Add", ["r", "b"], ["sum"], name="add"),
             helper.make_node("Relu", ["sum"], ["s"], name="relu2"), c3]
    return make_model(nodes, {**i1, **i2, **i3}, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])


def declared_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The inputs' declared dims as ints (a dynamic dim reads 0)."""
    return {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in model.graph.input}


def quantized(model: onnx.ModelProto, samples: int = 16, **options) -> tuple[onnx.ModelProto, PassResult]:
    """quantize:speed=false calibrated on `samples` seeded random inputs (the placement, not the
    speed verdict, is what such tests check)."""
    from .passes import Quantize
    feeds = random_feeds(model, declared_shapes(model), seed=1, count=samples)
    return apply(Quantize(speed=False, calibration=feeds, **options), model)
