"""The model zoo: every model is valid ONNX, runs in onnxruntime, and has the intended structure."""

from __future__ import annotations

import collections
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt import models
from onnxopt.models.blocks import GraphBuilder
from onnxopt.models.zoo import MODELS

TINY = [n for n in models.available() if "tiny" in n]
FULL = [n for n in models.available() if "tiny" not in n]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def feed(name: str, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(models.input_shape(name)).astype(np.float32)


def op_counts(nodes) -> collections.Counter:
    return collections.Counter(n.op_type for n in nodes)


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def classes(name: str) -> int:
    return 1000 if name in FULL and not name.startswith("vgg16_bn") else 10


def test_available_names():
    expected = {"resnet18", "resnet50", "mobilenetv2", "vgg16_bn", "repvgg_a0", "repvgg_a0-deploy",
                "mobileone_s0", "mobileone_s0-deploy"}
    expected |= {f"{n}-tiny" for n in ("resnet18", "resnet50", "mobilenetv2", "vgg16_bn",
                                       "repvgg_a0", "mobileone_s0")}
    expected |= {"repvgg_a0-tiny-deploy", "mobileone_s0-tiny-deploy"}
    expected |= {"senet_concat", "senet_concat-tiny", "vgg16_bn-half", "vgg16_bn-half-tiny"}
    assert models.available() == sorted(expected)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="resnet18-tiny"):
        models.build("resnet19")


@pytest.mark.parametrize("opset", [12, 18])
def test_unsupported_opset_is_refused(opset):
    with pytest.raises(ValueError, match="opset"):
        models.build("resnet18-tiny", opset=opset)


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_is_valid_and_runs(name):
    model = models.build(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert models.input_shape(name) == (1, 3, 32, 32)
    y = run(model, feed(name))
    assert y.shape == (1, classes(name))
    assert np.isfinite(y).all()
    assert 0.02 < y.std() < 100, f"{name}: output std {y.std():.3g} badly scaled"


@pytest.mark.parametrize("name", TINY)
def test_torch_export_conventions(name):
    model = models.build(name)
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        assert re.fullmatch(rf"(/[\w.]+)*/{node.op_type}(_\d+)?", node.name), node.name
        if node.output[0] != "output":
            assert node.output[0] == f"{node.name}_output_0"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            assert set(attrs) == {"dilations", "group", "kernel_shape", "pads", "strides"}
            weight = node.input[1]
            assert weight.endswith(".weight") and weight in inits
        if node.op_type == "BatchNormalization":
            assert attrs == {"epsilon": pytest.approx(1e-5), "momentum": pytest.approx(0.9)}
            scale, bias, mean, var = (onnx.numpy_helper.to_array(_init(model, n))
                                      for n in node.input[1:])
            assert node.input[1].endswith(".weight") and node.input[4].endswith(".running_var")
            assert ((0.5 <= scale) & (scale <= 1.5)).all() and (var > 0).all()
            assert np.abs(mean).max() > 0 and np.abs(bias).max() > 0  # not an identity BN
        if node.op_type == "Clip":
            assert [float(onnx.numpy_helper.to_array(_init(model, n))) for n in node.input[1:]] \
                == [0.0, 6.0]
        if node.op_type == "Gemm":
            assert attrs["transB"] == 1 and len(node.input) == 3
    # a Conv feeding a BN has no bias, except in VGG (torchvision's VGG convs keep theirs)
    consumers = {n.input[0]: n for n in model.graph.node}
    for node in model.graph.node:
        if node.op_type == "Conv" and consumers.get(node.output[0], node).op_type == \
                "BatchNormalization":
            assert len(node.input) == (3 if name.startswith("vgg") else 2), node.name


@pytest.mark.parametrize("name", TINY)
def test_onnxruntime_matches_the_builders_numpy_reference(name):
    """The builder evaluates every op in float64 while it writes it; ORT must agree."""
    spec = MODELS[name]
    g = GraphBuilder(name, input_shape=models.input_shape(name), probe_batch=spec.probe_batch)
    out = spec.build(g)
    model = g.model(out)
    for i in range(0, len(g.input.data), 5):
        y = run(model, g.input.data[i:i + 1].astype(np.float32))
        np.testing.assert_allclose(y, out.data[i:i + 1], rtol=1e-4,
                                   atol=1e-4 * np.abs(out.data).max())


@pytest.mark.parametrize("name", TINY)
def test_deterministic_per_seed(name):
    first = models.build(name, seed=3).SerializeToString()
    assert models.build(name, seed=3).SerializeToString() == first
    assert models.build(name, seed=4).SerializeToString() != first


@pytest.mark.parametrize("name", TINY)
def test_constant_weights(name):
    plain = models.build(name)
    const = models.build(name, constant_weights=True)
    onnx.checker.check_model(const, full_check=True)
    inits = {i.name for i in const.graph.initializer}
    producers = {n.output[0]: n for n in const.graph.node}
    n_weights = 0
    for node in const.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            for param in node.input[1:]:
                assert param not in inits
                constant = producers[param]
                assert constant.op_type == "Constant"
                scope = node.name.rsplit("/", 1)[0]
                assert constant.output[0] in (f"{scope}/Constant_output_0",
                                              f"{scope}/Constant_1_output_0")
                n_weights += 1
    assert n_weights > 0 and op_counts(const.graph.node)["Constant"] == n_weights
    # only BatchNormalization parameters and the Clip bounds stay initializers
    kept = {i for n in const.graph.node if n.op_type in ("BatchNormalization", "Clip")
            for i in n.input[1:]}
    assert inits == kept
    x = feed(name)
    np.testing.assert_array_equal(run(const, x), run(plain, x))


@pytest.mark.parametrize("name", TINY)
def test_opset_13_and_17(name):
    m13, m17 = models.build(name, opset=13), models.build(name, opset=17)
    onnx.checker.check_model(m13, full_check=True)
    assert m13.opset_import[0].version == 13
    assert m13.graph.SerializeToString() == m17.graph.SerializeToString()
    x = feed(name)
    np.testing.assert_array_equal(run(m13, x), run(m17, x))


def _blocks(model, depth: int = 2) -> dict[str, collections.Counter]:
    """Op counts per block scope: '/stage0' or '/stage1/stage1.0'."""
    blocks = collections.defaultdict(collections.Counter)
    for node in model.graph.node:
        parts = node.name.split("/")[1:]
        if parts[0].startswith("stage"):
            blocks["/" + "/".join(parts[:1 if parts[0] == "stage0" else depth])][node.op_type] += 1
    return dict(blocks)


def test_repvgg_tiny_train_time_blocks():
    # (block, has identity BN): identity only with stride 1 and Cin == Cout
    table = [("/stage0", 0), ("/stage1/stage1.0", 0), ("/stage1/stage1.1", 1),
             ("/stage2/stage2.0", 0), ("/stage2/stage2.1", 1), ("/stage3/stage3.0", 0),
             ("/stage3/stage3.1", 1), ("/stage4/stage4.0", 0)]
    model = models.build("repvgg_a0-tiny")
    blocks = _blocks(model)
    assert list(blocks) == [b for b, _ in table]
    for block, identity in table:
        assert blocks[block] == {"Conv": 2, "BatchNormalization": 2 + identity,
                                 "Add": 1 + identity, "Relu": 1}, block
    kernels = sorted(tuple(onnx.helper.get_attribute_value(a) for a in n.attribute
                           if a.name == "kernel_shape")[0][0]
                     for n in model.graph.node if n.op_type == "Conv")
    assert kernels == [1] * 8 + [3] * 8
    # every branch of a block reads the block input; the Adds feed the block's Relu
    for node in model.graph.node:
        if node.name.endswith("nonlinearity/Relu"):
            assert "/Add" in node.input[0]
    deploy = models.build("repvgg_a0-tiny-deploy")
    assert all(c == {"Conv": 1, "Relu": 1} for c in _blocks(deploy).values())
    assert all(len(n.input) == 3 for n in deploy.graph.node if n.op_type == "Conv")


def test_mobileone_tiny_train_time_blocks():
    # stage0: MobileOneBlock's default num_conv_branches=1, plus the 1x1 scale branch
    # depthwise 3x3 block: k=4 conv branches + scale, skip BN when stride 1
    # pointwise 1x1 block: k=4 conv branches, skip BN when Cin == Cout
    dw = lambda skip: {"Conv": 5, "BatchNormalization": 5 + skip, "Add": 4 + skip, "Relu": 1}
    pw = lambda skip: {"Conv": 4, "BatchNormalization": 4 + skip, "Add": 3 + skip, "Relu": 1}
    expected = {"/stage0": {"Conv": 2, "BatchNormalization": 2, "Add": 1, "Relu": 1}}
    for stage, blocks in {1: [dw(0), pw(1), dw(1), pw(1)], 2: [dw(0), pw(0), dw(1), pw(1)],
                          3: [dw(0), pw(1), dw(1), pw(1)], 4: [dw(0), pw(0)]}.items():
        expected |= {f"/stage{stage}/stage{stage}.{i}": c for i, c in enumerate(blocks)}
    model = models.build("mobileone_s0-tiny")
    assert _blocks(model) == expected
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name.startswith("/stage0/"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        cout, cin_per_group = _init(model, node.input[1]).dims[:2]
        kernel = 1 if "rbr_scale" in node.name else 3
        if int(node.name.split("/")[2].rsplit(".", 1)[1]) % 2 == 0:  # depthwise block
            assert (attrs["group"], cin_per_group, attrs["kernel_shape"]) == \
                (cout, 1, [kernel, kernel]), node.name
        else:  # pointwise block
            assert (attrs["group"], attrs["kernel_shape"]) == (1, [1, 1]), node.name
    deploy = models.build("mobileone_s0-tiny-deploy")
    assert all(c == {"Conv": 1, "Relu": 1} for c in _blocks(deploy).values())
    assert len(_blocks(deploy)) == len(expected)


def test_vgg_tiny_flattens_a_spatial_map():
    model = models.build("vgg16_bn-tiny")
    counts = op_counts(model.graph.node)
    assert (counts["Conv"], counts["BatchNormalization"], counts["MaxPool"]) == (13, 13, 4)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert list(_init(model, gemm.input[1]).dims) == [64, 64 * 2 * 2]


@pytest.mark.parametrize("name, half", [("vgg16_bn", "vgg16_bn-half"),
                                        ("vgg16_bn-tiny", "vgg16_bn-half-tiny")])
def test_vgg_half_is_a_50_percent_filter_pruning(name, half):
    full, pruned = models.build(name), models.build(half)
    assert models.input_shape(half) == models.input_shape(name)
    strip = lambda m: [(n.name, n.op_type) for n in m.graph.node]  # noqa: E731
    assert strip(pruned) == strip(full)
    shapes = lambda m, op: [list(_init(m, n.input[1]).dims)  # noqa: E731
                            for n in m.graph.node if n.op_type == op]
    convs, half_convs = shapes(full, "Conv"), shapes(pruned, "Conv")
    assert len(convs) == len(half_convs) == 13
    for (cout, cin, k, _), (hcout, hcin, hk, _) in zip(convs, half_convs):
        assert (hcout, hk) == (cout // 2, k) and cout % 2 == 0
        assert hcin == (3 if cin == 3 else cin // 2)
    (hidden, flat), (n_classes, _) = shapes(full, "Gemm")
    assert shapes(pruned, "Gemm") == [[hidden // 2, flat // 2], [n_classes, hidden // 2]]
    assert n_classes == 10


def _se_gates(model) -> list[onnx.NodeProto]:
    """Mul nodes fed by GlobalAveragePool -> Conv 1x1 -> Relu -> Conv 1x1 -> Sigmoid from the
    Mul's other input: squeeze-excitation, the gate [N,C,1,1] scaling the trunk [N,C,H,W]."""
    producers = {n.output[0]: n for n in model.graph.node}
    found = []
    for mul in (n for n in model.graph.node if n.op_type == "Mul"):
        chain, node = [], producers.get(mul.input[1])
        for op in ("Sigmoid", "Conv", "Relu", "Conv", "GlobalAveragePool"):
            if node is None or node.op_type != op:
                break
            chain.append(node)
            node = producers.get(node.input[0])
        else:
            if chain[-1].input[0] == mul.input[0]:  # the GAP reads the trunk being scaled
                found.append(mul)
    return found


@pytest.mark.parametrize("name", ["senet_concat", "senet_concat-tiny"])
def test_senet_concat_structure(name):
    model = models.build(name)
    nodes = model.graph.node
    producers = {n.output[0]: n for n in nodes}
    se_muls = _se_gates(model)
    assert len(se_muls) >= 2
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for mul in se_muls:
        (n, c, h, w), gate = shapes[mul.input[0]], shapes[mul.input[1]]
        assert gate == [n, c, 1, 1] and shapes[mul.output[0]] == [n, c, h, w]
    for mul in se_muls:  # bias 1x1 convs, C -> C/r -> C
        sigmoid = producers[mul.input[1]]
        fc2 = producers[sigmoid.input[0]]
        fc1 = producers[producers[fc2.input[0]].input[0]]
        (c_red, c, k1, _), (c_out, c_red2, k2, _) = (_init(model, n.input[1]).dims
                                                     for n in (fc1, fc2))
        assert (k1, k2, c_red2, c_out) == (1, 1, c_red, c) and c_red < c
        assert len(fc1.input) == len(fc2.input) == 3
    concats = [n for n in nodes if n.op_type == "Concat"]
    assert concats and all([(a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute]
                           == [("axis", 1)] for n in concats)
    assert any(len(n.input) == 3 for n in concats)
    # Inception: branch convs of one input concatenated, a conv consumes the concatenation
    consumers = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    assert any(c.op_type == "Conv" for n in concats for c in consumers[n.output[0]])
    # DenseNet: a block input concatenated with Relu(BN(Conv(block input)))
    def grown_from(n):
        chain = [producers[n.input[1]]]
        for _ in range(2):
            chain.append(producers[chain[-1].input[0]])
        return [c.op_type for c in chain] == ["Relu", "BatchNormalization", "Conv"] and \
            chain[-1].input[0] == n.input[0]
    assert any(grown_from(n) for n in concats if len(n.input) == 2)
    # SE-ResNet: Add(shortcut, Mul(trunk, gate))
    se_outputs = {mul.output[0] for mul in se_muls}
    assert any(n.op_type == "Add" and n.input[1] in se_outputs for n in nodes)
    gemm = nodes[-1]
    assert gemm.op_type == "Gemm" and gemm.output[0] == "output"
    assert [producers[gemm.input[0]].op_type, producers[producers[gemm.input[0]].input[0]]
            .op_type] == ["Flatten", "GlobalAveragePool"]
    # every BN follows a conv
    assert all(producers[n.input[0]].op_type == "Conv" for n in nodes
               if n.op_type == "BatchNormalization")


def test_unknown_fixture_names_the_ones_there_are():
    with pytest.raises(FileNotFoundError, match="digits_repvgg.*train_digits"):
        models.fixture_path("no-such-fixture")


# torch's parameter counts (running statistics excluded) of the reference models
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenetv2": 3_504_872,
                    "repvgg_a0": 9_108_968, "repvgg_a0-deploy": 8_309_384,
                    "mobileone_s0-deploy": 2_078_504}


@pytest.mark.slow
def test_full_size_models():
    for name in FULL:
        model = models.build(name)
        onnx.checker.check_model(model)
        y = run(model, feed(name))
        assert y.shape == (1, classes(name)), name
        assert np.isfinite(y).all() and 0.02 < y.std() < 100, name
        learnable = sum(int(np.prod(i.dims)) for i in model.graph.initializer
                        if not i.name.endswith(("running_mean", "running_var", ".min", ".max")))
        assert learnable == PUBLISHED_PARAMS.get(name, learnable), name
