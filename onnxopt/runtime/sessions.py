"""onnxruntime sessions and input feeds built from a model's input specs.

Verification runs with ORT's graph optimizations disabled so that ORT's own fusions (it folds
Conv+BN at load time, for example) cannot hide a wrong rewrite.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import BadData, BadModel, DynamicShape, first_line
from ..graph.probes import conv_pair

OptLevel = Literal["disabled", "basic", "extended", "all"]
_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

Feed = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    # positive ints for fixed dims, a str (symbolic) or None for every dynamic one: exporters write
    # those as names, '?', 0 or -1 (PaddlePaddle); None for the whole shape when the rank is not declared
    shape: tuple | None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None) for d in tt.shape.dim
        ) if tt.HasField("shape") else None
        specs.append(InputSpec(vi.name, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type), dims))
    return specs


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse `name:1,3,224,224` (the --input-shape flag)."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise BadData(f"--input-shape '{text}': expected NAME:D1,D2,... with positive integers, e.g. input:1,3,224,224")
    return name, shape


def resolve_input_shapes(model: onnx.ModelProto, overrides: dict[str, Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """Static shapes for every graph input: known dims as declared, an unknown batch (first) dim as 1,
    anything else from `overrides`, or a DynamicShape error naming the flag to use."""
    overrides = dict(overrides or {})
    specs = input_specs(model)
    unknown = set(overrides) - {s.name for s in specs}
    if unknown:
        raise BadData(f"--input-shape names no model input: {', '.join(sorted(unknown))} "
                      f"(inputs: {', '.join(s.name for s in specs)})")
    shapes = {}
    for s in specs:
        if s.name in overrides:
            shapes[s.name] = _fit(s, tuple(int(d) for d in overrides[s.name]))
            continue
        if s.shape is None:
            raise DynamicShape(f"input '{s.name}' declares no shape; give one with --input-shape {s.name}:N,N,...")
        resolved = []
        for axis, d in enumerate(s.shape):
            if isinstance(d, int):
                resolved.append(d)
            elif axis == 0:
                resolved.append(1)
            else:
                raise DynamicShape(f"input '{s.name}' has dynamic dims {shape_text(s.shape)}; give static ones with "
                                   f"--input-shape {s.name}:{','.join(str(x) if isinstance(x, int) else 'N' for x in s.shape)}")
        shapes[s.name] = tuple(resolved)
    return shapes


def shape_text(shape: tuple | None) -> str:
    """`[?, 3, ?, ?]`: fixed dims as numbers, every dynamic one as '?' (`[...]`: rank not declared)."""
    return "[...]" if shape is None else "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def _fit(spec: InputSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """An --input-shape for `spec`: any dynamic dim takes any size; a fixed one must match."""
    if spec.shape is None:
        return shape
    if len(shape) != len(spec.shape):
        raise BadData(f"--input-shape {spec.name}: {list(shape)} does not fit the model's declared shape "
                      f"{shape_text(spec.shape)}: {len(shape)} dims given, the model declares {len(spec.shape)}")
    for axis, (declared, given) in enumerate(zip(spec.shape, shape)):
        if isinstance(declared, int) and declared != given:
            raise BadData(f"--input-shape {spec.name}: {list(shape)} does not fit the model's declared shape "
                          f"{shape_text(spec.shape)}: dim {axis} is fixed at {declared}, got {given}")
    return shape


def random_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], *, seed: int = 0, count: int = 1) -> list[Feed]:
    """Seeded random inputs: standard normal floats, small non-negative integers, random booleans."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for s in input_specs(model):
            shape = shapes[s.name]
            if np.issubdtype(s.dtype, np.floating):
                feed[s.name] = rng.standard_normal(shape).astype(s.dtype)
            elif s.dtype == np.bool_:
                feed[s.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                feed[s.name] = rng.integers(0, 4, shape).astype(s.dtype)
        feeds.append(feed)
    return feeds


def check_feeds(model: onnx.ModelProto, feeds: Iterable[Feed], where: str = "data") -> None:
    """Refuse feeds whose names, dtypes or ranks do not match the model's inputs, in one line."""
    specs = {s.name: s for s in input_specs(model)}
    for i, feed in enumerate(feeds):
        missing = set(specs) - set(feed)
        extra = set(feed) - set(specs)
        if missing or extra:
            raise BadData(f"{where}: sample {i} has inputs {sorted(feed)}, the model wants {sorted(specs)}")
        for name, arr in feed.items():
            spec = specs[name]
            if arr.dtype != spec.dtype:
                raise BadData(f"{where}: input '{name}' has dtype {arr.dtype}, the model wants {spec.dtype}")
            if spec.shape is not None and (len(arr.shape) != len(spec.shape) or any(
                    isinstance(d, int) and d != a for d, a in zip(spec.shape, arr.shape))):
                raise BadData(f"{where}: input '{name}' has shape {list(arr.shape)}, the model wants "
                              f"{shape_text(spec.shape)}")


def verification_threads() -> int:
    """Intra-op threads for runs whose outputs, not their speed, matter (verification): every core
    this process may use, up to 8 (a verified ResNet-50 run is 0.3 s shorter on 2 cores). The count
    can move outputs in their last bits (about 1e-6 relative: a reduction split differently), so a
    model and its rewrite are always run at the same count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def make_session(model: onnx.ModelProto | bytes, *, optimization: OptLevel = "disabled", threads: int = 1,
                 optimized_model_path: str | None = None, spinning: bool = True) -> ort.InferenceSession:
    """`spinning=False` stops idle intra-op threads from spinning after a run: where several
    sessions take turns, a spinning pool would take cores from the session that runs next."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[optimization]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # errors reach the user as one line from the exception, not as ORT's log
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
        raise BadModel(f"onnxruntime cannot load the model: {first_line(exc, 200)}") from None


def inputs_for(session: ort.InferenceSession, feed: Feed) -> Feed:
    """The entries of `feed` the session takes: the same feeds serve a model and its optimized form
    after cleanup removed an unused input."""
    wanted = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feed.items() if k in wanted}


def run_feeds(session: ort.InferenceSession, feeds: Sequence[Feed]) -> list[Feed]:
    """Outputs per feed (see inputs_for)."""
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, inputs_for(session, feed)))) for feed in feeds]


def run_model(model: onnx.ModelProto | bytes, feeds: Sequence[Feed], *, optimization: OptLevel = "disabled",
              threads: int = 1) -> list[Feed]:
    return run_feeds(make_session(model, optimization=optimization, threads=threads), feeds)


@functools.lru_cache(maxsize=None)
def nchwc_block() -> int:
    """Channel block of onnxruntime's NCHWc Conv kernels on this machine: a Conv reading a
    channel count that is not a multiple of it stays out of the blocked layout and runs slower
    (MLAS picks 8 or 16 by CPU, not simply by the CPU's flags: 8 on an AVX-512 AMD EPYC). Found by
    asking onnxruntime: the optimized graph of a 40-channel and a 32-channel conv pair tells; 1
    where the layout is not used at all."""
    import tempfile

    def blocked(c: int) -> bool:
        model = conv_pair(c)
        with tempfile.TemporaryDirectory() as tmp:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            optimized = onnx.load(opts.optimized_model_filepath)
        return any(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in optimized.graph.node)

    try:
        if not blocked(32):
            return 1
        return 8 if blocked(40) else 16
    except Exception:  # noqa: BLE001 - a probe that fails costs a rounding, never a run
        return 8
