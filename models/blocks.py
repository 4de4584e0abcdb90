"""A small graph builder that writes CNN graphs the way ``torch.onnx.export`` names them.

Naming follows the TorchScript exporter:

* node ``/layer1/layer1.0/conv1/Conv``; a second node of one type in one scope is ``Add_1``;
* node output ``/layer1/layer1.0/conv1/Conv_output_0``;
* parameter ``layer1.0.conv1.weight``, ``layer1.0.bn1.running_mean``;
* a weight held in a Constant node: ``/layer1/layer1.0/conv1/Constant_output_0``.

A scope component is the module's qualified name from its last non-numeric atom (torch's
``_unqualified_variable_name``): ``layer1.0.downsample.0`` sits in the scopes
``layer1 / layer1.0 / downsample / downsample.0``.

Weights: Conv He-normal (std sqrt(2/fan_in)), no bias unless asked; Gemm torch's default
U(+-1/sqrt(fan_in)); BN gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1). BN running statistics are those
of a trained net: every op is also evaluated in numpy (float64) on a seeded N(0, 1) probe batch,
and each BN gets ``running_mean = mean + N(0, 0.1) * std`` and ``running_var = var * U(0.5, 1.5)``
of the activations that reach it. Activations therefore stay O(1) at any depth and every BN
still does a non-trivial affine map. The statistics are rounded to 4 significant digits so that
BLAS summation order (threads, CPU) cannot change the model's bytes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Scope", "Value", "GraphBuilder", "ROOT", "IR_VERSION", "OPSETS"]

IR_VERSION = 8
OPSETS = range(13, 18)
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # torch's momentum=0.1, as the exporter writes it


def _display_name(qualified: str) -> str:
    """torch's ``_unqualified_variable_name``: ``features.1.conv.0.0`` -> ``conv.0.0``."""
    atoms = qualified.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified


@dataclasses.dataclass(frozen=True)
class Scope:
    """Where a torch module sits: scope path (node names) and qualified name (parameters).

    ``ROOT / "layer1" / 0 / "conv1"`` is the module ``layer1.0.conv1``.
    """

    path: tuple[str, ...] = ()
    qualified: str = ""

    def __truediv__(self, attr: str | int) -> Scope:
        qualified = f"{self.qualified}.{attr}" if self.qualified else str(attr)
        return Scope(self.path + (_display_name(qualified),), qualified)

    def again(self, k: int) -> Scope:
        """The k-th extra call of one module: torch scopes it ``relu_1``, ``relu_2``..."""
        return Scope(self.path[:-1] + (f"{self.path[-1]}_{k}",), self.qualified)

    @property
    def prefix(self) -> str:
        return "".join("/" + p for p in self.path)


ROOT = Scope()


@dataclasses.dataclass(frozen=True, eq=False)
class Value:
    """A tensor of the graph and its numpy value on the probe batch (N, C, H, W) or (N, F)."""

    name: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape: (C, H, W) or (F,)."""
        return self.data.shape[1:]


def _round_sig(a: np.ndarray, digits: int = 4) -> np.ndarray:
    return np.array([float(f"{v:.{digits}g}") for v in a], np.float32)


def _windows(x: np.ndarray, k: int, stride: int, pad: int, fill: float = 0.0) -> np.ndarray:
    """(N, C, Ho, Wo, k, k) view of the padded input."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]


def _conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int, group: int) -> np.ndarray:
    win = _windows(x, w.shape[-1], stride, pad)
    if group == 1:
        return np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    assert group == x.shape[1] == w.shape[0], "only dense and depthwise convolutions"
    return np.einsum("nchwij,cij->nchw", win, w[:, 0])


class GraphBuilder:
    """Appends torch-named nodes to one graph and evaluates them on a probe batch."""

    def __init__(self, name: str, *, seed: int = 0, opset: int = 17,
                 constant_weights: bool = False, input_shape=(1, 3, 224, 224),
                 probe_batch: int = 1):
        if opset not in OPSETS:
            raise ValueError(f"opset {opset} not supported; use {OPSETS.start}..{OPSETS.stop - 1}")
        self.name = name
        self.opset = opset
        self.constant_weights = constant_weights
        self.input_shape = tuple(input_shape)
        self.rng = np.random.default_rng(seed)
        probe = np.random.default_rng([seed, 1]).standard_normal((probe_batch, *input_shape[1:]))
        self.input = Value("input", probe)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: dict[str, int] = {}
        self._clip_bounds: tuple[str, str] | None = None

    # -- primitives ---------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], scope: Scope, *, output: str | None = None,
             **attrs) -> str:
        """Append a node named ``<scope>/<op>[_k]``; returns its output name."""
        base = f"{scope.prefix}/{op}"
        k = self._used.get(base, 0)
        self._used[base] = k + 1
        name = base if k == 0 else f"{base}_{k}"
        out = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def weight(self, scope: Scope, suffix: str, array: np.ndarray) -> str:
        """A Conv/Gemm weight or bias: an initializer, or a Constant node in the module's scope."""
        if self.constant_weights:
            return self.node("Constant", [], scope, value=numpy_helper.from_array(array))
        return self.initializer(f"{scope.qualified}.{suffix}", array)

    def _normal(self, shape, std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def _uniform(self, shape, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    # -- layers -------------------------------------------------------------------------------
    def conv(self, x: Value, scope: Scope, cout: int, k: int, *, stride: int = 1,
             pad: int | None = None, group: int = 1, bias: str | None = None) -> Value:
        """nn.Conv2d. ``bias``: None (torch style before BN), "torch" (U(+-1/sqrt(fan_in)),
        nn.Conv2d's default) or "normal" (N(0, 0.1), for deploy-form convs)."""
        cin = x.shape[0]
        pad = k // 2 if pad is None else pad
        fan_in = cin // group * k * k
        w = self._normal((cout, cin // group, k, k), np.sqrt(2.0 / fan_in))
        inputs = [x.name, self.weight(scope, "weight", w)]
        y = _conv2d(x.data, w.astype(np.float64), stride, pad, group)
        if bias is not None:
            bound = fan_in ** -0.5
            b = self._uniform(cout, -bound, bound) if bias == "torch" else self._normal(cout, 0.1)
            inputs.append(self.weight(scope, "bias", b))
            y = y + b.astype(np.float64)[:, None, None]
        out = self.node("Conv", inputs, scope, dilations=[1, 1], group=group, kernel_shape=[k, k],
                        pads=[pad] * 4, strides=[stride, stride])
        return Value(out, y)

    def bn(self, x: Value, scope: Scope) -> Value:
        c = x.shape[0]
        gamma = self._uniform(c, 0.5, 1.5)
        beta = self._normal(c, 0.1)
        mean, var = x.data.mean(axis=(0, 2, 3)), x.data.var(axis=(0, 2, 3))
        var = np.maximum(var, 1e-3 * var.mean() + 1e-12)  # dead channels
        mean = _round_sig(mean + self.rng.standard_normal(c) * 0.1 * np.sqrt(var))
        var = _round_sig(var * self.rng.uniform(0.5, 1.5, c))
        names = [self.initializer(f"{scope.qualified}.{s}", a) for s, a in
                 (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))]
        out = self.node("BatchNormalization", [x.name, *names], scope, epsilon=BN_EPSILON,
                        momentum=BN_MOMENTUM)
        per_channel = lambda a: a.astype(np.float64)[:, None, None]  # noqa: E731
        y = (x.data - per_channel(mean)) / np.sqrt(per_channel(var) + BN_EPSILON)
        return Value(out, y * per_channel(gamma) + per_channel(beta))

    def conv_bn(self, x: Value, conv: Scope, bn: Scope, cout: int, k: int, **conv_kw) -> Value:
        return self.bn(self.conv(x, conv, cout, k, **conv_kw), bn)

    def relu(self, x: Value, scope: Scope) -> Value:
        return Value(self.node("Relu", [x.name], scope), np.maximum(x.data, 0.0))

    def clip6(self, x: Value, scope: Scope) -> Value:
        """ReLU6 as opset>=11 Clip with min/max inputs: two scalar initializers, shared."""
        if self._clip_bounds is None:
            self._clip_bounds = (self.initializer("relu6.min", np.array(0.0)),
                                 self.initializer("relu6.max", np.array(6.0)))
        out = self.node("Clip", [x.name, *self._clip_bounds], scope)
        return Value(out, np.clip(x.data, 0.0, 6.0))

    def sigmoid(self, x: Value, scope: Scope) -> Value:
        return Value(self.node("Sigmoid", [x.name], scope), 1.0 / (1.0 + np.exp(-x.data)))

    def mul(self, a: Value, b: Value, scope: Scope) -> Value:
        """``a * b`` with ONNX (= numpy) broadcasting, e.g. a [N, C, H, W] trunk by a
        [N, C, 1, 1] squeeze-excitation gate; the product keeps ``a``'s shape."""
        assert np.broadcast_shapes(a.data.shape, b.data.shape) == a.data.shape, \
            (a.name, a.shape, b.name, b.shape)
        return Value(self.node("Mul", [a.name, b.name], scope), a.data * b.data)

    def concat(self, parts: list[Value], scope: Scope) -> Value:
        """``torch.cat(parts, 1)``: Concat on the channel axis."""
        assert len({p.shape[1:] for p in parts}) == 1, [(p.name, p.shape) for p in parts]
        out = self.node("Concat", [p.name for p in parts], scope, axis=1)
        return Value(out, np.concatenate([p.data for p in parts], axis=1))

    def add(self, a: Value, b: Value, scope: Scope) -> Value:
        assert a.shape == b.shape, (a.name, a.shape, b.name, b.shape)
        return Value(self.node("Add", [a.name, b.name], scope), a.data + b.data)

    def add_all(self, terms: list[Value], scope: Scope) -> Value:
        """A left-to-right chain of Adds, as torch writes ``a + b + c``."""
        acc = terms[0]
        for t in terms[1:]:
            acc = self.add(acc, t, scope)
        return acc

    def maxpool(self, x: Value, scope: Scope, k: int, stride: int, pad: int = 0) -> Value:
        out = self.node("MaxPool", [x.name], scope, ceil_mode=0, dilations=[1, 1],
                        kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride])
        return Value(out, _windows(x.data, k, stride, pad, -np.inf).max(axis=(4, 5)))

    def gap(self, x: Value, scope: Scope) -> Value:
        out = self.node("GlobalAveragePool", [x.name], scope)
        return Value(out, x.data.mean(axis=(2, 3), keepdims=True))

    def flatten(self, x: Value, scope: Scope = ROOT) -> Value:
        out = self.node("Flatten", [x.name], scope, axis=1)
        return Value(out, x.data.reshape(len(x.data), -1))

    def gemm(self, x: Value, scope: Scope, n_out: int, *, output: str | None = None) -> Value:
        """nn.Linear: Gemm(transB=1) with bias C, torch's default U(+-1/sqrt(fan_in)) init."""
        (fan_in,) = x.shape
        bound = fan_in ** -0.5
        w = self._uniform((n_out, fan_in), -bound, bound)
        b = self._uniform(n_out, -bound, bound)
        inputs = [x.name, self.weight(scope, "weight", w), self.weight(scope, "bias", b)]
        out = self.node("Gemm", inputs, scope, output=output, alpha=1.0, beta=1.0, transB=1)
        return Value(out, x.data @ w.T.astype(np.float64) + b)

    def gap_flatten_gemm(self, x: Value, gap: Scope, fc: Scope, classes: int) -> Value:
        """``gap -> torch.flatten(x, 1) -> fc``; the Gemm writes the graph output ``output``."""
        return self.gemm(self.flatten(self.gap(x, gap)), fc, classes, output="output")

    # -- finish -------------------------------------------------------------------------------
    def model(self, output: Value) -> onnx.ModelProto:
        def info(name, shape):
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))

        graph = helper.make_graph(
            self.nodes, self.name, [info(self.input.name, self.input_shape)],
            [info(output.name, (self.input_shape[0], *output.shape))], self.initializers)
        return helper.make_model(graph, producer_name="onnxopt.models", ir_version=IR_VERSION,
                                 opset_imports=[helper.make_opsetid("", self.opset)])
