"""Static int8 quantization in QDQ form, placed where onnxruntime fuses it into integer kernels.

Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference": activations affine uint8 (asymmetric, zero exactly representable), weights
symmetric int8 per output channel, biases int32 at the product of input and weight scales. Ranges
come from calibration samples, streamed (`calibrate`); Q/DQ go exactly where onnxruntime's CPU
provider turns them into QLinearConv, QGemm, QLinearAdd, QLinearConcat, ... (`placement`), and the
result is audited by letting onnxruntime optimize it and listing every op it still runs in float
(`onnxopt.analysis.fusion`). Options add cross-layer equalization and bias correction (Nagel et al.
2019) for depthwise networks, and an accuracy budget that returns the most sensitive layers to float.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import onnx

from onnxopt.graph.core import Graph
from onnxopt.pipeline.contract import Pass, PassContext, PassResult
from onnxopt.pipeline.options import check_patterns, option
from onnxopt.pipeline.registry import register_pass
from onnxopt.runtime.sessions import Feed

from .placement import ALREADY_QUANTIZED

__all__ = ["Quantize", "default_activation_type"]


def default_activation_type() -> str:
    """The activation type of this CPU's target: uint8 on x86 (onnxruntime's x86 kernels multiply
    u8 activations by s8 weights; with int8 activations it leaves residual Conv/Add in float), int8
    on ARM."""
    from .target import native_target
    return native_target().activations


@register_pass
class Quantize(Pass):
    name = "quantize"
    summary = ("static int8 QDQ for the CPU it runs on (u8 activations, s8 per-channel weights, no int16 saturation), "
               "where onnxruntime fuses it and where it pays, audited")
    exact = False
    idempotent = True
    needs_data = True
    needs_static_shapes = True
    stage = 80

    @dataclasses.dataclass(frozen=True)
    class Options:
        method: Literal["minmax", "mean-minmax", "percentile", "entropy", "mse"] = option(
            "minmax", "activation range: minmax, mean-minmax (mean of per-sample extremes), percentile, "
                      "entropy (TensorRT's KL threshold: clips hardest), mse (least squared error)")
        percentile: float = option(99.999, "for method=percentile")
        target: Literal["auto", "x86-vnni", "x86-avx512", "x86-avx2", "arm64"] = option(
            "auto", "the CPU the model is for: auto (this one), x86-vnni, x86-avx512, x86-avx2 (pair-bounded weights: "
                    "no int16 saturation without VNNI), arm64")
        activations: Literal["auto", "uint8", "int8"] = option(
            "auto", "activation type; auto = the target's (uint8 on x86, what its kernels fuse; int8 on ARM)")
        per_channel: bool = option(True, "one weight scale per output channel (false: one per tensor)")
        keep_activations: bool = option(
            False, "keep Relu/Clip nodes even where the Q range makes them redundant (runtimes that strip Q/DQ)")
        exclude: tuple[str, ...] = option((), "nodes that stay float: names, regexes or op types")
        op_types: tuple[str, ...] = option((), "quantize only these op types (default: all onnxruntime fuses; "
                                                    "ConvTranspose, which it does not, only when named here)")
        concat_range_ratio: float = option(
            16.0, "keep a Concat float when its inputs' ranges differ by more than this factor (0: never)")
        samples: int = option(256, "calibration samples (batches) to read")
        holdback: int = option(32, "calibration samples held back to measure agreement with the float model")
        ranges: str | None = option(None, "range cache file (.npz): read if it matches the model, else written")
        cle: bool = option(False, "cross-layer equalization before calibration (Nagel et al. 2019)")
        bias_correction: bool = option(False, "shift biases so each layer's mean output matches float")
        max_drop: float | None = option(
            None, "accuracy budget: return the most sensitive layers to float until the metric drops at most "
                  "this much (agreement with float, or accuracy with --eval; 0.005 = half a point)")
        audit: bool = option(True, "report what onnxruntime leaves in float (fusion audit)")
        speed: bool = option(
            True, "on this CPU's own target, time int8 against float side by side: regions that are slower in int8 "
                  "return to float, and a model int8 does not speed up stays float (unless force)")
        force: bool = option(False, "keep the int8 model even where it is not faster than float on this CPU")

        def __post_init__(self) -> None:
            if not 50 < self.percentile <= 100:
                raise ValueError(f"percentile must be in (50, 100], got {self.percentile:g}")
            if self.samples < 1 or self.holdback < 0:
                raise ValueError("samples must be at least 1 and holdback at least 0")
            if self.concat_range_ratio < 0:
                raise ValueError("concat-range-ratio must be at least 0")
            if self.max_drop is not None and not 0 <= self.max_drop < 1:
                raise ValueError(f"max-drop must be in [0, 1), got {self.max_drop:g}")
            check_patterns("exclude", self.exclude)

    def __init__(self, options: Any = None, /, *, calibration: Iterable[Feed] | None = None,
                 evaluate: Callable[[onnx.ModelProto], float] | None = None, **overrides: Any) -> None:
        """`calibration`: any iterable of feed dicts (overrides the pipeline's); `evaluate`: a
        metric of a model, higher is better, for max-drop (e.g. accuracy on your validation set)."""
        super().__init__(options, **overrides)
        self.calibration = calibration
        self.evaluate = evaluate

    def needs_calibration(self) -> bool:
        if self.calibration is not None:
            return False
        o = self.options
        cached = o.ranges is not None and Path(o.ranges).is_file()
        return not (cached and not o.bias_correction and o.max_drop is None)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        from .driver import quantize_graph

        result = PassResult()
        found = sorted({n.op for n in graph.nodes() if n.op in ALREADY_QUANTIZED})
        if found:
            result.notes.append(f"the model is already quantized ({', '.join(found)}); nothing changed")
            return result
        return quantize_graph(self, graph, ctx, result)
