"""Remove channels from a graph: the surgery behind structured pruning.

Given a ChannelAnalysis and, per coupled group, the channel indices that stay, every node whose
inputs or outputs lose positions is rewritten through the graph layer: producers lose filters
(weight rows and bias entries), readers lose input columns (for a Gemm after Flatten, the H*W
columns of each channel), depthwise and grouped convs lose both and update `group`, per-channel
parameters (BatchNormalization, PRelu, constant Mul/Add) are cut, and constant shapes that spell
out a channel count (Reshape, Split, Slice, Resize sizes) are recomputed. The result is a smaller
dense graph: nothing is masked.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import OnnxoptError
from .core import Graph, Node
from .ops import ELEMENTWISE, PER_CHANNEL_PARAMS

if TYPE_CHECKING:  # the analysis is read, never imported: the graph layer sits below it
    from ..analysis.channels import ChannelAnalysis


class ShrinkError(OnnxoptError):
    """A keep-set that the graph cannot take (a bug in the caller, never a user error)."""


def _take(a: np.ndarray, axis: int, positions: np.ndarray | None) -> np.ndarray:
    return a if positions is None else np.take(a, positions, axis=axis)


def _channel_param(array: np.ndarray, rank: int, positions: np.ndarray) -> np.ndarray | None:
    """Cut a constant that broadcasts into a rank-`rank` tensor along its channel axis; None when it
    does not vary along channels."""
    axis = 1 - (rank - array.ndim)
    if axis < 0 or array.shape[axis] == 1:
        return None
    return np.take(array, positions, axis=axis)


class Shrinker:
    def __init__(self, graph: Graph, analysis: ChannelAnalysis, keep: dict[int, np.ndarray]) -> None:
        self.graph, self.analysis = graph, analysis
        self.keep = {gid: np.sort(np.asarray(k, np.int64)) for gid, k in keep.items()}
        self.kept: dict[str, np.ndarray | None] = {}
        self.rank: dict[str, int] = {}
        # read from the original shapes before any edit: edits clear the inferred shapes, and a
        # half-edited graph infers widths that are neither before nor after
        self.split_sizes: dict[int, list[int] | None] = {}
        self.slice_windows: dict[int, tuple[int, int] | None | str] = {}

    def positions(self, tensor: str) -> np.ndarray | None:
        if tensor not in self.kept:
            self.kept[tensor] = self.analysis.kept_positions(tensor, self.keep)
        return self.kept[tensor]

    def run(self) -> int:
        """Rewrite every affected node; returns how many were rewritten."""
        g = self.graph
        for gid, k in self.keep.items():
            grp = next((x for x in self.analysis.groups if x.id == gid), None)
            if grp is None or grp.frozen is not None:
                raise ShrinkError(f"group {gid} is not prunable")
            if not len(k) or k[-1] >= grp.size:
                raise ShrinkError(f"group {gid}: keep-set out of range")
        nodes = g.topological_nodes()
        # shapes first: edits reset the inferred shapes that ranks are read from
        for n in nodes:
            for t in (*n.inputs, *n.outputs):
                if t and t not in self.rank and (s := g.shape(t)) is not None:
                    self.rank[t] = len(s)
            if n.op == "Split":
                on_channels = self.analysis.split_axis(n) == 1
                self.split_sizes[n.id] = self.analysis.split_sizes(n) if on_channels else None
            elif n.op == "Slice":
                self.slice_windows[n.id] = self.analysis.slice_window(n)
        edited = 0
        for n in nodes:
            ins = self.positions(n.input(0)) if n.inputs else None
            outs = self.positions(n.outputs[0]) if n.outputs else None
            if ins is None and outs is None:
                continue
            if self._rewrite(n, ins, outs):
                edited += 1
        return edited

    def _rewrite(self, n: Node, ins: np.ndarray | None, outs: np.ndarray | None) -> bool:
        g, op = self.graph, n.op
        if op == "Conv":
            return self._conv(n, ins, outs)
        if op == "ConvTranspose":
            w = g.constant(n.input(1))
            g.set_input_constant(n, 1, _take(_take(w, 0, ins), 1, outs))
            self._bias(n, 2, outs)
            return True
        if op in ("Gemm", "MatMul"):
            w = g.constant(n.input(1))
            trans_b = op == "Gemm" and int(n.attr("transB", 0))
            w = _take(_take(w, 1 if trans_b else 0, ins), 0 if trans_b else 1, outs)
            g.set_input_constant(n, 1, w)
            if op == "Gemm" and outs is not None and len(n.inputs) > 2 and n.input(2):
                c = g.constant(n.input(2))
                if c.ndim >= 1 and c.shape[-1] > 1:
                    g.set_input_constant(n, 2, np.take(c, outs, axis=-1))
            return True
        if op in ELEMENTWISE:
            if outs is None:
                return False
            rank = self.rank.get(n.outputs[0], 0)
            changed = False
            for i, t in enumerate(n.inputs):
                if t and g.is_constant(t):
                    cut = _channel_param(g.constant(t), rank, outs)
                    if cut is not None:
                        g.set_input_constant(n, i, cut)
                        changed = True
            return changed
        if op in PER_CHANNEL_PARAMS:
            if ins is None:
                return False
            rank = self.rank.get(n.input(0), 0)
            for i in PER_CHANNEL_PARAMS[op]:
                if i < len(n.inputs) and n.input(i):
                    a = g.constant(n.input(i))
                    cut = _channel_param(a, rank, ins) if op == "PRelu" else _take(a, 0, ins)
                    if cut is not None:
                        g.set_input_constant(n, i, cut)
            return True
        if op == "Reshape":
            return self._reshape(n, outs)
        if op == "Split":
            return self._split(n)
        if op == "Slice":
            return self._slice(n)
        if op == "Resize" and outs is not None and len(n.inputs) > 3 and n.input(3):
            slot = self.analysis.resize_channel_slot(n, self.rank.get(n.input(0), 0))
            if slot is None:
                return False
            sizes = g.constant(n.input(3)).copy()
            sizes[slot] = len(outs)
            g.set_input_constant(n, 3, sizes)
            return True
        return False

    def _bias(self, n: Node, index: int, outs: np.ndarray | None) -> None:
        if outs is not None and len(n.inputs) > index and n.input(index):
            self.graph.set_input_constant(n, index, np.take(self.graph.constant(n.input(index)), outs, axis=0))

    def _conv(self, n: Node, ins: np.ndarray | None, outs: np.ndarray | None) -> bool:
        g = self.graph
        w = g.constant(n.input(1))
        group = int(n.attr("group", 1))
        cin = w.shape[1] * group
        if group == 1:
            g.set_input_constant(n, 1, _take(_take(w, 0, outs), 1, ins))
        elif group == cin:  # depthwise: outputs follow inputs
            g.set_input_constant(n, 1, _take(w, 0, outs))
            g.set_attr(n, "group", len(ins) if ins is not None else group)
        else:
            in_idx = ins if ins is not None else np.arange(cin)
            out_idx = outs if outs is not None else np.arange(w.shape[0])
            per_in, per_out = cin // group, w.shape[0] // group
            parts = []
            for k in range(group):
                rows = out_idx[(out_idx >= k * per_out) & (out_idx < (k + 1) * per_out)]
                cols = in_idx[(in_idx >= k * per_in) & (in_idx < (k + 1) * per_in)] - k * per_in
                parts.append(w[rows][:, cols])
            if len({p.shape for p in parts}) != 1:
                raise ShrinkError(f"{n.label}: groups would keep different channel counts")
            g.set_input_constant(n, 1, np.concatenate(parts, axis=0))
        self._bias(n, 2, outs)
        return True

    def _reshape(self, n: Node, outs: np.ndarray | None) -> bool:
        if outs is None:
            return False
        g = self.graph
        shape = g.constant(n.input(1))
        if shape is None:  # computed as [batch, -1] (the analysis checked): follows the width
            return False
        shape = shape.copy()
        if shape[1] in (0, -1):  # copied from the input, or inferred
            return False
        shape[1] = len(outs)  # [N, C', ...], or a flatten's [N, C'*H*W]: outs counts its columns
        g.set_input_constant(n, 1, shape)
        return True

    def _split(self, n: Node) -> bool:
        parts = [self.positions(t) for t in n.outputs]
        if all(p is None for p in parts):
            return False
        sizes = self.split_sizes[n.id]
        if sizes is None:  # split along another axis: its sizes do not count channels
            return False
        new = [len(p) if p is not None else s for p, s in zip(parts, sizes)]
        g = self.graph
        if n.has_attr("split"):
            g.set_attr(n, "split", [int(s) for s in new])
        elif len(n.inputs) > 1 and n.input(1):
            g.set_input_constant(n, 1, np.asarray(new, np.int64))
        elif len(set(new)) != 1:
            # equal parts no more: write the sizes out (an attribute before opset 13, an input since)
            if (g.opset_of("") or g.opset) < 13:
                g.set_attr(n, "split", [int(s) for s in new])
            else:
                g.set_attr(n, "num_outputs", None)
                g.set_input(n, 1, g.add_constant(f"{n.name or 'split'}_sizes", np.asarray(new, np.int64)))
        return True

    def _slice(self, n: Node) -> bool:
        window = self.slice_windows[n.id]
        ins = self.positions(n.input(0))
        if window is None or isinstance(window, str) or ins is None:
            return False
        lo, hi = window
        new_lo = int(np.searchsorted(ins, lo))
        new_hi = int(np.searchsorted(ins, hi))
        g = self.graph
        starts = g.constant(n.input(1)).copy()
        ends = g.constant(n.input(2)).copy()
        rank = self.rank.get(n.input(0), 0)
        axes = g.constant(n.input(3)).tolist() if len(n.inputs) > 3 and n.input(3) else list(range(len(starts)))
        k = next(i for i, a in enumerate(axes) if (a + rank if a < 0 else a) == 1)
        starts[k], ends[k] = new_lo, new_hi
        g.set_input_constant(n, 1, starts)
        g.set_input_constant(n, 2, ends)
        return True


def shrink(graph: Graph, analysis: ChannelAnalysis, keep: dict[int, np.ndarray]) -> int:
    """Remove every channel not in `keep` (group id -> kept indices) from `graph`; returns the
    number of nodes rewritten. Groups absent from `keep` keep all their channels."""
    return Shrinker(graph, analysis, keep).run()
