"""The jobs users would otherwise give to peer tools, one call each, next to onnxopt's own.

Every job is `(model, calib) -> ModelProto`: `calib` is a list of feed dicts (real samples for the
quantizers; None for jobs that need none). Each calls its tool the way its documentation shows,
with that tool's defaults unless the job's name says otherwise; the JOBS table says what each one
runs and what a reader of the results should know about it. A tool that is not installed raises
PeerUnavailable (onnxoptimizer comes with the optional `bench` extra; onnxsim and onnxruntime are
core dependencies). Temporary files go to a temporary directory, never next to the model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from onnxopt.errors import first_line

Job = Callable[[onnx.ModelProto, "list[dict[str, np.ndarray]] | None"], onnx.ModelProto]


class PeerUnavailable(Exception):
    """The tool behind a job is not installed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def warm_imports() -> None:
    """Import every available tool once, so that no job's time includes a one-time import."""
    for module in ("onnxopt.passes", "onnxsim", "onnxoptimizer", "onnxruntime.quantization"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def _require(module: str, extra: str | None = None) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = f"pip install 'onnxopt[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise PeerUnavailable(f"{module} is not installed ({how}): {exc}") from None


def _need_calib(calib: list[dict[str, np.ndarray]] | None, job: str) -> list[dict[str, np.ndarray]]:
    if not calib:
        raise ValueError(f"{job} calibrates: give it calibration samples")
    return calib


_notes: list[str] = []


def note(text: str) -> None:
    """Record something a job did that the results should say (a fallback it took)."""
    _notes.append(text)


def take_notes() -> list[str]:
    """The notes recorded since the last call."""
    taken = list(_notes)
    _notes.clear()
    return taken


# -- onnxopt ---------------------------------------------------------------------------------------

def _onnxopt(model: onnx.ModelProto, spec: str,
             calibration: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    """`onnxopt run --passes SPEC [--calib ...]` in-process: verification on, as the CLI runs it by
    default (on the last calibration samples when there are any)."""
    from onnxopt.pipeline.run import Pipeline
    from onnxopt.pipeline.spec import parse_spec

    run = Pipeline(parse_spec(spec), calibration=calibration).run(model)
    if run.report.problems:
        bad = run.report.problems[0]
        raise RuntimeError(f"onnxopt {bad.name} {bad.status}: {bad.message}")
    return run.model


def onnxopt_fold_bn(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    return _onnxopt(model, "fold-bn,cleanup")


def onnxopt_fold_bn_reparam(model: onnx.ModelProto,
                            calib: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    return _onnxopt(model, "fold-bn,reparam,cleanup")


def onnxopt_quantize(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    # the pass's defaults: target=auto (this CPU's format: s8 per-channel weights, pair-bounded without
    # VNNI), u8 activations, minmax ranges, Q/DQ placed where onnxruntime fuses them, regions slower in
    # int8 kept float (the whole model when int8 does not pay); up to 32 samples held back for its checks
    return _onnxopt(model, "fold-bn,quantize", _need_calib(calib, "onnxopt quantize"))


def onnxopt_prune_30(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    # the calibration samples drive the least-squares recovery of the layers that read pruned channels
    return _onnxopt(model, "fold-bn,prune:ratio=0.3", _need_calib(calib, "onnxopt prune with recovery"))


# -- onnxoptimizer ---------------------------------------------------------------------------------

def onnxoptimizer_fuse_bn(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    # The call onnxoptimizer's README shows. Its fuse_bn_into_conv does not compute the fused weights:
    # it writes Cast/Sqrt/Div/Mul/... nodes that compute them at run time and leaves them for a
    # later constant folder (ORT's at session load); a BN whose parameters are not initializers
    # (torch exports route shared ones through Identity) is left alone: eliminate_identity first
    # would fix that, but the user has to know to ask for it.
    onnxoptimizer = _require("onnxoptimizer", "bench")
    return onnxoptimizer.optimize(model, ["fuse_bn_into_conv"])


# -- onnxsim ---------------------------------------------------------------------------------------

def onnxsim_simplify(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    onnxsim = _require("onnxsim")
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim.simplify returned ok=False (its own check rejected the result)")
    return simplified


def onnxsim_quantize(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    # Defaults: QDQ on the inputs of Conv/MatMul/Gemm only, uint8 activations, int8 per-channel
    # weights, minmax ranges.
    onnxsim = _require("onnxsim")
    return onnxsim.quantize_static(model, calibration_data=_need_calib(calib, "onnxsim.quantize_static"))


def onnxsim_simplify_quantize(model: onnx.ModelProto,
                              calib: list[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    # quantize_static only quantizes a Conv whose input has a known float type: an export without
    # value_info gets only its first Conv quantized. simplify's shape inference supplies the types.
    return onnxsim_quantize(onnxsim_simplify(model), calib)


def onnxsim_prune(model: onnx.ModelProto, sparsity: float = 0.3) -> onnx.ModelProto:
    # onnxsim's pruning looks for Conv -> Conv chains and expects BN already folded (its docstring):
    # onnxopt fold-bn runs first, and its time is part of this job's time.
    onnxsim = _require("onnxsim")
    return onnxsim.apply_structured_pruning(onnxopt_fold_bn(model), sparsity=sparsity, importance_norm="l1")


def onnxsim_prune_30(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    return onnxsim_prune(model, 0.3)


# -- onnxruntime.quantization ----------------------------------------------------------------------

def _reader(feeds: list[dict[str, np.ndarray]]):
    """A CalibrationDataReader over a list of feeds (ORT only gives the interface)."""
    quantization = _require("onnxruntime.quantization")

    class ListReader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rest, None)

        def rewind(self) -> None:
            self.rest = iter(feeds)

    return ListReader()


def _ort_quantize(source: Path, calib: list[dict[str, np.ndarray]], tmp: Path, **kwargs) -> onnx.ModelProto:
    quantization = _require("onnxruntime.quantization")
    out = tmp / "quantized.onnx"
    quantization.quantize_static(source, out, _reader(calib), **kwargs)
    return onnx.load(out)


def _saved(model: onnx.ModelProto, tmp: Path) -> Path:
    # ORT's quantization tools get a path: given a ModelProto, quant_pre_process moves its weights
    # to external data in place, corrupting the caller's model.
    path = tmp / "model.onnx"
    onnx.save(model, path)
    return path


def ort_quantize_default(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    # quantize_static's defaults: QDQ, QInt8 activations and weights, per-tensor, MinMax.
    calib = _need_calib(calib, "onnxruntime quantize_static")
    with tempfile.TemporaryDirectory(prefix="peers-ort-") as tmp:
        return _ort_quantize(_saved(model, Path(tmp)), calib, Path(tmp))


def ort_quantize_default_folded(model: onnx.ModelProto,
                                calib: list[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    # The same defaults on the BN-folded model: without quant_pre_process, quantize_static puts Q/DQ
    # between each Conv and its BN, where ORT can no longer fuse them.
    return ort_quantize_default(onnxopt_fold_bn(model), calib)


def has_vnni() -> bool:
    """Whether onnxruntime's u8 x s8 kernel is exact on this CPU (VNNI, AMX, ARM dot products): without
    it U8S8 weights need reduce_range (7 bits) to avoid VPMADDUBSW saturation (anchors.md §1.1).
    Asked of onnxruntime by onnxopt.runtime.cpu's probe; the flags decide where the probe cannot run."""
    from onnxopt.runtime.cpu import this_cpu, u8s8_saturates

    saturates = u8s8_saturates()
    return (not saturates) if saturates is not None else this_cpu().kind == "x86-vnni"


@contextlib.contextmanager
def _working_directory(path: Path):
    # contextlib.chdir is Python 3.11+; we support 3.10
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _pre_process(source: Path, tmp: Path) -> Path:
    """quant_pre_process, as ORT's docs ask before quantize_static; without its symbolic shape
    inference when that fails (it needs sympy and does not handle every graph)."""
    quantization = _require("onnxruntime.quantization")
    prepared = tmp / "prepared.onnx"
    # When its symbolic shape inference gives up, onnxruntime saves sym_shape_infer_temp.onnx and its
    # external data into the working directory: run it from the scratch directory.
    with _working_directory(tmp):
        try:
            quantization.quant_pre_process(source, prepared)
        except Exception as exc:  # noqa: BLE001 - symbolic shape inference raises many types
            first = first_line(exc, None).split(". ")[0]
            note(f"quant_pre_process ran with skip_symbolic_shape=True ({first[:160]})")
            quantization.quant_pre_process(source, prepared, skip_symbolic_shape=True)
    return prepared


def _ort_uint8_activations(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None, weights: str,
                          **options) -> onnx.ModelProto:
    """quant_pre_process, then quantize_static with uint8 activations, per-channel `weights` (QInt8 or
    QUInt8) weights: onnxruntime's recipes for x86."""
    quantization = _require("onnxruntime.quantization")
    calib = _need_calib(calib, "onnxruntime quantize_static")
    with tempfile.TemporaryDirectory(prefix="peers-ort-") as tmp:
        prepared = _pre_process(_saved(model, Path(tmp)), Path(tmp))
        return _ort_quantize(prepared, calib, Path(tmp), activation_type=quantization.QuantType.QUInt8,
                             weight_type=getattr(quantization.QuantType, weights), per_channel=True, **options)


def ort_quantize_u8s8(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    # uint8 activations: with int8 ones ORT's x86 kernels leave residual Convs and Adds in float
    # between Q/DQ (anchors.md §1.4); 7-bit weights where its u8 x s8 kernel saturates (its docs' advice)
    return _ort_uint8_activations(model, calib, "QInt8", reduce_range=not has_vnni())


def ort_quantize_u8u8(model: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    # onnxruntime's other advice for x86 without VNNI: uint8 weights, whose kernel does not saturate
    return _ort_uint8_activations(model, calib, "QUInt8")


# -- the table -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PeerJob:
    key: str            # JSON key
    label: str          # table row
    run: Job
    calibrates: bool    # needs calibration samples
    note: str           # what the call is, for the results' notes


JOBS = [
    PeerJob("onnxopt_fold_bn", "onnxopt fold-bn", onnxopt_fold_bn, False,
            "onnxopt Pipeline fold-bn,cleanup (verification on, as `onnxopt run`)"),
    PeerJob("onnxopt_fold_bn_reparam", "onnxopt fold-bn+reparam", onnxopt_fold_bn_reparam, False,
            "onnxopt Pipeline fold-bn,reparam,cleanup (verification on)"),
    PeerJob("onnxoptimizer_fuse_bn", "onnxoptimizer fuse_bn", onnxoptimizer_fuse_bn, False,
            "onnxoptimizer.optimize(model, ['fuse_bn_into_conv']): writes run-time nodes that compute the "
            "fused weights (ORT folds them at load); BNs whose parameters come from an Identity stay"),
    PeerJob("onnxsim_simplify", "onnxsim simplify", onnxsim_simplify, False,
            "onnxsim.simplify(model), defaults (fuses BN through constant folding)"),
    PeerJob("ort_quantize_default", "ORT quantize_static default", ort_quantize_default, True,
            "onnxruntime.quantization.quantize_static defaults: QDQ, S8 activations, S8 weights, per-tensor, MinMax"),
    PeerJob("ort_quantize_default_folded", "ORT quantize_static default, after onnxopt fold-bn",
            ort_quantize_default_folded, True,
            "onnxopt fold-bn,cleanup, then quantize_static with its defaults: separates the cost of Q/DQ "
            "between Conv and BN (which ORT cannot fuse) from that of S8 activations"),
    PeerJob("ort_quantize_u8s8", "ORT quantize_static U8S8 per-channel", ort_quantize_u8s8, True,
            "quant_pre_process, then quantize_static QDQ, U8 activations, S8 weights, per_channel=True, "
            "reduce_range only without VNNI"),
    PeerJob("onnxopt_quantize", "onnxopt quantize", onnxopt_quantize, True,
            "onnxopt Pipeline fold-bn,quantize with the calibration samples as calibration data, the pass's defaults: "
            "QDQ, U8 activations, S8 per-channel weights, minmax ranges, placed where onnxruntime fuses them "
            "(verification on)"),
    PeerJob("onnxsim_quantize", "onnxsim quantize_static", onnxsim_quantize, True,
            "onnxsim.quantize_static defaults: QDQ on Conv/MatMul/Gemm inputs, U8 activations, "
            "S8 per-channel weights, minmax; only layers whose input has a known float type (value_info "
            "or a graph input) are quantized"),
    PeerJob("onnxsim_simplify_quantize", "onnxsim simplify + quantize_static", onnxsim_simplify_quantize, True,
            "onnxsim.simplify, then onnxsim.quantize_static defaults (simplify's shape inference gives "
            "quantize_static the tensor types it needs to quantize Convs past the first)"),
    PeerJob("onnxsim_prune_30", "onnxsim prune 30% (after onnxopt fold-bn)", onnxsim_prune_30, False,
            "onnxopt fold-bn,cleanup, then onnxsim.apply_structured_pruning(sparsity=0.3, importance_norm='l1'); "
            "no recovery"),
    PeerJob("onnxopt_prune_30", "onnxopt prune 30% + recovery", onnxopt_prune_30, True,
            "onnxopt Pipeline fold-bn,prune:ratio=0.3 with the calibration samples as calibration data: 30% of every "
            "coupled channel group removed, ranked by output energy on those samples (criterion=auto), then the "
            "layers that read pruned channels refit by least squares (verification on)"),
]
