"""Invariants of the graph layer (onnxopt/graph.py).

The central property: after any sequence of edits the incremental producer/consumer indexes equal a
rebuild from scratch, and `to_model()` writes a model onnx.checker accepts (style.md §10.4 item 6).
hypothesis is not installed, so the randomized sequence is a seeded numpy loop; each seed is a
separate, reproducible test case.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.graph.core import Graph, GraphError
from onnxopt.runtime.sessions import run_model
from onnxopt.testing import count_ops, parse_model

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    (out,) = run_model(model, [feeds])
    return list(out.values())


def assert_topological(model: onnx.ModelProto) -> None:
    """Every node input is a graph input, an initializer or the output of an earlier node."""
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        for t in node.input:
            assert not t or t in known, f"{node.op_type} reads '{t}' before it is produced"
        known.update(node.output)


def index_snapshot(graph: Graph) -> tuple:
    """Everything the indexes expose, keyed by stable node ids (for 'nothing changed' checks)."""
    tensors = set(graph.constant_names()) | set(graph.input_names) | set(graph.output_names)
    for n in graph.nodes():
        tensors.update(t for t in n.inputs + n.outputs if t)
    return (
        graph.mutations,
        tuple((n.id, n.op, n.inputs, n.outputs, n.proto.SerializeToString()) for n in graph.nodes()),
        tuple(sorted((t, getattr(graph.producer(t), "id", None),
                      tuple(sorted(c.id for c in graph.consumers(t)))) for t in tensors)),
    )


def assert_indexes_match_rebuild(graph: Graph, seen: set[str]) -> None:
    """Independent of Graph.check_indexes: rebuild producer/consumer maps from the live node protos
    and compare them with what the public query API answers, for every name ever seen."""
    producer: dict[str, int] = {}
    consumers: dict[str, set[int]] = collections.defaultdict(set)
    for n in graph.nodes():
        assert n.alive
        for t in n.outputs:
            if t:
                assert t not in producer, f"'{t}' has two producers"
                producer[t] = n.id
        for t in n.inputs:
            if t:
                consumers[t].add(n.id)
    outputs = set(graph.output_names)
    names = set(producer) | set(consumers) | set(graph.constant_names()) | set(graph.input_names) | outputs
    seen |= names
    for t in seen:
        p = graph.producer(t)
        assert (p.id if p is not None else None) == producer.get(t), f"producer of '{t}'"
        if p is not None:
            assert p.alive
        users = graph.consumers(t)
        ids = [c.id for c in users]
        assert len(ids) == len(set(ids)), f"'{t}' lists a consumer twice"
        assert set(ids) == consumers.get(t, set()), f"consumers of '{t}'"
        assert graph.is_used(t) == (bool(consumers.get(t)) or t in outputs), f"is_used('{t}')"


# ---------------------------------------------------------------------------------------------
# Randomized edit sequences

RANDOM_TEXT = OPSET + """
rand (float[1,4,6,6] x) => (float[1,4,6,6] out1, float[1,4,6,6] mid, float[1,8] out2) {
  c0 = Conv <pads = [1, 1, 1, 1]> (x, W0, B0)
  r0 = Relu(c0)
  n0 = Neg(r0)
  a0 = Abs(n0)
  s0 = Sigmoid(a0)
  m0 = Mul(s0, S)
  k = Constant <value_float = 0.5> ()
  m1 = Mul(m0, k)
  add0 = Add(m1, r0)
  l0 = LeakyRelu <alpha = 0.1> (add0)
  c1 = Conv(l0, W1)
  i0 = Identity(c1)
  r1 = Relu(i0)
  add1 = Add(r1, l0)
  mid = Tanh(add1)
  e0 = Elu <alpha = 1.0> (mid)
  sq = Mul(e0, e0)
  t1 = Tanh(sq)
  tt = Add(t1, t1)
  sub0 = Sub(tt, S)
  ab1 = Abs(sub0)
  n1 = Neg(ab1)
  sg1 = Sigmoid(n1)
  add2 = Add(sg1, mid)
  out1 = Relu(add2)
  gp = GlobalAveragePool(mid)
  fl = Flatten(gp)
  gm = Gemm <transB = 1> (fl, G, GB)
  r2 = Relu(gm)
  i1 = Identity(r2)
  out2 = LeakyRelu <alpha = 0.2> (i1)
}
"""

SHAPE_PRESERVING = ("Identity", "Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Elu", "LeakyRelu")


def random_model() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    return parse_model(RANDOM_TEXT, W0=f32(rng, 4, 4, 3, 3), B0=f32(rng, 4), S=f32(rng, 1, 4, 1, 1),
                       W1=f32(rng, 4, 4, 1, 1), G=f32(rng, 8, 4), GB=f32(rng, 8))


class Editor:
    """Random edits that keep the graph valid. With preserving=True they also keep every output
    value bit-identical (only Identity is inserted or bypassed, constants keep their values)."""

    def __init__(self, graph: Graph, rng: np.random.Generator, preserving: bool) -> None:
        self.g, self.rng, self.preserving = graph, rng, preserving
        self.unary = ("Identity",) if preserving else ("Identity", "Relu", "Neg", "Abs", "Sigmoid")
        self.bypassable = ("Identity",) if preserving else SHAPE_PRESERVING
        self.done: collections.Counter[str] = collections.Counter()

    def pick(self, seq):
        seq = list(seq)
        return seq[int(self.rng.integers(len(seq)))] if seq else None

    def activations(self) -> list[str]:
        return list(self.g.input_names) + [t for n in self.g.nodes() for t in n.outputs]

    def insert_rewire(self) -> bool:
        """Insert a unary node after a tensor and move a random subset of its reader slots to it."""
        t = self.pick(self.activations())
        new = self.g.add_node(self.pick(self.unary), [t])
        slots = [(c, i) for c in self.g.consumers(t) if c is not new for i, s in enumerate(c.inputs) if s == t]
        for c, i in slots:
            if self.rng.random() < 0.6:
                self.g.set_input(c, i, new.outputs[0])
        return True

    def insert_replace_all(self) -> bool:
        """Insert after a tensor with replace_all_uses, then point the new node back at the tensor."""
        t = self.pick(t for t in self.activations() if not self.g.is_graph_output(t))
        if t is None:
            return False
        new = self.g.add_node(self.pick(self.unary), [t])
        readers = {c.id for c in self.g.consumers(t)} - {new.id}
        self.g.replace_all_uses(t, new.outputs[0])
        self.g.set_input(new, 0, t)
        assert [c.id for c in self.g.consumers(t)] == [new.id]
        assert {c.id for c in self.g.consumers(new.outputs[0])} == readers
        return True

    def bypass(self) -> bool:
        node = self.pick(n for n in self.g.nodes() if n.op in self.bypassable)
        if node is None:
            return False
        dst = node.outputs[0]
        readers = {c.id for c in self.g.consumers(dst)}
        self.g.bypass(node)
        assert not node.alive
        if self.g.is_graph_output(dst):
            assert self.g.producer(dst) is not None, "bypass lost a graph output's producer"
        elif self.g.producer(dst) is None:  # readers were rewired to the input
            assert not self.g.consumers(dst)
            assert readers <= {c.id for c in self.g.consumers(node.inputs[0])}
        else:  # the upstream producer took over the name
            assert {c.id for c in self.g.consumers(dst)} == readers
        return True

    def add_dead(self) -> bool:
        first = self.g.add_node(self.pick(self.unary), [self.pick(self.activations())])
        if self.rng.random() < 0.5:
            self.g.add_node(self.pick(self.unary), [first.outputs[0]])
        return True

    def remove_one(self) -> bool:
        node = self.pick(self.g.nodes())
        before = index_snapshot(self.g)
        try:
            self.g.remove(node)
        except GraphError:
            assert index_snapshot(self.g) == before, "a refused remove() changed the graph"
            assert node.alive
            self.done["remove_refused"] += 1
            return True
        assert not node.alive
        return True

    def remove_chain(self) -> bool:
        """Remove a dead node together with its producer when the producer feeds only it."""
        for node in self.g.nodes():
            if any(self.g.is_used(t) for t in node.outputs):
                continue
            prod = self.g.producer(node.inputs[0]) if node.inputs else None
            if (prod is not None and len(self.g.consumers(node.inputs[0])) == 1
                    and not any(self.g.is_graph_output(t) for t in prod.outputs)):
                self.g.remove([prod, node])  # producer first: internal edge inside the set
                assert not prod.alive and not node.alive
                return True
        return False

    def set_attr(self) -> bool:
        node = self.pick(n for n in self.g.nodes() if n.op in ("LeakyRelu", "Elu"))
        if node is None:
            return False
        value = float(node.attr("alpha")) if self.preserving else float(self.rng.uniform(0.01, 0.5))
        self.g.set_attr(node, "alpha", value)
        assert node.attr("alpha") == pytest.approx(value)
        return True

    def float_constant_reads(self) -> list[tuple]:
        return [(n, i, t) for n in self.g.nodes() for i, t in enumerate(n.inputs)
                if self.g.is_constant(t) and self.g.constant(t).dtype == np.float32]

    def swap_constant(self) -> bool:
        read = self.pick(self.float_constant_reads())
        if read is None:
            return False
        node, i, name = read
        value = self.g.constant(name)
        if not self.preserving:
            value = value + self.rng.standard_normal(value.shape).astype(np.float32) * 0.01
        new = self.g.add_constant(f"{name}_v", value)
        assert new != name and self.g.is_constant(new)
        self.g.set_input(node, i, new)
        return True

    def set_constant(self) -> bool:
        read = self.pick(self.float_constant_reads())
        if read is None:
            return False
        name = read[2]
        value = np.array(self.g.constant(name))
        if not self.preserving:
            value = value * np.float32(0.9)
        self.g.set_constant(name, value)
        np.testing.assert_array_equal(self.g.constant(name), value)
        return True

    def rename_output(self) -> bool:
        node = self.pick(self.g.nodes())
        old = node.outputs[0]
        readers = {c.id for c in self.g.consumers(old)}
        new = self.g.unique_name(f"{old}_r")
        self.g.set_output(node, 0, new)
        self.g.replace_all_uses(old, new)
        if self.g.is_graph_output(old):
            assert self.g.producer(old) is not None
        else:
            assert self.g.producer(new) is node and not self.g.consumers(old)
            assert {c.id for c in self.g.consumers(new)} == readers
        return True

    EDITS = ("insert_rewire", "insert_replace_all", "bypass", "add_dead", "remove_one", "remove_chain",
             "set_attr", "swap_constant", "set_constant", "rename_output")

    def step(self) -> None:
        kind = self.pick(self.EDITS)
        if getattr(self, kind)():
            self.done[kind] += 1


@pytest.mark.parametrize("preserving", [False, True], ids=["any", "value-preserving"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_edits_keep_indexes_equal_to_rebuild(seed, preserving):
    model = random_model()
    x = np.random.default_rng(100).standard_normal((1, 4, 6, 6)).astype(np.float32)
    reference = run(model, x=x)
    graph = Graph(model)
    editor = Editor(graph, np.random.default_rng(seed), preserving)
    seen: set[str] = set()
    assert len(graph) == 30  # 31 nodes, the Constant became an initializer
    for i in range(200):
        editor.step()
        graph.check_indexes()
        assert_indexes_match_rebuild(graph, seen)
        if i % 50 == 49:  # to_model in the middle must not disturb the graph
            mid = graph.to_model()
            onnx.checker.check_model(mid, full_check=True)
            graph.check_indexes()
    for kind in Editor.EDITS:
        assert editor.done[kind] >= 3, f"edit '{kind}' ran only {editor.done[kind]} times: {editor.done}"
    assert editor.done["remove_refused"] >= 1
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    assert_topological(out)
    assert [o.name for o in out.graph.output] == ["out1", "mid", "out2"]
    got = run(out, x=x)
    assert [a.shape for a in got] == [(1, 4, 6, 6), (1, 4, 6, 6), (1, 8)]
    if preserving:
        for a, b in zip(reference, got):
            np.testing.assert_array_equal(a, b)
    else:
        assert all(np.all(np.isfinite(a)) for a in got)
    # a fresh graph over the result agrees with the edited one on every tensor's readers
    fresh = Graph(out)
    fresh.check_indexes()
    for n in graph.nodes():
        for t in n.outputs:
            assert sorted(c.op for c in fresh.consumers(t)) == sorted(c.op for c in graph.consumers(t))


# ---------------------------------------------------------------------------------------------
# Constants

CONSTANTS_TEXT = OPSET + """
consts (float[2] x) => (float[2] y, float o) {
  a = Constant <value = float[2] {1.0, 2.0}> ()
  b = Constant <value_float = 3.0> ()
  c = Constant <value_floats = [0.25, -4.0]> ()
  d = Constant <value_int = 5> ()
  e = Constant <value_ints = [2]> ()
  o = Constant <value_float = 7.0> ()
  y1 = Add(x, a)
  y2 = Mul(y1, b)
  y3 = Add(y2, c)
  dd = Cast <to = 1> (d)
  y4 = Mul(y3, dd)
  y5 = Add(y4, W)
  y = Reshape(y5, e)
}
"""


def test_constant_nodes_become_constants_except_graph_outputs():
    w = np.array([0.5, -0.5], np.float32)
    model = parse_model(CONSTANTS_TEXT, W=w)
    graph = Graph(model)
    expected = {
        "a": (np.array([1.0, 2.0], np.float32), np.float32, (2,)),
        "b": (np.array(3.0, np.float32), np.float32, ()),
        "c": (np.array([0.25, -4.0], np.float32), np.float32, (2,)),
        "d": (np.array(5, np.int64), np.int64, ()),
        "e": (np.array([2], np.int64), np.int64, (1,)),
        "W": (w, np.float32, (2,)),
    }
    for name, (value, dtype, shape) in expected.items():
        got = graph.constant(name)
        assert got is not None, name
        assert got.dtype == dtype and got.shape == shape, name
        np.testing.assert_array_equal(got, value)
        assert graph.is_constant(name) and graph.producer(name) is None
        assert not got.flags.writeable, f"constant('{name}') must be read-only"
    # the Constant feeding a graph output keeps giving the output its name
    assert [n.outputs for n in graph.nodes("Constant")] == [("o",)]
    assert graph.constant("o") is None and not graph.is_constant("o")
    assert graph.constant("y1") is None and graph.constant("nope") is None
    assert sorted(graph.constant_names()) == ["W", "a", "b", "c", "d", "e"]

    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    assert count_ops(out)["Constant"] == 1
    assert sorted(t.name for t in out.graph.initializer) == ["W", "a", "b", "c", "d", "e"]
    x = np.array([1.0, -2.0], np.float32)
    for before, after in zip(run(model, x=x), run(out, x=x)):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(run(out, x=x)[0], ((x + [1, 2]) * 3 + [0.25, -4]) * 5 + w)


def test_set_constant_keeps_name_and_refuses_non_constants():
    model = parse_model(CONSTANTS_TEXT, W=np.zeros(2, np.float32))
    graph = Graph(model)
    graph.set_constant("b", np.array(10.0, np.float32))
    np.testing.assert_array_equal(graph.constant("b"), np.float32(10.0))
    with pytest.raises(GraphError, match="not a constant"):
        graph.set_constant("y1", np.zeros(2, np.float32))
    out = graph.to_model()
    x = np.array([1.0, 1.0], np.float32)
    np.testing.assert_allclose(run(out, x=x)[0], ((x + [1, 2]) * 10 + [0.25, -4]) * 5)


# ---------------------------------------------------------------------------------------------
# remove()

REMOVE_TEXT = OPSET + """
rm (float[2] x) => (float[2] y, float[2] o) {
  a = Neg(x)
  b = Abs(a)
  c = Relu(b)
  y = Sigmoid(a)
  o = Tanh(x)
  d1 = Exp(x)
  d2 = Log(d1)
  d3 = Add(d2, d1)
}
"""


def node_by_output(graph: Graph, tensor: str):
    node = graph.producer(tensor)
    assert node is not None, tensor
    return node


@pytest.mark.parametrize("victims, message", [
    (["a"], "'a' is read by"),
    (["o"], "'o' is a graph output"),
    (["c", "a"], "'a' is read by"),          # a removable node first: nothing may be removed
    (["d1", "d2"], "read by Add"),           # d3 outside the set still reads both
])
def test_remove_safe_refuses_and_changes_nothing(victims, message):
    graph = Graph(parse_model(REMOVE_TEXT))
    before = index_snapshot(graph)
    model_before = graph.to_model().SerializeToString()
    nodes = [node_by_output(graph, t) for t in victims]
    with pytest.raises(GraphError, match=message):
        graph.remove(nodes if len(nodes) > 1 else nodes[0])
    assert index_snapshot(graph) == before
    assert all(n.alive for n in nodes)
    assert graph.to_model().SerializeToString() == model_before
    graph.check_indexes()


@pytest.mark.parametrize("victims", [["d1", "d2", "d3"], ["d3", "d1", "d2"], ["b", "c"], ["c", "b"]])
def test_remove_set_with_internal_edges(victims):
    model = parse_model(REMOVE_TEXT)
    graph = Graph(model)
    nodes = [node_by_output(graph, t) for t in victims]
    graph.remove(nodes)
    graph.check_indexes()
    assert len(graph) == 8 - len(victims)
    assert not any(n.alive for n in nodes)
    for t in victims:
        assert graph.producer(t) is None and not graph.consumers(t)
    removed_ids = {n.id for n in nodes}
    for t in ("x", "a", "b", "d1", "d2"):
        assert not removed_ids & {c.id for c in graph.consumers(t)}
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    assert not set(victims) & {t for n in out.graph.node for t in n.output}
    x = np.array([0.5, 2.0], np.float32)
    for before, after in zip(run(model, x=x), run(out, x=x)):
        np.testing.assert_array_equal(before, after)


def test_remove_unsafe_then_orphaned_initializer_is_dropped():
    model = parse_model(OPSET + """
    g (float[2] x) => (float[2] y) {
      t = Add(x, B)
      y = Relu(x)
    }""", B=np.ones(2, np.float32))
    graph = Graph(model)
    graph.remove(graph.nodes("Add")[0])
    assert not graph.is_used("B") and not graph.is_used("t")
    out = graph.to_model()
    assert [t.name for t in out.graph.initializer] == []
    onnx.checker.check_model(out, full_check=True)


# ---------------------------------------------------------------------------------------------
# replace_all_uses, set_input, bypass


def test_replace_all_uses_renames_producer_to_keep_graph_output_name():
    model = parse_model(OPSET + """
    g (float[3] x) => (float[3] y) {
      t = Relu(x)
      y = Neg(t)
    }""")
    graph = Graph(model)
    neg = graph.nodes("Neg")[0]
    graph.remove(neg, safe=False)
    graph.replace_all_uses("y", "t")
    graph.check_indexes()
    relu = graph.nodes("Relu")[0]
    assert graph.output_names == ["y"]
    assert graph.producer("y") is relu and relu.outputs == ("y",)
    assert graph.producer("t") is None
    assert [n.op for n in graph.nodes()] == ["Relu"]  # renamed, no Identity
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(run(out, x=x)[0], np.maximum(x, 0))


def test_replace_all_uses_inserts_identity_when_new_is_a_graph_input():
    model = parse_model(OPSET + """
    g (float[3] x) => (float[3] y, float[3] z) {
      y = Neg(x)
      z = Abs(y)
    }""")
    graph = Graph(model)
    graph.remove(graph.nodes("Neg")[0], safe=False)
    graph.replace_all_uses("y", "x")
    graph.check_indexes()
    assert graph.output_names == ["y", "z"]
    ident = graph.producer("y")
    assert ident is not None and ident.op == "Identity" and ident.inputs == ("x",)
    assert graph.nodes("Abs")[0].inputs == ("x",)
    assert {c.op for c in graph.consumers("x")} == {"Identity", "Abs"}
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    y, z = run(out, x=x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(z, np.abs(x))


def test_replace_all_uses_rewires_every_consumer_including_a_double_read():
    model = parse_model(OPSET + """
    g (float[3] x) => (float[3] p, float[3] q, float[3] r) {
      t = Neg(x)
      u = Abs(x)
      p = Add(t, t)
      q = Mul(t, x)
      r = Relu(t)
    }""")
    graph = Graph(model)
    graph.replace_all_uses("t", "u")
    graph.check_indexes()
    assert graph.consumers("t") == ()
    assert not graph.is_used("t")
    assert sorted(c.op for c in graph.consumers("u")) == ["Add", "Mul", "Relu"]
    assert graph.nodes("Add")[0].inputs == ("u", "u")
    assert graph.nodes("Mul")[0].inputs == ("u", "x")
    graph.remove(graph.producer("t"))  # now dead: safe removal must succeed
    graph.check_indexes()
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    assert "Neg" not in count_ops(out)
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    p, q, r = run(out, x=x)
    np.testing.assert_array_equal(p, 2 * np.abs(x))
    np.testing.assert_array_equal(q, np.abs(x) * x)
    np.testing.assert_array_equal(r, np.abs(x))


def test_set_input_on_a_node_reading_a_tensor_twice():
    graph = Graph(parse_model(OPSET + """
    g (float[3] x) => (float[3] p) {
      t = Neg(x)
      p = Add(t, t)
    }"""))
    add = graph.nodes("Add")[0]
    graph.set_input(add, 0, "x")
    graph.check_indexes()
    assert [c.id for c in graph.consumers("t")] == [add.id]  # slot 1 still reads t
    assert add.id in {c.id for c in graph.consumers("x")}
    graph.set_input(add, 1, "x")
    graph.check_indexes()
    assert graph.consumers("t") == () and not graph.is_used("t")
    assert add.inputs == ("x", "x")


def test_set_input_empty_drops_trailing_optional_input_and_its_initializer():
    model = parse_model(OPSET + """
    g (float[1,2,4,4] x) => (float[1,3,4,4] y) {
      y = Conv(x, W, B)
    }""", W=np.ones((3, 2, 1, 1), np.float32), B=np.ones(3, np.float32))
    graph = Graph(model)
    conv = graph.nodes("Conv")[0]
    graph.set_input(conv, 2, "")
    graph.check_indexes()
    assert conv.inputs == ("x", "W")
    assert not graph.is_used("B")
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    assert [t.name for t in out.graph.initializer] == ["W"]
    x = np.ones((1, 2, 4, 4), np.float32)
    np.testing.assert_array_equal(run(out, x=x)[0], np.full((1, 3, 4, 4), 2, np.float32))


BYPASS_TEXT = OPSET + """
g (float[3] x) => (float[3] y, float[3] w) {
  t = Relu(x)
  i = Identity(t)
  y = Neg(i)
  w = Identity(x)
}
"""


def test_bypass_renames_the_upstream_producer_when_it_has_no_other_reader():
    graph = Graph(parse_model(BYPASS_TEXT))
    ident = graph.producer("i")
    graph.bypass(ident)
    graph.check_indexes()
    relu, neg = graph.nodes("Relu")[0], graph.nodes("Neg")[0]
    assert relu.outputs == ("i",) and neg.inputs == ("i",)  # downstream name kept
    assert graph.producer("t") is None and not graph.is_used("t")
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    np.testing.assert_array_equal(run(out, x=x)[0], -np.maximum(x, 0))


def test_bypass_rewires_readers_when_the_input_has_another_reader():
    model = parse_model(OPSET + """
    g (float[3] x) => (float[3] y, float[3] v) {
      t = Relu(x)
      i = Identity(t)
      y = Neg(i)
      v = Abs(t)
    }""")
    graph = Graph(model)
    graph.bypass(graph.producer("i"))
    graph.check_indexes()
    assert graph.producer("t").op == "Relu"
    assert graph.nodes("Neg")[0].inputs == ("t",)
    assert sorted(c.op for c in graph.consumers("t")) == ["Abs", "Neg"]
    assert graph.producer("i") is None and not graph.is_used("i")
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    assert count_ops(out) == {"Relu": 1, "Neg": 1, "Abs": 1}


def test_bypass_of_identity_between_graph_input_and_output_keeps_the_output():
    graph = Graph(parse_model(BYPASS_TEXT))
    graph.bypass(graph.producer("w"))
    graph.check_indexes()
    assert graph.output_names == ["y", "w"]
    prod = graph.producer("w")
    assert prod is not None and prod.op == "Identity" and prod.inputs == ("x",)
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == ["y", "w"]


# ---------------------------------------------------------------------------------------------
# to_model: order, initializers, value_info


def test_to_model_orders_a_node_added_before_an_existing_consumer():
    model = parse_model(OPSET + """
    g (float[3] x) => (float[3] y) {
      a = Relu(x)
      b = Abs(a)
      y = Sigmoid(b)
    }""")
    graph = Graph(model)
    relu = graph.nodes("Relu")[0]
    neg = graph.add_node("Neg", ["x"])
    graph.set_input(relu, 0, neg.outputs[0])
    abs_ = graph.nodes("Abs")[0]
    exp = graph.add_node("Exp", ["a"])  # inserted between Relu and Abs, added last
    graph.set_input(abs_, 0, exp.outputs[0])
    assert [n.op for n in graph.nodes()] == ["Relu", "Abs", "Sigmoid", "Neg", "Exp"]
    out = graph.to_model()
    assert [n.op_type for n in out.graph.node] == ["Neg", "Relu", "Exp", "Abs", "Sigmoid"]
    assert_topological(out)
    onnx.checker.check_model(out, full_check=True)
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    np.testing.assert_allclose(run(out, x=x)[0], 1 / (1 + np.exp(-np.exp(np.maximum(-x, 0)))), rtol=1e-6)


def test_to_model_refuses_a_cycle():
    graph = Graph(parse_model(OPSET + """
    g (float[3] x) => (float[3] y) {
      a = Relu(x)
      y = Abs(a)
    }"""))
    graph.set_input(graph.nodes("Relu")[0], 0, "y")
    with pytest.raises(GraphError, match="cycle"):
        graph.to_model()


def test_to_model_drops_orphaned_initializers_but_keeps_preexisting_unused_ones():
    model = parse_model(OPSET + """
    g (float[2] x) => (float[2] y) {
      y = Add(x, B)
    }""", B=np.ones(2, np.float32), spare=np.arange(3, dtype=np.float32))
    graph = Graph(model)
    unused_new = graph.add_constant("never_read", np.zeros(2, np.float32))
    replacement = graph.add_constant("B", np.full(2, 3.0, np.float32))
    assert replacement != "B" and unused_new == "never_read"
    graph.set_input(graph.nodes("Add")[0], 1, replacement)
    out = graph.to_model()
    names = [t.name for t in out.graph.initializer]
    assert sorted(names) == sorted(["spare", replacement])
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_array_equal(run(out, x=np.zeros(2, np.float32))[0], [3.0, 3.0])
    # the untouched spare initializer is written byte for byte
    src = {t.name: t.SerializeToString() for t in model.graph.initializer}
    assert next(t for t in out.graph.initializer if t.name == "spare").SerializeToString() == src["spare"]


VALUE_INFO_TEXT = OPSET + """
vi (float[1,3,8,8] x) => (float[1,C,1,1] p1, float[1,4,1,1] p2) {
  y1 = Conv <pads = [1, 1, 1, 1]> (x, W1)
  z1 = Relu(y1)
  p1 = GlobalAveragePool(z1)
  y2 = Conv <pads = [1, 1, 1, 1]> (x, W2)
  z2 = Relu(y2)
  p2 = GlobalAveragePool(z2)
}
"""


def with_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model plus inferred value_info (graph outputs keep their declared, symbolic types)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


def test_value_info_refreshed_for_changed_tensors_and_untouched_entries_kept_identical():
    rng = np.random.default_rng(3)
    w1 = f32(rng, 4, 3, 3, 3)
    model = with_value_info(parse_model(VALUE_INFO_TEXT, W1=w1, W2=f32(rng, 4, 3, 3, 3)))
    src_vi = {vi.name: vi for vi in model.graph.value_info}
    assert set(src_vi) == {"y1", "z1", "y2", "z2"}
    graph = Graph(model)
    graph.set_constant("W1", w1[:2])  # 4 -> 2 output channels
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    vi = {v.name: v for v in out.graph.value_info}
    assert set(vi) == {"y1", "z1", "y2", "z2"}

    def dims(v):
        return [d.dim_value for d in v.type.tensor_type.shape.dim]

    assert dims(vi["y1"]) == [1, 2, 8, 8]
    assert dims(vi["z1"]) == [1, 2, 8, 8]
    for name in ("y2", "z2"):
        assert vi[name].SerializeToString() == src_vi[name].SerializeToString()
    p1, p2 = run(out, x=np.ones((1, 3, 8, 8), np.float32))
    assert p1.shape == (1, 2, 1, 1) and p2.shape == (1, 4, 1, 1)


def test_value_info_of_removed_tensors_is_dropped():
    rng = np.random.default_rng(4)
    model = with_value_info(parse_model(VALUE_INFO_TEXT, W1=f32(rng, 4, 3, 3, 3), W2=f32(rng, 4, 3, 3, 3)))
    graph = Graph(model)
    graph.bypass(graph.producer("z2"))  # Relu gone: Conv now produces z2, y2 no longer exists
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    names = {v.name for v in out.graph.value_info}
    assert "y2" not in names
    assert {"y1", "z1"} <= names


# ---------------------------------------------------------------------------------------------
# The caller's model is never touched


def test_graph_never_mutates_the_callers_model():
    rng = np.random.default_rng(5)
    model = with_value_info(parse_model(VALUE_INFO_TEXT, W1=f32(rng, 4, 3, 3, 3), W2=f32(rng, 4, 3, 3, 3)))
    before = model.SerializeToString()
    graph = Graph(model, input_shapes={"x": (1, 3, 8, 8)})
    graph.set_constant("W1", f32(rng, 2, 3, 3, 3))
    graph.bypass(graph.producer("z2"))
    graph.set_attr(graph.producer("y1"), "pads", [0, 0, 0, 0])
    graph.set_input(graph.producer("p1"), 0, graph.add_node("Neg", ["z1"]).outputs[0])
    graph.add_constant("extra", np.zeros(3, np.float32))
    graph.set_output(graph.producer("p2"), 0, "p2_new")
    graph.refresh_shapes()
    first = graph.to_model()
    first_bytes = first.SerializeToString()
    assert model.SerializeToString() == before
    # the returned model shares nothing with the graph or the caller either
    first.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros(1, np.float32), "clobbered"))
    first.graph.node[0].op_type = "Clobbered"
    del first.graph.node[1:]
    second = graph.to_model()
    assert model.SerializeToString() == before
    assert second.SerializeToString() == first_bytes


def test_graph_from_constant_node_model_does_not_mutate_caller():
    model = parse_model(CONSTANTS_TEXT, W=np.ones(2, np.float32))
    before = model.SerializeToString()
    graph = Graph(model)
    graph.set_constant("a", np.zeros(2, np.float32))
    graph.to_model()
    assert model.SerializeToString() == before


# ---------------------------------------------------------------------------------------------
# Names


def test_unique_names_never_collide():
    model = parse_model(OPSET + """
    g (float[2] x) => (float[2] y) {
      t = Relu(x)
      y = Add(t, W)
    }""", W=np.ones(2, np.float32))
    graph = Graph(model)
    taken = {"x", "t", "y", "W"}
    made = [graph.unique_name(hint) for hint in ("x", "t", "y", "W", "t", "t", "fresh", "fresh") * 5]
    assert len(set(made)) == len(made)
    assert not set(made) & taken
    assert "fresh" in made  # a free hint is used as is
    # explicit output names claim the name too
    graph.add_node("Neg", ["x"], ["Relu_output_0"], name="Relu")
    nodes = [graph.add_node("Relu", ["x"]) for _ in range(20)]
    outs = [n.outputs[0] for n in nodes]
    assert "Relu_output_0" not in outs
    assert len(set(outs)) == 20 and not set(outs) & (taken | set(made))
    node_names = [n.name for n in graph.nodes()]
    assert all(node_names[2:]) and len(set(node_names[2:])) == len(node_names[2:])
    hinted = {graph.unique_node_name("Relu") for _ in range(5)}
    assert len(hinted) == 5 and not hinted & set(node_names)
    graph.check_indexes()
    onnx.checker.check_model(graph.to_model(), full_check=True)


@pytest.mark.parametrize("taken", ["t", "W", "x"])
def test_add_node_refuses_an_output_that_already_exists(taken):
    graph = Graph(parse_model(OPSET + """
    g (float[2] x) => (float[2] y) {
      t = Relu(x)
      y = Add(t, W)
    }""", W=np.ones(2, np.float32)))
    before = index_snapshot(graph)
    with pytest.raises(GraphError, match="already has a producer"):
        graph.add_node("Neg", ["x"], [taken])
    assert index_snapshot(graph) == before


def test_add_node_with_repeated_output_names_changes_nothing():
    graph = Graph(parse_model(OPSET + """
    g (float[4] x) => (float[4] y) {
      y = Relu(x)
    }"""))
    before = index_snapshot(graph)
    with pytest.raises(GraphError):
        graph.add_node("Split", ["x"], ["a", "a"], num_outputs=2)
    assert len(graph) == 1
    assert index_snapshot(graph) == before


SUBGRAPH_NAMES_TEXT = OPSET + """
g (float[2] x, bool c) => (float[2] z) {
  z = If(c) <then_branch = tb () => (float[2] o1) { Neg_output_0 = Neg(x)  o1 = Identity(Neg_output_0) },
             else_branch = eb () => (float[2] o2) { o2 = Abs(x) }>
}
"""


def test_unique_name_avoids_names_defined_inside_subgraphs():
    graph = Graph(parse_model(SUBGRAPH_NAMES_TEXT))
    neg = graph.add_node("Neg", ["x"])
    # make the If depend on the new node so the outer name is in scope when its branches are checked
    red = graph.add_node("ReduceSum", [neg.outputs[0]], keepdims=0)
    cast = graph.add_node("Cast", [red.outputs[0]], to=TensorProto.BOOL)
    graph.set_input(graph.nodes("If")[0], 0, cast.outputs[0])
    assert neg.outputs[0] != "Neg_output_0"
    onnx.checker.check_model(graph.to_model(), full_check=True)


# ---------------------------------------------------------------------------------------------
# Subgraphs: implicit inputs are uses

SUBGRAPH_TEXT = OPSET + """
g (float[2] x, bool c) => (float[2] z) {
  t = Neg(x)
  u = Abs(x)
  z = If(c) <then_branch = tb () => (float[2] o1) {
                 o1 = If(c) <then_branch = tb2 () => (float[2] q1) { q1 = Add(t, u) },
                             else_branch = eb2 () => (float[2] q2) { q2 = Identity(t) }>
             },
             else_branch = eb () => (float[2] o2) { o2 = Relu(t) }>
}
"""


def test_subgraph_implicit_inputs_count_as_uses():
    model = parse_model(SUBGRAPH_TEXT)
    graph = Graph(model)
    iff = graph.nodes("If")[0]
    for t in ("t", "u"):  # u is read only two subgraph levels down
        assert graph.is_used(t)
        assert [c.id for c in graph.consumers(t)] == [iff.id]
        assert graph.sole_consumer(t) is iff
    assert {c.id for c in graph.consumers("c")} == {iff.id}
    before = index_snapshot(graph)
    for t in ("t", "u"):
        with pytest.raises(GraphError, match="read by If"):
            graph.remove(graph.producer(t))
    assert index_snapshot(graph) == before
    # re-adding the producer after the If: only the implicit edge orders it first
    graph.remove(graph.producer("u"), safe=False)
    graph.add_node("Abs", ["x"], ["u"])
    out = graph.to_model()
    assert [n.op_type for n in out.graph.node].index("Abs") < [n.op_type for n in out.graph.node].index("If")
    onnx.checker.check_model(out, full_check=True)
    x = np.array([-1.0, 2.0], np.float32)
    (z,) = run(out, x=x, c=np.array(True))
    np.testing.assert_array_equal(z, -x + np.abs(x))
    # once the If is gone its outer reads are released
    graph.remove(graph.nodes("If")[0], safe=False)
    graph.check_indexes()
    assert not graph.is_used("t") and not graph.is_used("u")
    graph.remove(graph.producer("t"))


def test_replace_all_uses_refused_for_a_subgraph_reader_changes_nothing():
    graph = Graph(parse_model(OPSET + """
    g (float[2] x, bool c) => (float[2] y, float[2] z) {
      t = Neg(x)
      y = Relu(t)
      z = If(c) <then_branch = tb () => (float[2] o1) { o1 = Identity(t) },
                 else_branch = eb () => (float[2] o2) { o2 = Abs(t) }>
    }"""))
    before = index_snapshot(graph)
    with pytest.raises(GraphError, match="subgraph"):
        graph.replace_all_uses("t", "x")
    assert graph.nodes("Relu")[0].inputs == ("t",)
    graph.check_indexes()
    assert index_snapshot(graph) == before


def test_set_attr_replacing_a_branch_updates_implicit_uses():
    graph = Graph(parse_model(OPSET + """
    g (float[2] x, bool c) => (float[2] z) {
      t = Neg(x)
      u = Abs(x)
      z = If(c) <then_branch = tb () => (float[2] o1) { o1 = Identity(t) },
                 else_branch = eb () => (float[2] o2) { o2 = Identity(t) }>
    }"""))
    iff = graph.nodes("If")[0]
    for key, out in (("then_branch", "o1"), ("else_branch", "o2")):
        body = helper.make_graph([helper.make_node("Identity", ["u"], [out])], key, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2])])
        graph.set_attr(iff, key, body)
    assert graph.is_used("u") and [c.id for c in graph.consumers("u")] == [iff.id]
    assert not graph.is_used("t")
    with pytest.raises(GraphError):
        graph.remove(graph.producer("u"))


# ---------------------------------------------------------------------------------------------
# Shapes and dtypes

SHAPES_TEXT = OPSET + """
s (float[N,3,8,8] x) => (float[N,4,8,8] y, int64[4] sh) {
  y = Conv <pads = [1, 1, 1, 1]> (x, W)
  sh = Shape(y)
}
"""


def test_shape_and_dtype_from_inference_with_input_shapes_overriding_batch():
    model = parse_model(SHAPES_TEXT, W=np.ones((4, 3, 3, 3), np.float32))
    graph = Graph(model, input_shapes={"x": (2, 3, 8, 8)})
    assert graph.shape("x") == (2, 3, 8, 8)
    assert graph.shape("y") == (2, 4, 8, 8)
    assert graph.static_shape("y") == (2, 4, 8, 8)
    assert graph.shape("sh") == (4,)
    assert graph.shape("W") == (4, 3, 3, 3)
    assert graph.dtype("y") == TensorProto.FLOAT
    assert graph.dtype("sh") == TensorProto.INT64
    assert graph.dtype("W") == TensorProto.FLOAT
    assert graph.shape("nope") is None and graph.dtype("nope") is None
    # the override is for inference only: the written model keeps its symbolic batch
    out = graph.to_model()
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"

    dynamic = Graph(model)
    assert dynamic.shape("x") == (None, 3, 8, 8)
    assert dynamic.shape("y") == (None, 4, 8, 8)
    assert dynamic.static_shape("y") is None
    assert dynamic.dtype("y") == TensorProto.FLOAT

    relu = graph.add_node("Relu", ["y"])
    graph.refresh_shapes()
    assert graph.shape(relu.outputs[0]) == (2, 4, 8, 8)
    assert graph.dtype(relu.outputs[0]) == TensorProto.FLOAT


# ---------------------------------------------------------------------------------------------
# Found in review


def test_legacy_ir3_model_keeps_initializers_declared_as_inputs():
    from onnxopt.passes import Cleanup, FoldBatchNorm
    from onnxopt.pipeline.run import Pipeline
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((4, 3, 1, 1)), "g": rng.uniform(0.5, 1.5, 4), "b": rng.standard_normal(4),
             "m": rng.standard_normal(4), "v": rng.uniform(0.5, 1.5, 4)}
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"]),
         helper.make_node("Identity", ["z"], ["out"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])]
        + [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inits.items()],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    run = Pipeline([FoldBatchNorm(), Cleanup()]).run(model)
    assert [p.status for p in run.report.passes] == ["applied", "applied"]
    declared = {i.name for i in run.model.graph.input}
    assert {t.name for t in run.model.graph.initializer} <= declared


def test_refused_replace_all_uses_changes_nothing_and_removed_nodes_cannot_be_edited():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] a, float[2] z) { a = Neg(x)  b = Relu(x)  z = Abs(a) }""")
    graph = Graph(model)
    with pytest.raises(GraphError, match="still has a producer"):
        graph.replace_all_uses("a", "b")
    assert graph.mutations == 0 and graph.consumers("a")[0].op == "Abs"
    relu = graph.producer("b")
    graph.remove(relu)
    for edit in (lambda: graph.set_input(relu, 0, "x"), lambda: graph.set_output(relu, 0, "q"),
                 lambda: graph.set_attr(relu, "alpha", 1.0)):
        with pytest.raises(GraphError, match="not in this graph"):
            edit()
    graph.check_indexes()


def test_shapes_are_recomputed_after_a_constant_changes_shape():
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,4,4] x) => (float[1,8,4,4] y) { c = Conv(x, W)  y = Relu(c) }""")
    model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "W"))
    graph = Graph(model)
    assert graph.shape("c") == (1, 8, 4, 4)
    graph.set_constant("W", rng.standard_normal((5, 3, 1, 1)).astype(np.float32))
    assert graph.shape("W") == (5, 3, 1, 1) and graph.shape("c") == (1, 5, 4, 4)


def test_networkx_snapshot_has_one_edge_per_input_slot():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,2] x) => (float[1,6] y) { a = Relu(x)  b = Neg(x)  y = Concat<axis=1>(a, b, a) }""")
    graph = Graph(model)
    dg = graph.to_networkx()
    concat = graph.nodes("Concat")[0].id
    slots = sorted((d["tensor"], d["slot"]) for _, v, d in dg.in_edges(concat, data=True))
    assert slots == [("a", 0), ("a", 2), ("b", 1)]


def test_custom_domain_nodes_declare_their_opset_and_extra_outputs_are_exposed():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { h = Relu(x)  y = Neg(h) }""")
    graph = Graph(model)
    graph.add_node("Gelu", ["x"], 1, domain="com.microsoft")
    graph.require_opset("", 19)
    out = graph.to_model(extra_outputs=["h"])
    opsets = {i.domain: i.version for i in out.opset_import}
    assert opsets == {"": 19, "com.microsoft": 1}
    assert [o.name for o in out.graph.output] == ["y", "h"]
    assert model.opset_import[0].version == 17  # the caller's model is untouched


IDENTITY_ALIASES_TEXT = OPSET + """
agraph (float[2] x) => (float[2] y, float[2] o) <float[2] W, float[2] V> {
    w2 = Identity(W)
    w3 = Identity(w2)
    c = Constant<value = float[2] {1.0, 2.0}>()
    c2 = Identity(c)
    o = Identity(V)
    s = Add(x, w3)
    t = Mul(s, c2)
    y = Add(t, o)
}
"""


def test_identities_of_constants_are_read_through_except_graph_outputs():
    """torch.onnx writes Identity(W) for deduplicated equal initializers: passes see W itself."""
    w, v = np.array([0.5, -0.5], np.float32), np.array([3.0, 4.0], np.float32)
    model = parse_model(IDENTITY_ALIASES_TEXT, W=w, V=v)
    graph = Graph(model)
    assert [n.outputs for n in graph.nodes("Identity")] == [("o",)]  # a graph output keeps its name
    add = graph.producer("s")
    assert add.inputs == ("x", "W") and graph.producer("t").inputs == ("s", "c")
    assert graph.consumers("W") == (add,)
    out = graph.to_model()
    onnx.checker.check_model(out, full_check=True)
    x = np.array([1.0, -2.0], np.float32)
    for before, after in zip(run(model, x=x), run(out, x=x)):
        np.testing.assert_array_equal(before, after)
