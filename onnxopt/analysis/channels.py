"""Channel coupling: which output channels of which layers must be removed together.

Every Conv/ConvTranspose/Gemm/MatMul with constant weights creates a *space* of channels (its
filters). A tensor's channel axis (axis 1: NCHW, or the features of [N, F]) is described position
by position as atoms `(space, index)`: a Relu passes its input's atoms through, a depthwise conv
repeats them, Concat lays them end to end, Flatten of [N, C, H, W] repeats each H*W times, Slice
and Split cut them. Ops that combine two tensors element-wise (residual Add, the Mul of a
squeeze-excitation gate) make the spaces of the atoms they line up one *group* (union-find): the
group keeps one set of channel indices, so every producer drops the same filters and every
reader drops the same input columns. This is Torch-Pruning's dependency graph (Fang et al. 2023,
"DepGraph") read off an ONNX graph instead of autograd.

A group is *frozen* (its channels stay) when any of its channels reach something the analysis does
not understand (an op it does not know, a channel-mixing reshape, a graph output, a graph input):
the report names the first reason. Never a wrong graph: only what is understood is prunable.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from ..graph.core import Graph, Node
from ..graph.ops import ELEMENTWISE, PER_CHANNEL_PARAMS

# Ops that act on each channel alone (same channels in and out). Parameters they hold per channel
# are listed in _PER_CHANNEL_PARAMS and sliced with the channels.
PASS_THROUGH = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Sin", "Cos", "Clip", "Dropout", "Identity", "Cast", "BatchNormalization",
    "InstanceNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
    "GlobalLpPool", "Pad", "Resize", "Upsample", "Squeeze", "Unsqueeze", "ReduceMean", "ReduceMax",
    "ReduceSum", "ReduceMin", "ReduceL2", "ReduceL1",
})
# scalar-or-constant inputs that do not carry channels
_SCALAR_INPUTS = {"Clip": (1, 2), "Pad": (1, 2, 3), "Resize": (1, 2, 3), "Upsample": (1,), "Squeeze": (1,),
                  "Unsqueeze": (1,), "Dropout": (1, 2), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceSum": (1,),
                  "ReduceMin": (1,), "ReduceL2": (1,), "ReduceL1": (1,)}
# readers whose result follows the channel count at run time without depending on which channels
HARMLESS_READERS = frozenset({"Shape", "Size"})
PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(eq=False)
class Space:
    """The output channels of one layer (or an opaque source: a graph input, a constant)."""

    id: int
    size: int
    producer: Node | None     # the node whose filters are these channels
    weight: str | None = None  # its weight tensor
    axis: int = 0              # the weight's output-channel axis
    offset: int = 0            # first filter of the weight that is channel 0 here (split spaces)

    @property
    def label(self) -> str:
        return self.producer.label if self.producer is not None else f"source #{self.id}"

    @property
    def key(self) -> tuple[str, int] | None:
        """Names these channels across analyses of the same model: producer output and offset."""
        return (self.producer.outputs[0], self.offset) if self.producer is not None else None


@dataclasses.dataclass(frozen=True)
class ChannelMap:
    """Atoms of a tensor's channel axis: position p is channel `index[p]` of space `space[p]`."""

    space: np.ndarray  # int64 [C]
    index: np.ndarray  # int64 [C]

    def __len__(self) -> int:
        return len(self.space)

    @classmethod
    def of(cls, space: Space) -> "ChannelMap":
        return cls(np.full(space.size, space.id, np.int64), np.arange(space.size, dtype=np.int64))

    def repeat(self, n: int) -> "ChannelMap":
        return ChannelMap(np.repeat(self.space, n), np.repeat(self.index, n))

    def cut(self, start: int, stop: int) -> "ChannelMap":
        return ChannelMap(self.space[start:stop], self.index[start:stop])

    @staticmethod
    def concat(maps: list["ChannelMap"]) -> "ChannelMap":
        return ChannelMap(np.concatenate([m.space for m in maps]), np.concatenate([m.index for m in maps]))


@dataclasses.dataclass
class Group:
    """Coupled spaces that keep one set of channel indices."""

    id: int
    size: int
    spaces: list[Space]
    blocks: int = 1                  # keep the same number of channels in each of `blocks` equal parts
    frozen: str | None = None        # why these channels must stay
    readers: list[Node] = dataclasses.field(default_factory=list)  # layers reading the channels as input

    @property
    def producers(self) -> list[Node]:
        return [s.producer for s in self.spaces if s.producer is not None]

    @property
    def key(self) -> tuple[str, int] | None:
        return next((s.key for s in self.spaces if s.key is not None), None)

    @property
    def label(self) -> str:
        names = [p.label for p in self.producers]
        return names[0] + (f" (+{len(names) - 1} coupled)" if len(names) > 1 else "") if names else f"group {self.id}"


class ChannelAnalysis:
    """Channel maps of every tensor and the coupled groups of a graph (see the module docstring).

    `graph` must have static shapes (Graph built with input shapes). Read `groups` (all, frozen
    included), `prunable` (not frozen, more than one channel) and `kept_positions()` for a choice of
    channel indices per group."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.spaces: list[Space] = []
        self.maps: dict[str, ChannelMap] = {}
        self._parent: list[int] = []
        self._frozen: dict[int, str] = {}
        self._blocks: dict[int, int] = {}
        self._readers: dict[int, list[Node]] = {}  # space id -> consuming layers
        self._replaced: set[int] = set()  # spaces cut into parts (see _split_class)
        self.unknown: list[tuple[Node, str]] = []  # nodes that froze channels, and why
        for node in graph.topological_nodes():
            reason = self._visit(node)
            if reason:
                self.unknown.append((node, reason))
                self._freeze_inputs(node, reason)
        for t in graph.output_names:
            if t in self.maps:
                self._freeze_map(self.maps[t], f"reaches graph output '{t}'")
        self.groups = self._collect_groups()

    # ------------------------------------------------------------------ union-find
    def _new_space(self, size: int, producer: Node | None = None, weight: str | None = None, axis: int = 0,
                   frozen: str | None = None) -> Space:
        s = Space(len(self.spaces), size, producer, weight, axis)
        self.spaces.append(s)
        self._parent.append(s.id)
        if frozen:
            self._frozen[s.id] = frozen
        return s

    def root(self, space_id: int) -> int:
        parent = self._parent
        while parent[space_id] != space_id:
            parent[space_id] = parent[parent[space_id]]
            space_id = parent[space_id]
        return space_id

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        if self.spaces[ra].size != self.spaces[rb].size:
            reason = "element-wise op joins channels of different widths"
            self._frozen.setdefault(ra, reason)
            self._frozen.setdefault(rb, reason)
        self._parent[rb] = ra
        if rb in self._frozen:
            self._frozen.setdefault(ra, self._frozen[rb])
        if rb in self._blocks:
            self._blocks[ra] = math.lcm(self._blocks.get(ra, 1), self._blocks[rb])
        self._readers.setdefault(ra, []).extend(self._readers.pop(rb, []))

    def _members(self, root: int) -> list[Space]:
        return [s for s in self.spaces if s.id not in self._replaced and self.root(s.id) == root]

    def _split_class(self, space_id: int, cuts: list[int]) -> None:
        """Cut a space, and every space coupled with it, into parts at channel indices `cuts`:
        each part becomes a space of its own (parts at the same place stay coupled) and every
        channel map is rewritten to name the parts."""
        root = self.root(space_id)
        size = self.spaces[root].size
        bounds = [0, *sorted(set(c for c in cuts if 0 < c < size)), size]
        members = self._members(root)
        frozen, readers = self._frozen.get(root), list(self._readers.get(root, []))
        parts: dict[int, list[int]] = {}
        for m in members:
            ids = []
            for lo, hi in zip(bounds, bounds[1:]):
                part = self._new_space(hi - lo, m.producer, m.weight, m.axis, frozen=frozen)
                part.offset = m.offset + lo
                ids.append(part.id)
            parts[m.id] = ids
            self._replaced.add(m.id)
        for k in range(len(bounds) - 1):
            first = parts[members[0].id][k]
            self._readers[first] = list(readers)
            for m in members[1:]:
                self._union(first, parts[m.id][k])
        starts = np.asarray(bounds[:-1])
        for tensor, cm in list(self.maps.items()):
            hit = np.isin(cm.space, list(parts))
            if not hit.any():
                continue
            space, index = cm.space.copy(), cm.index.copy()
            seg = np.searchsorted(starts, index[hit], side="right") - 1
            space[hit] = [parts[int(sp)][int(k)] for sp, k in zip(cm.space[hit], seg)]
            index[hit] = index[hit] - starts[seg]
            self.maps[tensor] = ChannelMap(space, index)

    def _cuts(self, a: ChannelMap, b: ChannelMap) -> tuple[int, list[int]] | None | str:
        """A space of `a` whose channels do not line up one-to-one with a single space of `b` (as
        one run, at offset 0), and where to cut it; None when all line up; a reason when they
        cannot be made to."""
        for sid in np.unique(a.space):
            at = np.flatnonzero(a.space == sid)
            order = np.argsort(a.index[at], kind="stable")
            idx = a.index[at][order]
            if len(np.unique(idx)) != len(idx):
                return "channels repeat (after a flatten or a depthwise multiplier)"
            partner = b.space[at][order]
            shift = b.index[at][order] - idx
            size = self.spaces[int(sid)].size
            cuts = [int(idx[i]) for i in range(1, len(idx)) if partner[i] != partner[i - 1]
                    or shift[i] != shift[i - 1] or idx[i] != idx[i - 1] + 1]
            if idx[0] != 0:
                cuts.append(int(idx[0]))
            if idx[-1] != size - 1:
                cuts.append(int(idx[-1]) + 1)
            if not cuts and (shift[0] != 0 or self.spaces[int(partner[0])].size != size):
                # one run at an offset into a longer space: cut the partner instead
                continue
            if cuts:
                return int(sid), cuts
        return None

    def _couple(self, node: Node, tensors: list[str]) -> ChannelMap | None:
        """Make the channels that `tensors` line up position by position one group each, cutting
        spaces where a run of one meets parts of several (an SE gate over a Concat). Returns the
        first tensor's map afterwards; None (and the channels frozen) when they cannot be."""
        for _ in range(64):
            maps = [self.maps[t] for t in tensors]
            todo = None
            for a in maps:
                for b in maps:
                    if a is b:
                        continue
                    todo = self._cuts(a, b)
                    if todo is not None:
                        break
                if todo is not None:
                    break
            if todo is None:
                break
            if isinstance(todo, str) or self._blocks.get(self.root(todo[0]), 1) > 1:
                reason = todo if isinstance(todo, str) else "would cut a grouped conv's channels"
                for m in maps:
                    self._freeze_map(m, f"{node.label} lines up channels it cannot couple: {reason}")
                return maps[0]
            self._split_class(*todo)
        maps = [self.maps[t] for t in tensors]
        first = maps[0]
        for m in maps[1:]:
            if not np.array_equal(m.index, first.index):
                for mm in maps:
                    self._freeze_map(mm, f"{node.label} lines up channels at different offsets")
                return first
            for a, b in set(zip(first.space.tolist(), m.space.tolist())):
                self._union(a, b)
        return first

    def _freeze_map(self, m: ChannelMap, reason: str) -> None:
        for sid in np.unique(m.space):
            self._frozen.setdefault(self.root(int(sid)), reason)

    def _freeze_inputs(self, node: Node, reason: str) -> None:
        for t in (*node.inputs, *self.graph.subgraph_reads(node)):
            if t in self.maps:
                self._freeze_map(self.maps[t], f"read by {node.label}: {reason}")

    # ------------------------------------------------------------------ maps
    def _channels(self, tensor: str) -> int | None:
        shape = self.graph.static_shape(tensor)
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def map_of(self, tensor: str) -> ChannelMap | None:
        """The tensor's channel map; tensors nobody mapped (graph inputs, outputs of unknown ops) get
        an opaque frozen source of their width."""
        m = self.maps.get(tensor)
        if m is None:
            c = self._channels(tensor)
            if c is None:
                return None
            why = "comes from a graph input" if self.graph.is_graph_input(tensor) else (
                "a constant" if self.graph.is_constant(tensor) else "comes from an op prune does not follow")
            m = self.maps[tensor] = ChannelMap.of(self._new_space(c, frozen=why))
        return m

    def _reads(self, node: Node, m: ChannelMap) -> None:
        for sid in np.unique(m.space):
            self._readers.setdefault(self.root(int(sid)), []).append(node)

    # ------------------------------------------------------------------ op rules
    def _visit(self, node: Node) -> str | None:
        """Map the node's outputs; return why not when the node is not understood."""
        op = node.op
        if node.domain not in ("", "ai.onnx"):
            return f"custom op {node.domain}.{op}"
        if self.graph.subgraph_reads(node) or any(
                a.type in (a.GRAPH, a.GRAPHS) for a in node.proto.attribute):
            return f"{op} has subgraphs"
        if op in HARMLESS_READERS:
            return None if self._batch_only(node) else f"{op} result is used beyond the batch size"
        if op in ("Conv", "ConvTranspose"):
            return self._conv(node)
        if op in ("Gemm", "MatMul"):
            return self._matmul(node)
        if op in ELEMENTWISE:
            return self._elementwise(node)
        if op == "Concat":
            return self._concat(node)
        if op in ("Split", "Slice"):
            return self._split(node) if op == "Split" else self._slice(node)
        if op in ("Flatten", "Reshape"):
            return self._flatten(node)
        if op in PASS_THROUGH:
            return self._pass_through(node)
        return f"{op} is not a channel-wise op prune knows"

    def _batch_only(self, node: Node) -> bool:
        """A Shape whose result only ever yields the batch dimension (Gather of index 0, or
        Shape(end=1)): the x.view(x.size(0), -1) of exports. Any other use could carry the channel
        count into another tensor's shape."""
        g = self.graph
        if node.op == "Size":
            return False
        if int(node.attr("start", 0)) == 0 and node.attr("end") is not None and int(node.attr("end")) == 1:
            return True
        out = node.outputs[0]
        if g.is_graph_output(out):
            return False
        for reader in g.consumers(out):
            index = g.constant(reader.input(1)) if reader.op == "Gather" and len(reader.inputs) > 1 else None
            if index is None or int(reader.attr("axis", 0)) != 0 or index.size != 1 or int(index.ravel()[0]) != 0:
                return False
        return True

    def _const_inputs_ok(self, node: Node, indices) -> str | None:
        for i in indices:
            t = node.input(i)
            if t and not self.graph.is_constant(t):
                return f"input {i} is not a constant"
        return None

    def _conv(self, node: Node) -> str | None:
        g = self.graph
        w = g.constant(node.input(1))
        if w is None or w.ndim < 3:
            return "weight is not a constant"
        if node.input(2) and g.constant(node.input(2)) is None:
            return "bias is not a constant"
        x = self.map_of(node.input(0))
        if x is None:
            return "input shape unknown"
        group = int(node.attr("group", 1))
        out = node.outputs[0]
        if node.op == "ConvTranspose":
            if group != 1:
                return "grouped ConvTranspose"
            self._reads(node, x)
            self.maps[out] = ChannelMap.of(self._new_space(w.shape[1], node, node.input(1), axis=1))
            return None
        cin, cout = w.shape[1] * group, w.shape[0]
        if len(x) != cin:
            return "weight and input widths disagree"
        if group == 1:
            self._reads(node, x)
            self.maps[out] = ChannelMap.of(self._new_space(cout, node, node.input(1)))
        elif group == cin and cout % cin == 0:
            # depthwise: each output channel belongs to its input channel
            self.maps[out] = x.repeat(cout // cin)
        else:
            # grouped: channels may go, the same number from every group
            single = len(np.unique(x.space)) == 1 and np.array_equal(x.index, np.arange(cin))
            if not single:
                self._freeze_map(x, f"grouped {node.label} reads channels of several layers")
            else:
                r = self.root(int(x.space[0]))
                self._blocks[r] = math.lcm(self._blocks.get(r, 1), group)
            self._reads(node, x)
            space = self._new_space(cout, node, node.input(1))
            self._blocks[space.id] = group
            self.maps[out] = ChannelMap.of(space)
        return None

    def _matmul(self, node: Node) -> str | None:
        g = self.graph
        w = g.constant(node.input(1))
        if w is None or w.ndim != 2:
            return "second operand is not a 2-D constant"
        a_shape = g.static_shape(node.input(0))
        if a_shape is None or len(a_shape) != 2:
            return "first operand is not a 2-D [batch, features] tensor"
        if node.op == "Gemm":
            if int(node.attr("transA", 0)):
                return "Gemm with transA"
            if node.input(2) and g.constant(node.input(2)) is None:
                return "bias is not a constant"
            trans_b = int(node.attr("transB", 0))
        else:
            trans_b = 0
        x = self.map_of(node.input(0))
        if x is None:
            return "input shape unknown"
        self._reads(node, x)
        n_out = w.shape[0] if trans_b else w.shape[1]
        self.maps[node.outputs[0]] = ChannelMap.of(self._new_space(n_out, node, node.input(1), 0 if trans_b else 1))
        return None

    def _aligned_dim(self, tensor: str, rank: int) -> int | None:
        """The size of `tensor` along the channel axis of a rank-`rank` result it broadcasts into."""
        shape = self.graph.static_shape(tensor)
        if shape is None:
            shape = self.graph.constant_spec(tensor)[0] if self.graph.is_constant(tensor) else None
        if shape is None:
            return None
        axis = 1 - (rank - len(shape))
        return shape[axis] if axis >= 0 else 1

    def _elementwise(self, node: Node) -> str | None:
        g = self.graph
        out_shape = g.static_shape(node.outputs[0])
        if out_shape is None or len(out_shape) < 2:
            return "result shape unknown"
        rank, c = len(out_shape), out_shape[1]
        maps = []
        for t in node.inputs:
            if not t:
                continue
            dim = self._aligned_dim(t, rank)
            if dim is None:
                return f"shape of '{t}' unknown"
            shape = None if g.is_constant(t) else g.static_shape(t)
            if shape is not None and len(shape) != rank:
                # broadcast from a lower rank: its own channel axis lands on another axis
                if t in self.maps:
                    self._freeze_map(self.maps[t], f"{node.label} broadcasts it along another axis")
                if dim not in (1,):
                    return f"'{t}' has another rank than the result"
                continue
            if dim == 1 and c != 1:
                continue  # broadcast along channels: no channel of its own
            if dim != c:
                return "operands broadcast in a way prune does not follow"
            if g.is_constant(t):
                continue  # a per-channel constant: sliced with the channels
            if shape is None:
                return f"shape of '{t}' unknown"
            if self.map_of(t) is None:
                return f"shape of '{t}' unknown"
            maps.append(t)
        if not maps:
            return "no operand carries the channels"
        self.maps[node.outputs[0]] = self._couple(node, maps)
        return None

    def _axis(self, node: Node, rank: int, default: int) -> int:
        axis = int(node.attr("axis", default))
        return axis + rank if axis < 0 else axis

    def _concat(self, node: Node) -> str | None:
        shape = self.graph.static_shape(node.outputs[0])
        if shape is None or len(shape) < 2:
            return "result shape unknown"
        maps = [self.map_of(t) for t in node.inputs]
        if any(m is None for m in maps):
            return "an input's shape is unknown"
        if self._axis(node, len(shape), 0) == 1:
            self.maps[node.outputs[0]] = ChannelMap.concat(maps)
            return None
        if not all(len(m) == len(maps[0]) for m in maps):
            return "inputs of different widths"
        # concatenation along another axis: channels line up like Add's
        self.maps[node.outputs[0]] = self._couple(node, list(node.inputs))
        return None

    def resize_channel_slot(self, node: Node, rank: int) -> int | None:
        """Index of the channel axis in a Resize's scales/sizes (opset 18 may list only some axes
        in `axes`); None when the channel axis is not among them."""
        axes = node.attr("axes")
        if axes is None:
            return 1
        axes = [a + rank if a < 0 else a for a in axes]
        return axes.index(1) if 1 in axes else None

    def split_axis(self, node: Node) -> int | None:
        shape = self.graph.static_shape(node.input(0))
        return self._axis(node, len(shape), 0) if shape is not None else None

    def split_sizes(self, node: Node) -> list[int] | None:
        """Sizes of a Split's outputs along its axis (from the inferred output shapes)."""
        shapes = [self.graph.static_shape(t) for t in node.outputs]
        if any(s is None for s in shapes):
            return None
        axis = self._axis(node, len(shapes[0]), 0)
        return [s[axis] for s in shapes]

    def _split(self, node: Node) -> str | None:
        x = self.map_of(node.input(0))
        shape = self.graph.static_shape(node.input(0))
        if x is None or shape is None:
            return "input shape unknown"
        if node.input(1) and not self.graph.is_constant(node.input(1)):
            return "split sizes are not constant"
        sizes = self.split_sizes(node)
        if sizes is None:
            return "output shapes unknown"
        if self._axis(node, len(shape), 0) != 1:
            for t in node.outputs:
                self.maps[t] = x
            return None
        start = 0
        for t, n in zip(node.outputs, sizes):
            self.maps[t] = x.cut(start, start + n)
            start += n
        return None

    def slice_window(self, node: Node) -> tuple[int, int] | None | str:
        """(start, stop) of a Slice on the channel axis with step 1; None if it does not cut
        channels; a reason when it cuts them in a way prune does not follow."""
        g = self.graph
        shape = g.static_shape(node.input(0))
        if shape is None:
            return "input shape unknown"
        if len(node.inputs) < 3 or any(t and not g.is_constant(t) for t in node.inputs[1:]):
            return "starts/ends/axes are not constant (or opset < 10)"
        starts, ends = g.constant(node.input(1)), g.constant(node.input(2))
        axes = g.constant(node.input(3)) if len(node.inputs) > 3 and node.input(3) else np.arange(len(starts))
        steps = g.constant(node.input(4)) if len(node.inputs) > 4 and node.input(4) else np.ones(len(starts))
        for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
            if (a + len(shape) if a < 0 else a) != 1:
                continue
            if st != 1:
                return "slices channels with a step"
            c = shape[1]
            lo = min(max(s + c if s < 0 else s, 0), c)
            hi = min(max(e + c if e < 0 else e, 0), c)
            return lo, max(lo, hi)
        return None

    def _slice(self, node: Node) -> str | None:
        x = self.map_of(node.input(0))
        if x is None:
            return "input shape unknown"
        window = self.slice_window(node)
        if isinstance(window, str):
            return window
        self.maps[node.outputs[0]] = x if window is None else x.cut(*window)
        return None

    def _flatten(self, node: Node) -> str | None:
        g = self.graph
        x_shape, y_shape = g.static_shape(node.input(0)), g.static_shape(node.outputs[0])
        if x_shape is None or y_shape is None:
            return "shape unknown"
        if node.op == "Reshape" and not g.is_constant(node.input(1)) and not self._batch_by_rest(node.input(1)):
            return "target shape is not a constant"
        x = self.map_of(node.input(0))
        if x is None or len(x_shape) < 2 or len(y_shape) < 2 or x_shape[0] != y_shape[0]:
            return "reshape across the batch axis"
        if y_shape[1] == x_shape[1]:  # [N, C, ...] -> [N, C, ...]: spatial dims only
            self.maps[node.outputs[0]] = x
            return None
        inner = math.prod(x_shape[2:])
        if len(y_shape) == 2 and y_shape[1] == x_shape[1] * inner:
            self.maps[node.outputs[0]] = x.repeat(inner)  # C-major: channel c owns columns c*HW..
            return None
        return "reshape mixes channels with other axes"

    def _batch_by_rest(self, tensor: str) -> bool:
        """A Reshape target computed as [batch size, -1]: torch's x.view(x.size(0), -1), exported as
        Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]). It stays right whatever the channel count."""
        g = self.graph
        concat = g.producer(tensor)
        if concat is None or concat.op != "Concat" or len(concat.inputs) != 2 or int(concat.attr("axis", 0)) != 0:
            return False
        rest = g.constant(concat.input(1))
        if rest is None or rest.size != 1 or int(rest.ravel()[0]) != -1:
            return False
        first = concat.input(0)
        if g.is_constant(first):
            return g.constant(first).size == 1
        node = g.producer(first)
        while node is not None and node.op in ("Unsqueeze", "Cast", "Identity"):
            node = g.producer(node.input(0))
        if node is None or node.op != "Gather":
            return False
        index = g.constant(node.input(1))
        shape = g.producer(node.input(0))
        return (index is not None and index.size == 1 and int(index.ravel()[0]) == 0
                and int(node.attr("axis", 0)) == 0 and shape is not None and shape.op == "Shape")

    def _pass_through(self, node: Node) -> str | None:
        g = self.graph
        op = node.op
        x = self.map_of(node.input(0))
        shape = g.static_shape(node.input(0))
        if x is None or shape is None:
            return "input shape unknown"
        rank = len(shape)
        for i in PER_CHANNEL_PARAMS.get(op, ()):
            t = node.input(i) if i < len(node.inputs) else ""
            if t and not g.is_constant(t):
                return f"parameter {i} is not a constant"
        if (reason := self._const_inputs_ok(node, _SCALAR_INPUTS.get(op, ()))) is not None:
            return reason
        if op == "BatchNormalization" and int(node.attr("training_mode", 0)):
            return "BatchNormalization in training mode"
        if op in ("Squeeze", "Unsqueeze", "ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2",
                  "ReduceL1"):
            axes = node.attr("axes")
            if axes is None and len(node.inputs) > 1 and node.input(1):
                axes = g.constant(node.input(1)).tolist()
            if axes is None:
                return "axes not given (would touch the channel axis)"
            out_rank = len(g.static_shape(node.outputs[0]) or ())
            norm = [a + (out_rank if op == "Unsqueeze" else rank) if a < 0 else a for a in axes]
            if any(a <= 1 for a in norm):
                return "touches the batch or channel axis"
        if op == "Pad":
            pads = node.attr("pads")
            if pads is None and len(node.inputs) > 1 and node.input(1):
                pads = g.constant(node.input(1)).tolist()
            axes = g.constant(node.input(3)).tolist() if len(node.inputs) > 3 and node.input(3) else None
            if pads is None:
                return "pads unknown"
            n = len(pads) // 2
            axes = axes or list(range(n))
            for a, lo, hi in zip(axes, pads[:n], pads[n:]):
                if (a + rank if a < 0 else a) == 1 and (lo or hi):
                    return "pads the channel axis"
        if op == "PRelu" and self._aligned_dim(node.input(1), rank) not in (1, len(x)):
            return "slope broadcasts in a way prune does not follow"
        if op == "Resize":
            slot = self.resize_channel_slot(node, rank)
            scales = g.constant(node.input(2)) if len(node.inputs) > 2 and node.input(2) else None
            if slot is not None and scales is not None and scales.size and scales.ravel()[slot] != 1:
                return "resizes the channel axis"
        out_shape = g.static_shape(node.outputs[0])
        if out_shape is None or len(out_shape) < 2 or out_shape[1] != len(x):
            return "output shape unknown or channel count changes"
        self.maps[node.outputs[0]] = x
        for t in node.outputs[1:]:
            if t and g.is_used(t):
                return "an extra output is used"
        return None

    # ------------------------------------------------------------------ groups
    def _collect_groups(self) -> list[Group]:
        members: dict[int, list[Space]] = {}
        for s in self.spaces:
            if s.id not in self._replaced:
                members.setdefault(self.root(s.id), []).append(s)
        groups = []
        for r, spaces in members.items():
            size = self.spaces[r].size
            blocks = self._blocks.get(r, 1)
            frozen = self._frozen.get(r)
            if frozen is None and size % blocks:
                frozen = f"{size} channels do not split into {blocks} equal groups"
            if frozen is None and not any(s.producer is not None for s in spaces):
                frozen = "no layer produces these channels"
            readers = list(dict.fromkeys(self._readers.get(r, [])))
            groups.append(Group(r, size, spaces, blocks, frozen, readers))
        groups.sort(key=lambda grp: grp.id)
        return groups

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.frozen is None and g.size > 1]

    def group_of(self, space_id: int) -> Group:
        r = self.root(space_id)
        return next(g for g in self.groups if g.id == r)

    def group_by_key(self, key: tuple[str, int]) -> Group | None:
        """The group holding the channels that `Group.key` / `Space.key` names (another analysis
        of the same model finds the same group this way)."""
        space = next((s for s in self.spaces if s.id not in self._replaced and s.key == key), None)
        return self.group_of(space.id) if space is not None else None

    def kept_positions(self, tensor: str, keep: dict[int, np.ndarray]) -> np.ndarray | None:
        """Positions of `tensor`'s channel axis that stay when group id -> kept channel indices
        (sorted); None when all stay."""
        m = self.maps.get(tensor)
        if m is None:
            return None
        mask = np.ones(len(m), bool)
        touched = False
        for sid in np.unique(m.space):
            r = self.root(int(sid))
            if r not in keep:
                continue
            at = m.space == sid
            stays = np.isin(m.index[at], keep[r])
            if not stays.all():
                mask[at] = stays
                touched = True
        return np.flatnonzero(mask) if touched else None

    def roots(self, tensor: str) -> np.ndarray | None:
        """The group id of each position of `tensor`'s channel axis; None for an unmapped tensor."""
        m = self.maps.get(tensor)
        return None if m is None else np.array([self.root(int(s)) for s in m.space], np.int64)

    def positions_of(self, tensor: str, group: Group) -> Iterator[tuple[int, int]]:
        """(position, channel index) pairs where `group`'s channels sit in `tensor`."""
        roots = self.roots(tensor)
        if roots is None:
            return
        for p in np.flatnonzero(roots == group.id):
            yield int(p), int(self.maps[tensor].index[p])
