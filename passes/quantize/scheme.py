"""The affine int8 scheme: scales and zero points from ranges, weights per channel, int32 biases.

For a tensor X with xmin = min(X, 0) and xmax = max(X, 0): s = (xmax - xmin) / (qmax - qmin),
z = round(qmin - xmin / s), Xq = clamp(round(X / s) + z, qmin, qmax), X ~ s * (Xq - z). Zero is
always representable exactly, which is what zero padding and a folded Relu need.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from onnxopt.graph.qdq import worst_same_sign_pair

INT32_MAX = 2**31 - 1
_LIMITS = {"uint8": (0, 255), "int8": (-128, 127)}


@dataclasses.dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor: per tensor (scalar scale) or per channel along `axis`."""

    scale: np.ndarray         # float32, () or [C]
    zero_point: np.ndarray    # uint8/int8/int32, same shape as scale
    axis: int | None = None   # the channel axis when per channel

    @property
    def dtype(self) -> np.dtype:
        return self.zero_point.dtype

    @property
    def limits(self) -> tuple[int, int]:
        return _LIMITS.get(self.dtype.name, (np.iinfo(self.dtype).min, np.iinfo(self.dtype).max))

    def representable(self) -> tuple[float, float]:
        """The real interval the quantized values cover (per tensor)."""
        lo, hi = self.limits
        s, z = float(self.scale), float(self.zero_point)
        return s * (lo - z), s * (hi - z)


def activation_qparams(lo: float, hi: float, dtype: str = "uint8") -> QParams:
    """Asymmetric per-tensor parameters for the range [lo, hi] (widened to contain 0)."""
    qmin, qmax = _LIMITS[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"range [{lo}, {hi}] is not finite")
    scale = (hi - lo) / (qmax - qmin)
    if scale <= 0 or not np.isfinite(scale) or scale < np.finfo(np.float32).tiny:
        scale = 1.0  # an all-zero tensor: any scale represents it exactly
    zero = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return QParams(np.array(scale, np.float32), np.array(zero, dtype=dtype))


def weight_qparams(w: np.ndarray, axis: int | None, *, bits: int = 8, pair_bound: bool = False) -> QParams:
    """Symmetric int8 parameters, per channel along `axis` (None: per tensor). The narrow range
    [-127, 127] (ORT's choice too) keeps -128 out so that w and -w quantize alike.

    `pair_bound`: for CPUs whose u8 x s8 kernel adds two products in int16 and saturates (x86
    without VNNI: VPMADDUBSW sums the products of two neighbouring K values of one output channel).
    u8 activations are never negative, so only two weights of the same sign can overflow, and the
    bound holds for any two of them, whatever order the kernel packs: the scale is the larger of
    (p1 + p2) / 127 and (n1 + n2) / 127, p and n the channel's two largest positive and negative
    magnitudes, so that 255 * (|q1| + |q2|) <= 255 * 128 = 32640 fits int16. Where that is coarser
    than onnxruntime's reduce_range (7-bit weights in [-64, 64], scale m1 / 64), that scale is taken:
    it is safe too."""
    qmax = 2 ** (bits - 1) - 1
    moved = w.reshape(1, -1) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    flat = np.abs(moved)
    span = flat.max(axis=1) if flat.shape[1] else np.zeros(flat.shape[0])
    if pair_bound and flat.shape[1] > 1:
        pairs = worst_same_sign_pair(moved.astype(np.float64))
        bounded = np.minimum(np.maximum(span, pairs) / 127, span / 64)  # the 8-bit scale that keeps pairs in int16
        scale = np.maximum(bounded, span / qmax).astype(np.float32)
    else:
        scale = (span / qmax).astype(np.float32)
    if axis is None:
        scale = scale.reshape(())
    scale = np.where(scale > np.finfo(np.float32).tiny, scale, np.float32(1.0)).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, np.int8), axis)


def _broadcast(q: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    if q.axis is None or q.scale.ndim == 0:
        return q.scale.astype(np.float64), q.zero_point.astype(np.float64)
    shape = [1] * ndim
    shape[q.axis] = -1
    return q.scale.astype(np.float64).reshape(shape), q.zero_point.astype(np.float64).reshape(shape)


def quantize_weight(w: np.ndarray, q: QParams) -> np.ndarray:
    """int8 weights in the narrow range [-127, 127]."""
    return np.clip(np.rint(w.astype(np.float64) / _broadcast(q, w.ndim)[0]), -127, 127).astype(np.int8)


def guard_bias(bias: np.ndarray, input_scale: float, weight: QParams, taps: int = 1) -> tuple[QParams, int]:
    """The weight parameters widened where the int32 bias bias / (input_scale * weight_scale) would
    overflow (tiny input and weight scales: a depthwise filter of near-zero weights with a large
    bias); returns them and how many channels were widened. ORT's quantizer does the same since
    microsoft/onnxruntime#22020, but up to INT32_MAX itself: the kernel adds up to `taps` products
    of at most 255 * 127 to that bias in the same int32 accumulator, which then wraps around. So the
    bias is held below INT32_MAX minus that headroom."""
    scale = np.array(weight.scale, np.float64, copy=True)
    limit = INT32_MAX - taps * 255 * 127
    if limit < INT32_MAX // 2:  # a layer so wide that the headroom would eat half the range
        limit = INT32_MAX // 2
    need = np.abs(bias.astype(np.float64)) / (float(input_scale) * limit)
    if scale.ndim == 0:
        need = np.array(need.max() if need.size else 0.0)
    widened = need > scale
    if not np.any(widened):
        return weight, 0
    scale = np.where(widened, need, scale).astype(np.float32)
    return QParams(scale, weight.zero_point, weight.axis), int(np.count_nonzero(widened))


def quantize_bias(bias: np.ndarray, input_scale: float, weight: QParams) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale input_scale * weight_scale, zero point 0 (what QLinearConv and QGemm read)."""
    scale = (np.float64(input_scale) * weight.scale.astype(np.float64)).astype(np.float32)
    bq = np.clip(np.rint(bias.astype(np.float64) / scale.astype(np.float64)), -INT32_MAX, INT32_MAX).astype(np.int32)
    return bq, scale
