"""Kernel algebra for reparameterization: every linear branch as one convolution, and their sum.

A branch is held as the convolution it computes, in float64:

    y = conv(x, weight, strides, dilations, pads, group) + bias

An identity, a BatchNormalization or a per-channel Mul of the input, and an AveragePool, touch each
channel on its own: their weight is [C, 1, k...] and `group` is None ("diagonal"), which places
into any group count as a delta at input channel i % (C / group) (RepVGG's identity kernel).

Summing branches (DBB's transform II, RepVGG's 1x1 padding, ACNet's 1xk/kx1 into the kxk centre,
DBB's transform VI) places each kernel's taps where its sampling window sits inside the merged
window. Composing a 1x1 convolution with the one after it is DBB's transform III.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


class Decline(Exception):
    """The branches cannot be merged exactly; the message says why, in one line."""


@dataclasses.dataclass
class Kernel:
    weight: np.ndarray          # float64 [Cout, Cin/group, *k]
    bias: np.ndarray            # float64 [Cout]
    group: int | None           # None: diagonal ([C, 1, *k], one input channel per output channel)
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]       # ONNX order: begins then ends

    @property
    def rank(self) -> int:
        return self.weight.ndim - 2

    @property
    def size(self) -> tuple[int, ...]:
        return self.weight.shape[2:]

    @property
    def channels_out(self) -> int:
        return self.weight.shape[0]

    def then_affine(self, scale: np.ndarray, shift: np.ndarray) -> Kernel:
        """This kernel followed by y = scale * z + shift per output channel (BN, fold-bn's math)."""
        w = self.weight * scale.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        return dataclasses.replace(self, weight=w, bias=self.bias * scale + shift)

    def grouped(self, group: int, channels_in: int) -> np.ndarray:
        """The weight for a convolution with `group` groups over `channels_in` inputs."""
        if self.group is not None:
            return self.weight
        cout = self.channels_out
        per = channels_in // group
        w = np.zeros((cout, per) + self.size)
        w[np.arange(cout), np.arange(cout) % per] = self.weight[:, 0]
        return w


def diagonal(scale: np.ndarray, rank: int, shift: np.ndarray | None = None) -> Kernel:
    """scale * x + shift per channel: the identity (scale 1), a BN of the input, a constant Mul."""
    c = scale.size
    return Kernel(scale.reshape((c, 1) + (1,) * rank).astype(np.float64),
                  np.zeros(c) if shift is None else shift.astype(np.float64),
                  None, (1,) * rank, (1,) * rank, (0,) * (2 * rank))


def average(channels: int, size: tuple[int, ...], strides, pads, dilations=None) -> Kernel:
    """AveragePool counting padded zeros (or with no padding): a per-channel kernel of 1/k^n."""
    rank = len(size)
    w = np.full((channels, 1) + tuple(size), 1.0 / math.prod(size))
    return Kernel(w, np.zeros(channels), None, tuple(strides), tuple(dilations or (1,) * rank),
                  tuple(pads))


def _pointwise(k: Kernel) -> bool:
    return set(k.size) == {1} and set(k.strides) == {1} and not any(k.pads)


def compose(first: Kernel, second: Kernel) -> Kernel:
    """`second` applied to the output of `first`, when one of them is a 1x1 stride-1 unpadded
    convolution (DBB's transform III, and its mirror image: a kxk followed by a 1x1).

    With the 1x1 first, exact only if `second` never sees padding of first's output: first's
    bias is zero or second has no padding (zero padding of a non-zero intermediate changes the
    border outputs).
    """
    if _pointwise(second) and second.group is not None:
        return _then_pointwise(first, second)
    if not _pointwise(first):
        raise Decline("of two spatial stages in a row, one must be 1x1, stride 1, unpadded")
    if any(second.pads) and np.any(first.bias != 0):
        raise Decline(f"the {'1x1 conv' if first.group is not None else 'first stage'}'s bias is non-zero "
                      "and the next conv pads its input: merging would change the border outputs")
    if second.group is None:  # per-channel second stage (AveragePool): scales first's filters
        w = first.weight * second.weight.reshape(second.weight.shape[:1] + (1,) + second.size)
        taps = second.weight.sum(axis=tuple(range(1, second.weight.ndim)))
        return dataclasses.replace(second, weight=w, bias=second.bias + taps * first.bias, group=first.group)
    w1, g1 = _weight_in_groups(first, second.group)
    w1 = w1.reshape(w1.shape[:2])  # [M, Cin/g1]
    w2, g2 = second.weight, second.group
    if g1 != g2:  # different groupings compose into a dense conv: write both block-diagonally
        w1, w2, g2 = _dense(w1, g1), _dense(w2, g2), 1
    outs, mids = _blocks(w2.shape[0], w1.shape[0], g2)
    if w2.shape[1] * g2 != w1.shape[0]:
        raise Decline("channel counts of the sequential pair do not match")
    w = np.concatenate([np.einsum("om...,mi->oi...", w2[o], w1[m]) for o, m in zip(outs, mids)])
    taps = w2.sum(axis=tuple(range(2, w2.ndim)))
    bias = second.bias + np.concatenate([taps[o] @ first.bias[m] for o, m in zip(outs, mids)])
    return dataclasses.replace(second, weight=w, bias=bias, group=g2)


def _then_pointwise(first: Kernel, second: Kernel) -> Kernel:
    """A 1x1 stride-1 unpadded conv after any kernel: mixes first's filters, keeps its geometry."""
    w1, g1 = _weight_in_groups(first, second.group)
    w2, g2 = second.weight.reshape(second.weight.shape[:2]), second.group  # [Cout, M/g2]
    if g1 != g2:
        w1, w2, g2 = _dense(w1, g1), _dense(w2, g2), 1
    outs, mids = _blocks(w2.shape[0], w1.shape[0], g2)
    if w2.shape[1] * g2 != w1.shape[0]:
        raise Decline("channel counts of the sequential pair do not match")
    w = np.concatenate([np.einsum("om,mi...->oi...", w2[o], w1[m]) for o, m in zip(outs, mids)])
    bias = second.bias + np.concatenate([w2[o] @ first.bias[m] for o, m in zip(outs, mids)])
    return dataclasses.replace(first, weight=w, bias=bias, group=g2)


def _weight_in_groups(k: Kernel, group: int) -> tuple[np.ndarray, int]:
    """k's weight and group count; a per-channel kernel is written in `group` groups."""
    if k.group is None:
        return k.grouped(group, k.channels_out), group
    return k.weight, k.group


def _blocks(cout: int, mid: int, group: int) -> tuple[list[slice], list[slice]]:
    """Per group: the output rows and the intermediate channels they read."""
    return ([slice(j * cout // group, (j + 1) * cout // group) for j in range(group)],
            [slice(j * mid // group, (j + 1) * mid // group) for j in range(group)])


def _dense(weight: np.ndarray, group: int) -> np.ndarray:
    """A grouped conv (or 1x1 matrix) weight as the block-diagonal weight of one group."""
    if group == 1:
        return weight
    cout, per = weight.shape[:2]
    dense = np.zeros((cout, per * group) + weight.shape[2:])
    for j in range(group):
        rows = slice(j * cout // group, (j + 1) * cout // group)
        dense[rows, j * per:(j + 1) * per] = weight[rows]
    return dense


def merge(kernels: list[Kernel], channels_in: int) -> Kernel:
    """One convolution equal to the sum of `kernels` applied to the same input.

    Every branch's sampling window must sit inside the merged one at whole-tap offsets, and the
    merged window may not be larger than the largest branch kernel in any dimension (a branch
    padded off-centre would otherwise grow the kernel, which is no longer RepVGG's contract).
    Output grids are the same when the branches' outputs have the same shape, which the caller
    checks: padding the merged input more than a branch needs only adds zero taps.
    """
    groups = {k.group for k in kernels if k.group is not None}
    if len(groups) > 1:
        raise Decline(f"the branches' convs have different group counts {sorted(groups)}")
    group = groups.pop() if groups else 1
    ranks = {k.rank for k in kernels}
    if len(ranks) > 1:
        raise Decline("the branches' convs have different spatial ranks")
    (rank,) = ranks
    strides = {k.strides for k in kernels}
    if len(strides) > 1:
        raise Decline(f"the branches have different strides {sorted(strides)}")
    if len({k.channels_out for k in kernels}) > 1:
        raise Decline("the branches have different output channel counts")
    if any(k.group is None for k in kernels) and kernels[0].channels_out != channels_in:
        raise Decline("an identity-like branch needs as many output channels as input channels")

    dilations, begins, ends, size = [], [], [], []
    for axis in range(rank):
        # 1-tap kernels sample one point: their dilation does not matter
        found = {k.dilations[axis] for k in kernels if k.size[axis] > 1}
        if len(found) > 1:
            raise Decline(f"the branches have different dilations {sorted(found)}")
        d = found.pop() if found else 1
        starts = [-k.pads[axis] for k in kernels]
        stops = [s + d * (k.size[axis] - 1) for s, k in zip(starts, kernels)]
        lo, hi = min(starts), max(stops)
        if any((s - lo) % d for s in starts) or (hi - lo) % d:
            raise Decline("a branch's padding puts its taps between the merged kernel's taps")
        extent = (hi - lo) // d + 1
        if extent > max(k.size[axis] for k in kernels):
            raise Decline("off-centre padding: a branch's window is not inside the largest kernel's")
        dilations.append(d)
        begins.append(-lo)
        ends.append(max(k.pads[rank + axis] + hi - stop for k, stop in zip(kernels, stops)))
        size.append(extent)

    weight = np.zeros((kernels[0].channels_out, channels_in // group) + tuple(size))
    for k in kernels:
        w = k.grouped(group, channels_in)
        if w.shape[1] != weight.shape[1]:
            raise Decline("the branches' convs read different numbers of input channels per group")
        at = tuple(slice((b - k.pads[axis]) // d, (b - k.pads[axis]) // d + k.size[axis])
                   for axis, (b, d) in enumerate(zip(begins, dilations)))
        weight[(slice(None), slice(None)) + at] += w
    bias = np.sum([k.bias for k in kernels], axis=0)
    return Kernel(weight, bias, group, next(iter(strides)), tuple(dilations), tuple(begins + ends))
