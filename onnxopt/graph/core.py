"""The graph layer: the one module that edits ONNX protobuf.

Passes speak to a `Graph` in terms of nodes, tensors and constant arrays; they never touch protobuf
fields. The layer keeps a producer index and a consumer index current through every edit, so each
query and edit is O(1) (or O(consumers)), and a whole pass over a 10,000-node model stays linear.

Vocabulary follows onnx-ir (producer, consumers, replace_all_uses, remove(safe=True), unique_name)
so that moving to it later would be mechanical.

Constants: Constant nodes that hold a tensor are turned into initializers when the graph is built,
and Identity nodes that only rename a constant are read through, so a pass sees one kind of
constant (`graph.constant(name)` -> numpy array) whatever the exporter wrote. Shapes: `graph.shape(name)` comes from ONNX shape inference run on demand with the static
input shapes the pipeline resolved; it reflects the graph as of the last `refresh_shapes()`.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxoptError
from .shape_values import resolve_computed_shapes

if TYPE_CHECKING:
    import networkx as nx


class GraphError(OnnxoptError):
    """An edit that would make the graph invalid (a bug in the calling pass)."""


class Node:
    """A live view of one NodeProto. Read freely; change it only through `Graph` methods."""

    __slots__ = ("proto", "id", "alive")

    def __init__(self, proto: onnx.NodeProto, node_id: int) -> None:
        self.proto = proto
        self.id = node_id
        self.alive = True

    @property
    def op(self) -> str:
        return self.proto.op_type

    @property
    def domain(self) -> str:
        return self.proto.domain

    @property
    def name(self) -> str:
        return self.proto.name

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.proto.input)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.proto.output)

    def input(self, i: int) -> str:
        """The i-th input name, or '' when absent (ONNX marks skipped optional inputs with '')."""
        return self.proto.input[i] if i < len(self.proto.input) else ""

    def attr(self, key: str, default: Any = None) -> Any:
        for a in self.proto.attribute:
            if a.name == key:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def has_attr(self, key: str) -> bool:
        return any(a.name == key for a in self.proto.attribute)

    @property
    def label(self) -> str:
        """How messages name this node: by name if it has one, else by its first output."""
        if self.proto.name:
            return f"{self.op} '{self.proto.name}'"
        return f"{self.op} -> '{self.proto.output[0] if self.proto.output else '?'}'"

    def __repr__(self) -> str:
        return f"<Node #{self.id} {self.label}{'' if self.alive else ' (removed)'}>"


def _subgraph_outer_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                for t in itertools.chain(n.input, _subgraph_outer_names(n)):
                    if t and t not in local:
                        names.add(t)
                local.update(n.output)
    return names


def _subgraph_defined_names(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            names.update(i.name for i in g.input)
            names.update(t.name for t in g.initializer)
            for n in g.node:
                names.update(n.output)
                names.update(_subgraph_defined_names(n))
    return names


def _constant_node_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds, or None for forms we leave as nodes (sparse, strings)."""
    if len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
        t = onnx.TensorProto()
        t.CopyFrom(a.t)
        return t
    converters = {
        "value_float": lambda: np.array(a.f, dtype=np.float32),
        "value_floats": lambda: np.array(list(a.floats), dtype=np.float32),
        "value_int": lambda: np.array(a.i, dtype=np.int64),
        "value_ints": lambda: np.array(list(a.ints), dtype=np.int64),
    }
    if a.name in converters:
        return numpy_helper.from_array(converters[a.name]())
    return None


SKELETON_MAX_ELEMENTS = 256


def _small(t: onnx.TensorProto) -> bool:
    n = 1
    for d in t.dims:
        n *= d
    return n <= SKELETON_MAX_ELEMENTS


RESOLVE_ROUNDS = 3  # rounds of computed Reshape targets (each an inference) refresh_shapes follows


def _inferred(model: onnx.ModelProto) -> tuple[dict[str, tuple], dict[str, int]]:
    """Shapes (None for unknown dims) and element types of every tensor ONNX shape inference
    reaches; inference failing leaves them unknown, never breaks a pass."""
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001
        pass
    shapes: dict[str, tuple] = {}
    dtypes: dict[str, int] = {}
    for vi in itertools.chain(model.graph.input, model.graph.value_info, model.graph.output):
        tt = vi.type.tensor_type
        dtypes[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return shapes, dtypes


def _empty_like(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model with `model`'s header (versions, opsets, metadata, functions) and an empty graph."""
    out = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(model, field))
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    out.graph.name, out.graph.doc_string = model.graph.name, model.graph.doc_string
    return out


def _copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of everything but the graph's initializers (the bulk of a model's bytes)."""
    out = _empty_like(model)
    src, g = model.graph, out.graph
    for field in ("node", "input", "output", "value_info", "sparse_initializer", "quantization_annotation"):
        getattr(g, field).extend(getattr(src, field))
    return out


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every large initializer replaced by a graph input of the same type and shape.

    Shape inference and the structural checks of onnx.checker need shapes, not weight values
    (small constants such as Reshape targets stay, for data propagation), and serializing 100 MB of
    weights for them would cost most of a ResNet-50 run."""
    out = _copy_without_initializers(model)
    declared = {i.name for i in out.graph.input}
    for t in model.graph.initializer:
        if _small(t):
            out.graph.initializer.append(t)
        elif t.name not in declared:
            out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


class Graph:
    """A mutable ONNX graph with incremental producer/consumer indexes.

    Build with `Graph(model)` (the caller's model is copied, never modified) and turn back into a
    model with `to_model()`, which orders nodes topologically, drops constants the edits made
    unused, and refreshes value_info for what changed.
    """

    def __init__(self, model: onnx.ModelProto, *, input_shapes: dict[str, Sequence[int]] | None = None) -> None:
        # Initializers are shared with the caller's model, never modified in place (set_constant
        # makes a new tensor): copying 100 MB of weights per pass would dominate a run.
        self._source = _copy_without_initializers(model)
        g = self._source.graph
        self.input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
        self._ids = itertools.count()
        self._nodes: dict[int, Node] = {}
        self._producer: dict[str, Node] = {}
        self._consumers: dict[str, dict[int, Node]] = {}
        self._implicit: dict[int, set[str]] = {}  # node id -> outer names its subgraphs read
        self._inits: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._inputs: dict[str, onnx.ValueInfoProto] = {i.name: i for i in g.input}
        self._outputs = list(g.output)
        self._output_names = {o.name for o in self._outputs}
        self._touched: set[str] = set()  # tensors whose value or shape an edit may have changed
        self._shapes: dict[str, tuple] | None = None
        self._dtypes: dict[str, int] = {}
        self._tensor_names: set[str] = {i.name for i in g.input} | set(self._inits)
        self._node_names: set[str] = set()
        self._suffix: dict[str, int] = {}
        self.mutations = 0  # edits since construction: the pipeline cross-checks PassResult.changed
        kept = []
        for proto in g.node:
            if proto.op_type == "Constant" and proto.domain in ("", "ai.onnx"):
                value = _constant_node_value(proto)
                if value is not None and proto.output[0] not in self._output_names:
                    value.name = proto.output[0]
                    self._inits[value.name] = value
                    self._tensor_names.add(value.name)
                    continue
            kept.append(proto)
        aliases = self._constant_aliases(kept)
        for proto in kept:
            if aliases and proto.output and proto.output[0] in aliases and proto.op_type == "Identity":
                continue
            if aliases and any(t in aliases for t in proto.input):
                proto.input[:] = [aliases.get(t, t) for t in proto.input]
            self._index(Node(proto, next(self._ids)))

    def _constant_aliases(self, protos: list[onnx.NodeProto]) -> dict[str, str]:
        """Identity outputs that are only another name for a constant, mapped to the constant.

        torch.onnx deduplicates equal initializers (two zero biases, say) and writes Identity nodes
        for the copies; reading through them, a pass sees the constant it expects. Identities that
        are graph outputs, or are read from inside a subgraph, keep their node."""
        aliases: dict[str, str] = {}
        for proto in protos:
            if (proto.op_type == "Identity" and proto.domain in ("", "ai.onnx") and len(proto.input) == 1
                    and len(proto.output) == 1 and proto.output[0] not in self._output_names):
                source = aliases.get(proto.input[0], proto.input[0])
                if source in self._inits:
                    aliases[proto.output[0]] = source
        if aliases:
            implicit = set().union(*(_subgraph_outer_names(p) for p in protos if any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in p.attribute)))
            aliases = {k: v for k, v in aliases.items() if k not in implicit}
        return aliases

    def reset(self, model: onnx.ModelProto) -> None:
        """Replace the whole graph (for passes that delegate to another tool, like simplify)."""
        mutations = self.mutations
        self.__init__(model, input_shapes=self.input_shapes)
        self.mutations = mutations + 1
        self._touched.update(self._producer)

    def revert(self, model: onnx.ModelProto) -> None:
        """Go back to `model`, the graph as it was before a pass edited it (a pass that decides, after
        trying, to change nothing): not an edit, so the pass may report no change."""
        self.__init__(model, input_shapes=self.input_shapes)

    @classmethod
    def from_model(cls, model: onnx.ModelProto, **kwargs: Any) -> "Graph":
        return cls(model, **kwargs)

    # ------------------------------------------------------------------ indexes
    def _index(self, node: Node) -> None:
        """Register a node: validated first, so a refused node leaves every index untouched."""
        outputs = [t for t in node.proto.output if t]
        clash = next((t for t in outputs if t in self._producer), None)
        if clash is None and len(set(outputs)) != len(outputs):
            clash = next(t for t in outputs if outputs.count(t) > 1)
        if clash is not None:
            raise GraphError(f"tensor '{clash}' would have two producers")
        self._nodes[node.id] = node
        if node.proto.name:
            self._node_names.add(node.proto.name)
        for t in node.proto.input:
            if t:
                self._consumers.setdefault(t, {})[node.id] = node
        self._index_subgraphs(node)
        for t in outputs:
            self._producer[t] = node
            self._tensor_names.add(t)

    def _index_subgraphs(self, node: Node) -> None:
        """Record what a node's subgraphs read from this scope (they count as uses) and the names
        they define (unique_name must not hand those out: ONNX names are global across scopes)."""
        if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.proto.attribute):
            return
        implicit = _subgraph_outer_names(node.proto)
        if implicit:
            self._implicit[node.id] = implicit
            for t in implicit:
                self._consumers.setdefault(t, {})[node.id] = node
        self._tensor_names.update(_subgraph_defined_names(node.proto))

    def _unindex_subgraphs(self, node: Node) -> None:
        for t in self._implicit.pop(node.id, set()):
            self._drop_use(t, node)

    def _drop_use(self, t: str, node: Node) -> None:
        """`node` stopped reading `t` in one place; forget the use unless it reads `t` elsewhere."""
        if t and t not in node.proto.input and t not in self._implicit.get(node.id, ()):
            self._forget_use(t, node)

    def _forget_use(self, t: str, node: Node) -> None:
        users = self._consumers.get(t)
        if users is not None:
            users.pop(node.id, None)
            if not users:
                del self._consumers[t]
                self._touched.add(t)  # a constant nobody reads any more is dropped on save

    def _edit(self, *tensors: str) -> None:
        self.mutations += 1
        self._touched.update(t for t in tensors if t)

    # ------------------------------------------------------------------ queries
    @property
    def opset(self) -> int:
        for imp in self._source.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return imp.version
        return 0

    def opset_of(self, domain: str) -> int | None:
        for imp in self._source.opset_import:
            if (imp.domain or "") == (domain or "") or {imp.domain, domain} <= {"", "ai.onnx"}:
                return imp.version
        return None

    def require_opset(self, domain: str, version: int = 1) -> None:
        """Declare (or raise to at least `version`) the opset of a domain that new nodes use.
        Raising the default domain's version does not convert existing nodes: use onnx's
        version_converter for that."""
        for imp in self._source.opset_import:
            if (imp.domain or "") == (domain or "") or {imp.domain, domain} <= {"", "ai.onnx"}:
                if imp.version < version:
                    imp.version = version
                    self.mutations += 1
                return
        self._source.opset_import.append(helper.make_opsetid(domain, version))
        self.mutations += 1

    def nodes(self, op: str | None = None) -> list[Node]:
        """Live nodes in insertion order (a snapshot: safe to edit the graph while iterating)."""
        return [n for n in self._nodes.values() if op is None or n.op == op]

    def nested_ops(self) -> dict[str, int]:
        """Op types inside the bodies of If/Loop/Scan nodes, at any depth, with their counts: what
        passes that work on the top-level graph do not see."""
        counts: dict[str, int] = {}

        def visit(protos) -> None:
            for proto in protos:
                for a in proto.attribute:
                    for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                        for inner in g.node:
                            counts[inner.op_type] = counts.get(inner.op_type, 0) + 1
                        visit(g.node)
        visit(n.proto for n in self._nodes.values())
        return counts

    def __len__(self) -> int:
        return len(self._nodes)

    def producer(self, tensor: str) -> Node | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> tuple[Node, ...]:
        return tuple(self._consumers.get(tensor, {}).values())

    def subgraph_reads(self, node: Node) -> frozenset[str]:
        """Outer tensors read inside `node`'s subgraphs (If/Loop/Scan bodies)."""
        return frozenset(self._implicit.get(node.id, ()))

    def is_used(self, tensor: str) -> bool:
        return bool(self._consumers.get(tensor)) or tensor in self._output_names

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in self._output_names

    def is_graph_input(self, tensor: str) -> bool:
        return tensor in self._inputs and tensor not in self._inits

    @property
    def input_names(self) -> list[str]:
        return [name for name in self._inputs if name not in self._inits]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._outputs]

    def is_constant(self, tensor: str) -> bool:
        return tensor in self._inits

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer (or former Constant node) as a read-only array, else None."""
        if tensor not in self._inits:
            return None
        arr = self._arrays.get(tensor)
        if arr is None:
            arr = numpy_helper.to_array(self._inits[tensor])
            arr.setflags(write=False)
            self._arrays[tensor] = arr
        return arr

    def constant_names(self) -> list[str]:
        return list(self._inits)

    def constant_spec(self, tensor: str) -> tuple[tuple[int, ...], np.dtype] | None:
        """Shape and dtype of a constant without decoding its data."""
        t = self._inits.get(tensor)
        if t is None:
            return None
        return tuple(t.dims), helper.tensor_dtype_to_np_dtype(t.data_type)

    def is_private_output(self, tensor: str) -> bool:
        """Produced by a node and read by exactly one node, not a graph output: such a tensor can
        be renamed or rewired without anyone else noticing."""
        return tensor in self._producer and len(self._consumers.get(tensor, {})) == 1 \
            and tensor not in self._output_names

    def reader_conflict(self, tensor: str, reader: Node) -> str | None:
        """None if `reader` alone reads `tensor`, once, and it is not a graph output; otherwise why
        rewriting the tensor for `reader` would change what someone else sees (one line)."""
        if tensor in self._output_names:
            return f"'{tensor}' is a graph output"
        others = [c for c in self._consumers.get(tensor, {}).values() if c is not reader]
        if others:
            return f"'{tensor}' is also read by {others[0].label}"
        if list(reader.proto.input).count(tensor) > 1:
            return f"'{tensor}' is read twice by {reader.label}"
        return None

    def sole_consumer(self, tensor: str) -> Node | None:
        """The only node reading `tensor`, if exactly one does and it is not a graph output."""
        users = self._consumers.get(tensor, {})
        if len(users) != 1 or tensor in self._output_names:
            return None
        return next(iter(users.values()))

    # ------------------------------------------------------------------ shapes
    def refresh_shapes(self) -> None:
        """Run ONNX shape inference on the current graph (with the pipeline's static input shapes).

        shape() calls this lazily the first time, and again after a constant changed shape. Edits
        that keep shapes (folding, rewiring) keep the cache; tensors added since the last run are
        unknown (None) until the next refresh. One refresh costs one linear inference: batch your
        edits, then query."""
        model = self.to_model(refresh_value_info=False, weights=False)
        for vi in model.graph.input:
            if vi.name in self.input_shapes:  # every declared dim (-1, '?', a name, or none at all) made static
                shape = vi.type.tensor_type.shape
                shape.ClearField("dim")
                for size in self.input_shapes[vi.name]:
                    shape.dim.add().dim_value = int(size)
        del model.graph.value_info[:]
        shapes, dtypes = _inferred(model)
        # Reshape targets computed at run time from shapes the inputs fix (paddle2onnx's
        # Shape -> Cast -> Slice -> Concat), which ONNX's data propagation does not follow
        for _ in range(RESOLVE_ROUNDS):  # a resolved Reshape may fix the shape the next one is built from
            resolved = resolve_computed_shapes(model, shapes)
            if resolved is None:
                break
            more, more_dtypes = _inferred(resolved)
            merged = {**shapes, **{k: v for k, v in more.items() if None not in v or k not in shapes}}
            dtypes = {**more_dtypes, **{k: v for k, v in dtypes.items() if v}}
            if merged == shapes:
                break
            model, shapes = resolved, merged
        for name, t in self._inits.items():
            shapes[name] = tuple(t.dims)
            dtypes[name] = t.data_type
        self._shapes, self._dtypes = shapes, dtypes

    def shape(self, tensor: str) -> tuple | None:
        """Shape as a tuple (None for unknown dims), or None if unknown. See refresh_shapes()."""
        if self._shapes is None:
            self.refresh_shapes()
        return self._shapes.get(tensor)

    def static_shape(self, tensor: str) -> tuple[int, ...] | None:
        s = self.shape(tensor)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    def dtype(self, tensor: str) -> int | None:
        """ONNX elem_type of a tensor (TensorProto.FLOAT etc.), if known."""
        if self._shapes is None:
            self.refresh_shapes()
        return self._dtypes.get(tensor)

    # ------------------------------------------------------------------ names
    def unique_name(self, hint: str) -> str:
        """A tensor name not used anywhere in the graph, derived from `hint`."""
        return self._unique(hint, self._tensor_names)

    def unique_node_name(self, hint: str) -> str:
        return self._unique(hint, self._node_names)

    def _unique(self, hint: str, taken: set[str]) -> str:
        # Counters per hint keep a thousand requests for the same hint linear, not quadratic.
        name, k = hint, self._suffix.get(hint, 1)
        while name in taken:
            name, k = f"{hint}_{k}", k + 1
        self._suffix[hint] = k
        taken.add(name)
        return name

    # ------------------------------------------------------------------ constants
    def add_constant(self, hint: str, array: np.ndarray) -> str:
        name = self.unique_name(hint)
        self._inits[name] = numpy_helper.from_array(np.asarray(array), name)
        self._edit(name)
        return name

    def set_constant(self, tensor: str, array: np.ndarray) -> None:
        """Replace the value of an existing constant, keeping its name (all its readers see it)."""
        if tensor not in self._inits:
            raise GraphError(f"'{tensor}' is not a constant")
        old_dims = tuple(self._inits[tensor].dims)
        self._inits[tensor] = numpy_helper.from_array(np.asarray(array), tensor)
        self._arrays.pop(tensor, None)
        if tuple(np.shape(array)) != old_dims:
            # Shapes downstream may all change (prune slicing channels): recompute on next query
            # rather than ever answer with a stale shape.
            self._shapes = None
        self._edit(tensor, *(o for n in self.consumers(tensor) for o in n.proto.output))

    def set_input_constant(self, node: Node, index: int, array: np.ndarray) -> None:
        """Give input `index` of `node` the value `array`: in place when `node` alone reads that
        constant, as a new constant otherwise (other readers keep the old value)."""
        tensor = node.input(index)
        if tensor in self._inits and self.reader_conflict(tensor, node) is None:
            self.set_constant(tensor, array)
            return
        old_dims = tuple(self._inits[tensor].dims) if tensor in self._inits else None
        self.set_input(node, index, self.add_constant(tensor or f"{node.name or node.op}_input{index}", array))
        if tuple(np.shape(array)) != old_dims:
            self._shapes = None

    def remove_constant(self, tensor: str) -> None:
        if self.is_used(tensor):
            raise GraphError(f"constant '{tensor}' is still used")
        self._inits.pop(tensor, None)
        self._arrays.pop(tensor, None)
        self._inputs.pop(tensor, None)
        self.mutations += 1

    def remove_graph_input(self, tensor: str) -> None:
        if self.is_used(tensor):
            raise GraphError(f"graph input '{tensor}' is still used")
        self._inputs.pop(tensor, None)
        self.mutations += 1

    # ------------------------------------------------------------------ node edits
    def add_node(self, op: str, inputs: Sequence[str], outputs: Sequence[str] | int = 1, *,
                 name: str | None = None, domain: str = "", **attrs: Any) -> Node:
        """Add a node. `outputs` is a list of names or a count of fresh names to make."""
        node_name = self.unique_node_name(name or op)
        if isinstance(outputs, int):
            outputs = [self.unique_name(f"{node_name}_output_{i}") for i in range(outputs)]
        else:
            for t in outputs:
                if t in self._producer or t in self._inits or self.is_graph_input(t):
                    raise GraphError(f"tensor '{t}' already has a producer")
                self._tensor_names.add(t)
        if domain and self.opset_of(domain) is None:
            self.require_opset(domain, 1)
        proto = helper.make_node(op, list(inputs), list(outputs), name=node_name, domain=domain or None,
                                 **{k: v for k, v in attrs.items() if v is not None})
        node = Node(proto, next(self._ids))
        self._index(node)
        self._edit(*outputs)
        return node

    def remove(self, nodes: Node | Iterable[Node], *, safe: bool = True) -> None:
        """Remove nodes. With safe=True (default) refuse, before touching anything, when an output
        of the set is still read by a node outside it or is a graph output."""
        batch = [nodes] if isinstance(nodes, Node) else list(nodes)
        ids = {n.id for n in batch}
        if safe:
            for n in batch:
                for t in n.proto.output:
                    outside = [c for c in self._consumers.get(t, {}).values() if c.id not in ids]
                    if outside or t in self._output_names:
                        where = "a graph output" if not outside else f"read by {outside[0].label}"
                        raise GraphError(f"cannot remove {n.label}: its output '{t}' is {where}")
        for n in batch:
            if not n.alive:
                continue
            for t in set(n.proto.input) | self._implicit.pop(n.id, set()):
                self._forget_use(t, n)
            for t in n.proto.output:
                if self._producer.get(t) is n:
                    del self._producer[t]
            del self._nodes[n.id]
            n.alive = False
            self._edit(*n.proto.output)

    def _live(self, node: Node) -> None:
        if not node.alive or self._nodes.get(node.id) is not node:
            raise GraphError(f"{node.label} is not in this graph (removed?)")

    def set_input(self, node: Node, index: int, tensor: str) -> None:
        """Make input slot `index` of `node` read `tensor` ('' to drop a trailing optional input)."""
        self._live(node)
        proto = node.proto
        while len(proto.input) <= index:
            proto.input.append("")
        old = proto.input[index]
        proto.input[index] = tensor
        self._drop_use(old, node)
        while proto.input and not proto.input[-1]:
            proto.input.pop()
        if tensor:
            self._consumers.setdefault(tensor, {})[node.id] = node
        self._edit(*proto.output)

    def set_output(self, node: Node, index: int, tensor: str) -> None:
        """Make output slot `index` of `node` produce `tensor`, which must have no producer yet."""
        self._live(node)
        if tensor in self._producer or tensor in self._inits or self.is_graph_input(tensor):
            raise GraphError(f"tensor '{tensor}' already has a producer")
        old = node.proto.output[index]
        if self._producer.get(old) is node:
            del self._producer[old]
        node.proto.output[index] = tensor
        self._producer[tensor] = node
        self._tensor_names.add(tensor)
        self._edit(old, tensor)

    def set_attr(self, node: Node, key: str, value: Any) -> None:
        """Set (or with value=None, delete) an attribute."""
        self._live(node)
        attrs = node.proto.attribute
        for i, a in enumerate(attrs):
            if a.name == key:
                del attrs[i]
                break
        if value is not None:
            attrs.append(helper.make_attribute(key, value))
        self._unindex_subgraphs(node)  # a new branch may read other outer tensors
        self._index_subgraphs(node)
        self._edit(*node.proto.output)

    def replace_all_uses(self, old: str, new: str) -> None:
        """Every reader of `old` reads `new` instead. If `old` is a graph output, the graph output
        keeps its name: `new`'s producer is renamed to produce `old` when that is possible (old has
        no producer left and `new` is an unshared node output), else an Identity is inserted."""
        if old == new:
            return
        readers = self.consumers(old)
        inside = next((n for n in readers if old in self._implicit.get(n.id, ())), None)
        if inside is not None:  # checked before any edit: a refused call changes nothing
            raise GraphError(f"'{old}' is read inside a subgraph of {inside.label}; not rewired")
        if old in self._output_names and old in self._producer:
            raise GraphError(f"graph output '{old}' still has a producer; remove it first")
        for n in readers:
            for i, t in enumerate(n.proto.input):
                if t == old:
                    n.proto.input[i] = new
            self._consumers.setdefault(new, {})[n.id] = n
            self._edit(*n.proto.output)
        self._consumers.pop(old, None)
        self._touched.add(old)
        if old in self._output_names:
            prod = self._producer.get(new)
            if (old not in self._producer and prod is not None and new not in self._output_names
                    and not self._consumers.get(new)):
                self.set_output(prod, list(prod.proto.output).index(new), old)
            else:
                self.add_node("Identity", [new], [old], name=f"{old}_identity")

    def bypass(self, node: Node, input_index: int = 0) -> None:
        """Remove a one-output node whose output equals its input `input_index` (Identity, a folded
        BN, ...). Downstream names are kept: the upstream producer takes over the output name when
        it has no other reader, otherwise readers are rewired to the input."""
        src, dst = node.proto.input[input_index], node.proto.output[0]
        prod = self._producer.get(src)
        can_rename = self.is_private_output(src)
        self.remove(node, safe=False)
        if can_rename:
            self.set_output(prod, list(prod.proto.output).index(src), dst)
        else:
            self.replace_all_uses(dst, src)

    # ------------------------------------------------------------------ order and export
    def topological_nodes(self) -> list[Node]:
        """Live nodes in a topological order that keeps the existing order wherever it is valid:
        a node is emitted after its producers, which are emitted on demand (iterative DFS)."""
        order: list[Node] = []
        state: dict[int, int] = {}  # 1 = on the stack, 2 = emitted
        for root in self._nodes.values():
            if state.get(root.id):
                continue
            stack = [(root, iter(self._deps(root)))]
            state[root.id] = 1
            while stack:
                node, deps = stack[-1]
                for dep in deps:
                    s = state.get(dep.id)
                    if s == 1:
                        raise GraphError(f"cycle through {dep.label}")
                    if not s:
                        state[dep.id] = 1
                        stack.append((dep, iter(self._deps(dep))))
                        break
                else:
                    stack.pop()
                    state[node.id] = 2
                    order.append(node)
        return order

    def _deps(self, node: Node) -> Iterator[Node]:
        for t in itertools.chain(node.proto.input, self._implicit.get(node.id, ())):
            p = self._producer.get(t) if t else None
            if p is not None:
                yield p

    def _dirty_tensors(self) -> set[str]:
        """Tensors whose shape or value may differ from the source model: touched ones and
        everything downstream of them."""
        dirty, frontier = set(), [t for t in self._touched]
        while frontier:
            t = frontier.pop()
            if t in dirty:
                continue
            dirty.add(t)
            for n in self._consumers.get(t, {}).values():
                frontier.extend(o for o in n.proto.output if o not in dirty)
        return dirty

    def to_model(self, *, refresh_value_info: bool = True, weights: bool = True,
                 extra_outputs: Sequence[str] = ()) -> onnx.ModelProto:
        """A new ModelProto: nodes in topological order, constants that edits left unused dropped,
        value_info entries refreshed for tensors the edits changed (same coverage as the source).
        weights=False leaves large constants out (see `skeleton`): for analyses, not for saving.
        extra_outputs exposes intermediate tensors as graph outputs (calibration reads them)."""
        src = self._source
        model = _empty_like(src)
        g = model.graph
        nodes = self.topological_nodes()
        g.node.extend(n.proto for n in nodes)
        used = set(self._consumers) | self._output_names
        # Keep constants the source already had unused (cleanup's job, not ours); drop the ones
        # our edits orphaned.
        kept = [name for name in self._inits if name in used or name not in self._touched]
        declared_inputs = set(self._inputs)
        weight_inputs = []
        for name in kept:
            t = self._inits[name]
            if weights or _small(t):
                g.initializer.append(t)
            elif name not in declared_inputs:
                weight_inputs.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        kept_set = set(kept)
        for vi in self._inputs.values():
            if vi.name in self._inits and vi.name not in kept_set:
                continue
            new_vi = g.input.add()
            new_vi.CopyFrom(vi)
            if vi.name in self._inits:  # legacy initializer-as-input: keep its declared type current
                t = self._inits[vi.name]
                new_vi.type.CopyFrom(helper.make_tensor_type_proto(t.data_type, list(t.dims)))
        g.input.extend(weight_inputs)
        g.output.extend(self._outputs)
        g.sparse_initializer.extend(src.graph.sparse_initializer)
        g.quantization_annotation.extend(src.graph.quantization_annotation)
        if src.ir_version < 4:  # before IR 4 every initializer must also be declared as an input
            g.input.extend(helper.make_tensor_value_info(n, self._inits[n].data_type, list(self._inits[n].dims))
                           for n in kept if n not in declared_inputs and (weights or _small(self._inits[n])))
        for name in dict.fromkeys(extra_outputs):
            if name not in self._output_names:  # already an output: exposed as it is
                g.output.append(helper.make_empty_tensor_value_info(name))
        existing = set(self._producer) | set(self._inits) | set(self._inputs)
        dirty = self._dirty_tensors() if self._touched else set()
        stale = [vi.name for vi in src.graph.value_info if vi.name in dirty]
        g.value_info.extend(vi for vi in src.graph.value_info if vi.name in existing and vi.name not in dirty)
        if refresh_value_info and stale:
            wanted = set(stale) & existing
            try:
                inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
                g.value_info.extend(vi for vi in inferred.graph.value_info if vi.name in wanted)
            except Exception:  # noqa: BLE001 - without inference the entries are simply left out
                pass
        return model

    # ------------------------------------------------------------------ analyses
    def to_networkx(self) -> "nx.MultiDiGraph":
        """A read-only snapshot for analyses: nodes are Node ids (attr `node`); one edge per input
        slot, carrying the tensor name and the slot index (Concat(a, b, a) has three edges).
        Rebuild after editing."""
        import networkx as nx  # 0.15 s to import: only the analyses that walk the graph pay for it

        dg = nx.MultiDiGraph()
        for n in self._nodes.values():
            dg.add_node(n.id, node=n)
        for c in self._nodes.values():
            for slot, t in enumerate(c.proto.input):
                p = self._producer.get(t) if t else None
                if p is not None:
                    dg.add_edge(p.id, c.id, tensor=t, slot=slot)
            for t in self._implicit.get(c.id, ()):
                p = self._producer.get(t)
                if p is not None:
                    dg.add_edge(p.id, c.id, tensor=t, slot=None)  # read inside a subgraph
        return dg

    def check_indexes(self) -> None:
        """Assert the incremental indexes equal a rebuild from scratch (used by the tests)."""
        producer: dict[str, int] = {}
        consumers: dict[str, set[int]] = {}
        for n in self._nodes.values():
            for t in n.proto.output:
                if t:
                    producer[t] = n.id
            for t in itertools.chain(n.proto.input, self._implicit.get(n.id, ())):
                if t:
                    consumers.setdefault(t, set()).add(n.id)
        got_p = {t: n.id for t, n in self._producer.items()}
        got_c = {t: set(d) for t, d in self._consumers.items() if d}
        if got_p != producer:
            raise AssertionError(f"producer index drifted: {set(got_p.items()) ^ set(producer.items())}")
        if got_c != consumers:
            diff = {t for t in set(got_c) | set(consumers) if got_c.get(t) != consumers.get(t)}
            raise AssertionError(f"consumer index drifted for {sorted(diff)[:5]}")
