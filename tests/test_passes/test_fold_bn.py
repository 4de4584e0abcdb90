"""fold-bn: fires and is exact on every producer kind, declines with a reason where it must, and is
idempotent. Exactness is checked in ORT with optimizations disabled (ORT would otherwise fuse
Conv+BN itself and hide a wrong fold)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import models
from onnxopt.passes import FoldBatchNorm
from onnxopt.pipeline.run import Pipeline
from onnxopt.testing import apply, as_float64, assert_exact, count_ops, make_model

RNG = np.random.default_rng(1234)


def arr(*shape, lo=None, hi=None):
    if lo is not None:
        return RNG.uniform(lo, hi, shape).astype(np.float32)
    return RNG.standard_normal(shape).astype(np.float32)


def bn_params(prefix, c):
    return {f"{prefix}_g": arr(c, lo=0.5, hi=1.5), f"{prefix}_b": arr(c), f"{prefix}_m": arr(c),
            f"{prefix}_v": arr(c, lo=0.5, hi=1.5)}


def bn(x, y, prefix, **attrs):
    outputs = [y, f"{prefix}_rm", f"{prefix}_rv"] if attrs.get("training_mode") else [y]
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            outputs, **attrs)


make = make_model


def fold(model, **options):
    out, result = apply(FoldBatchNorm(**options), model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


# ---------------------------------------------------------------------------------------------
# It fires, and is exact


def conv_bn_model(group=1, bias=True, cin=4, cout=8, k=3):
    inits = {"w": arr(cout, cin // group, k, k), **bn_params("bn", cout)}
    conv_in = ["x", "w"]
    if bias:
        inits["cb"] = arr(cout)
        conv_in.append("cb")
    nodes = [helper.make_node("Conv", conv_in, ["c"], kernel_shape=[k, k], pads=[1] * 4, group=group),
             bn("c", "y", "bn", epsilon=1e-3)]
    return make(nodes, inits, [("x", [2, cin, 9, 9])], [("y", [2, cout, 9, 9])])


@pytest.mark.parametrize("group,bias,cin,cout", [(1, True, 4, 8), (1, False, 4, 8), (2, True, 4, 8),
                                                  (4, False, 4, 4), (4, True, 4, 8)])
def test_conv_bn_folds_exactly(group, bias, cin, cout):
    model = conv_bn_model(group, bias, cin, cout)
    out, result = fold(model)
    assert count_ops(out) == {"Conv": 1}
    assert result.changed and result.stats["bn_folded"] == 1
    assert out.graph.output[0].name == "y"
    assert_exact(model, out)


@pytest.mark.parametrize("group,bias,stride", [(1, True, 1), (1, False, 2), (2, True, 2), (2, False, 1)])
def test_conv_transpose_bn_folds_exactly(group, bias, stride):
    cin, per_group_out = 4, 3
    cout = per_group_out * group
    inits = {"w": arr(cin, per_group_out, 3, 3), **bn_params("bn", cout)}
    ins = ["x", "w"]
    if bias:
        inits["cb"] = arr(cout)
        ins.append("cb")
    nodes = [helper.make_node("ConvTranspose", ins, ["c"], kernel_shape=[3, 3], strides=[stride] * 2, group=group),
             bn("c", "y", "bn")]
    side = (5 - 1) * stride + 3
    model = make(nodes, inits, [("x", [1, cin, 5, 5])], [("y", [1, cout, side, side])])
    out, result = fold(model)
    assert count_ops(out) == {"ConvTranspose": 1}
    assert result.stats["into_ConvTranspose"] == 1
    assert_exact(model, out)


@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(1, 1.0, 1.0, (6,)), (0, 1.0, 1.0, (6,)), (1, 0.5, 2.0, (1, 6)),
                                                        (0, 2.0, 0.5, ()), (1, 1.0, 1.0, None), (0, 1.0, 0.0, (6,))])
def test_gemm_bn_folds_exactly(trans_b, alpha, beta, c_shape):
    inits = {"w": arr(6, 5) if trans_b else arr(5, 6), **bn_params("bn", 6)}
    ins = ["x", "w"]
    if c_shape is not None:
        inits["c"] = arr(*c_shape)
        ins.append("c")
    nodes = [helper.make_node("Gemm", ins, ["g"], transB=trans_b, alpha=alpha, beta=beta), bn("g", "y", "bn")]
    model = make(nodes, inits, [("x", [3, 5])], [("y", [3, 6])])
    out, result = fold(model)
    assert count_ops(out) == {"Gemm": 1}
    assert_exact(model, out)


def test_matmul_bn_becomes_gemm():
    model = make([helper.make_node("MatMul", ["x", "w"], ["m"]), bn("m", "y", "bn")],
                 {"w": arr(5, 6), **bn_params("bn", 6)}, [("x", [3, 5])], [("y", [3, 6])])
    out, result = fold(model)
    assert count_ops(out) == {"Gemm": 1}
    assert_exact(model, out)


def test_matmul_rank3_per_channel_mul_folds():
    model = make([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "s"], ["y"])],
                 {"w": arr(5, 6), "s": arr(6)}, [("x", [2, 3, 5])], [("y", [2, 3, 6])])
    out, result = fold(model)
    assert count_ops(out) == {"MatMul": 1} and result.stats["mul_folded"] == 1
    assert_exact(model, out)


@pytest.mark.parametrize("op,const_first,shape", [("Mul", False, (8, 1, 1)), ("Mul", True, (1, 8, 1, 1)),
                                                  ("Add", False, (8, 1, 1)), ("Add", True, (1, 8, 1, 1)),
                                                  ("Sub", False, (8, 1, 1)), ("Div", False, (1, 8, 1, 1)),
                                                  ("Mul", False, ())])
def test_conv_then_per_channel_constant_folds(op, const_first, shape):
    value = arr(*shape, lo=0.5, hi=2.0)
    ins = ["k", "c"] if const_first else ["c", "k"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node(op, ins, ["y"])]
    model = make(nodes, {"w": arr(8, 4, 3, 3), "k": value}, [("x", [1, 4, 7, 7])], [("y", [1, 8, 7, 7])])
    out, result = fold(model)
    assert count_ops(out) == {"Conv": 1}
    assert result.stats[f"{op.lower()}_folded"] == 1
    if op in ("Add", "Sub"):
        assert len(out.graph.node[0].input) == 3  # the bias-less Conv gained a bias
    assert_exact(model, out)


def test_chain_bn_mul_add_folds_in_one_run_and_is_idempotent():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), bn("c", "b", "bn"),
             helper.make_node("Mul", ["b", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])]
    model = make(nodes, {"w": arr(8, 4, 1, 1), "s": arr(8, 1, 1), "t": arr(1, 8, 1, 1), **bn_params("bn", 8)},
                 [("x", [1, 4, 5, 5])], [("y", [1, 8, 5, 5])])
    out, result = fold(model)
    assert count_ops(out) == {"Conv": 1}
    assert (result.stats["bn_folded"], result.stats["mul_folded"], result.stats["add_folded"]) == (1, 1, 1)
    assert_exact(model, out)
    again, second = fold(out)
    assert not second.changed and again is out


def test_bn_after_channel_preserving_squeeze_folds_into_conv():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 3], pads=[0, 1, 0, 1]),
             helper.make_node("Squeeze", ["c", "axes"], ["s"]), bn("s", "y", "bn")]
    inits = {"w": arr(6, 4, 1, 3), "axes": np.array([2], dtype=np.int64), **bn_params("bn", 6)}
    model = make(nodes, inits, [("x", [2, 4, 1, 10])], [("y", [2, 6, 10])])
    out, result = fold(model)
    assert count_ops(out) == {"Conv": 1, "Squeeze": 1}
    assert_exact(model, out)


@pytest.mark.parametrize("dims", [1, 3])
def test_conv1d_and_conv3d(dims):
    k = [3] * dims
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=k, pads=[1] * (2 * dims)), bn("c", "y", "bn")]
    model = make(nodes, {"w": arr(5, 3, *k), **bn_params("bn", 5)}, [("x", [1, 3] + [6] * dims)],
                 [("y", [1, 5] + [6] * dims)])
    out, _ = fold(model)
    assert count_ops(out) == {"Conv": 1}
    assert_exact(model, out)


def test_lone_bn_kept_by_default_and_affine_on_request():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), bn("r", "y", "bn")]
    model = make(nodes, bn_params("bn", 4), [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])])
    out, result = fold(model)
    assert not result.changed and count_ops(out) == {"Relu": 1, "BatchNormalization": 1}
    assert "nothing to fold into" in result.skipped[0].reason and "Relu" in result.skipped[0].reason
    out, result = fold(model, lone_bn="affine")
    assert count_ops(out) == {"Relu": 1, "Mul": 1, "Add": 1} and result.stats["bn_to_affine"] == 1
    assert_exact(model, out)


def test_constant_node_weights_fold():
    model = conv_bn_model()
    w = next(t for t in model.graph.initializer if t.name == "w")
    const = helper.make_node("Constant", [], ["w"], value=w)
    keep = [t for t in model.graph.initializer if t.name != "w"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.node.insert(0, const)
    onnx.checker.check_model(model, full_check=True)
    out, result = fold(model)
    assert count_ops(out) == {"Conv": 1} and result.stats["bn_folded"] == 1
    assert_exact(model, out)


# ---------------------------------------------------------------------------------------------
# It must not fire: the model comes out byte-identical and the reason names the cause


def _shared_output():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), bn("c", "b", "bn"),
             helper.make_node("Add", ["b", "c"], ["y"])]
    return make(nodes, {"w": arr(4, 4, 1, 1), **bn_params("bn", 4)}, [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])])


def _conv_output_is_graph_output():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), bn("c", "y", "bn")]
    return make(nodes, {"w": arr(4, 4, 1, 1), **bn_params("bn", 4)}, [("x", [1, 4, 3, 3])],
                [("y", [1, 4, 3, 3]), ("c", [1, 4, 3, 3])])


def _training_mode():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), bn("c", "y", "bn", training_mode=1)]
    return make(nodes, {"w": arr(4, 4, 1, 1), **bn_params("bn", 4)}, [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])])


def _shared_weight():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), bn("c", "b", "bn"),
             helper.make_node("Conv", ["b", "w"], ["y"], kernel_shape=[1, 1])]
    return make(nodes, {"w": arr(4, 4, 1, 1), **bn_params("bn", 4)}, [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])])


def _weight_not_constant():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), bn("c", "y", "bn")]
    return make(nodes, bn_params("bn", 4), [("x", [1, 4, 3, 3]), ("w", [4, 4, 1, 1])], [("y", [1, 4, 3, 3])])


def _bn_params_not_constant():
    params = bn_params("bn", 4)
    del params["bn_v"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), bn("c", "y", "bn")]
    return make(nodes, {"w": arr(4, 4, 1, 1), **params}, [("x", [1, 4, 3, 3]), ("bn_v", [4])], [("y", [1, 4, 3, 3])])


def _reshape_moves_channels():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]), bn("r", "y", "bn")]
    inits = {"w": arr(4, 2, 1, 1), "shape": np.array([1, 8, 2], dtype=np.int64), **bn_params("bn", 8)}
    return make(nodes, inits, [("x", [1, 2, 2, 2])], [("y", [1, 8, 2])])


def _matmul_rank3_bn():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), bn("m", "y", "bn")]
    return make(nodes, {"w": arr(5, 5), **bn_params("bn", 3)}, [("x", [2, 3, 5])], [("y", [2, 3, 5])])


MUST_NOT_FIRE = {
    "producer output read twice": (_shared_output, "also read by"),
    "producer output is a graph output": (_conv_output_is_graph_output, "graph output"),
    "training mode": (_training_mode, "training mode"),
    "weight shared by two convs": (_shared_weight, "shared"),
    "weight not constant": (_weight_not_constant, "not a float constant"),
    "BN parameters not constant": (_bn_params_not_constant, "not constant"),
    "reshape moves the channel axis": (_reshape_moves_channels, "channel axis"),
    "BN after rank-3 MatMul": (_matmul_rank3_bn, "normalizes another axis"),
}


@pytest.mark.parametrize("case", list(MUST_NOT_FIRE))
def test_must_not_fire(case):
    build, reason = MUST_NOT_FIRE[case]
    model = build()
    before = model.SerializeToString()
    out, result = apply(FoldBatchNorm(), model)
    assert not result.changed and not result.stats
    assert any(reason in s.reason for s in result.skipped), [str(s) for s in result.skipped]
    run = Pipeline([FoldBatchNorm()], input_shapes={i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
                                                    for i in model.graph.input}).run(model)
    assert run.model.SerializeToString() == before
    assert model.SerializeToString() == before
    assert run.report.passes[0].status == "unchanged"


def test_non_per_channel_constant_is_not_a_candidate():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Mul", ["c", "k"], ["y"])]
    model = make(nodes, {"w": arr(4, 4, 1, 1), "k": arr(1, 4, 3, 3)}, [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])])
    out, result = fold(model)
    assert not result.changed and not result.skipped and out is model


# ---------------------------------------------------------------------------------------------
# The zoo: zero BN left wherever folding is legal, max relative error <= 1e-5, idempotent


TINY = [name for name in models.available() if name.endswith("-tiny")]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("constant_weights", [False, True])
def test_zoo_folds_every_foldable_bn(name, constant_weights):
    model = models.build(name, constant_weights=constant_weights)
    out, result = fold(model)
    remaining = count_ops(out).get("BatchNormalization", 0)
    lone = [s for s in result.skipped if "nothing to fold into" in s.reason]
    assert remaining == len(lone), [str(s) for s in result.skipped]
    assert not [s for s in result.skipped if "nothing to fold into" not in s.reason]
    assert result.stats.get("bn_folded", 0) == count_ops(model).get("BatchNormalization", 0) - remaining
    fid = assert_exact(model, out, rtol=1e-5)
    assert fid.top1_agreement == 1.0
    _, second = fold(out)
    assert not second.changed


@pytest.mark.parametrize("opset", [13, 15])
def test_zoo_older_opsets(opset):
    model = models.build("mobilenetv2-tiny", opset=opset)
    out, _ = fold(model)
    assert "BatchNormalization" not in count_ops(out)
    assert_exact(model, out)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "vgg16_bn", "repvgg_a0", "mobileone_s0"])
def test_full_size_zoo(name):
    model = models.build(name)
    out, result = fold(model)
    lone = [s for s in result.skipped if "nothing to fold into" in s.reason]
    assert count_ops(out).get("BatchNormalization", 0) == len(lone) == len(result.skipped)
    assert_exact(model, out, rtol=1e-5, samples=1)


def test_shared_bias_gets_a_bias_of_its_own_and_shape_readers_do_not_block():
    # Two convs share one zero bias (as deduplicating tools leave it); a Shape node reads the weight.
    nodes = [helper.make_node("Conv", ["x", "w", "zero"], ["c"], kernel_shape=[1, 1]), bn("c", "b", "bn"),
             helper.make_node("Conv", ["b", "w2", "zero"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("Shape", ["w"], ["ws"]), helper.make_node("Cast", ["ws"], ["wsf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["wsf"], ["s"], keepdims=0),
             helper.make_node("Add", ["c2", "s"], ["y"])]
    inits = {"w": arr(4, 4, 1, 1), "w2": arr(4, 4, 1, 1), "zero": np.zeros(4, np.float32), **bn_params("bn", 4)}
    model = make(nodes, inits, [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])])
    out, result = fold(model)
    assert result.stats["bn_folded"] == 1 and "BatchNormalization" not in count_ops(out)
    assert_exact(model, out)


def _reshape_then_bn(target):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]), bn("r", "y", "bn")]
    inits = {"w": arr(4, 3, 1, 1), "shape": np.array(target, dtype=np.int64), **bn_params("bn", 4)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "T"])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_reshape_with_a_hard_coded_batch_is_declined_and_batch_following_one_folds():
    # [1, C, -1] is right at batch 1 only: at batch 2 it would mix samples into channels
    out, result = fold(_reshape_then_bn([1, 4, -1]))
    assert not result.changed and "target shape must start with 0 or -1" in result.skipped[0].reason
    model = _reshape_then_bn([0, 4, -1])
    out, result = fold(model)
    assert result.stats["bn_folded"] == 1
    assert_exact(model, out, input_shapes={"x": (3, 3, 2, 2)})


def test_weight_that_is_also_a_graph_output_is_not_touched():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), bn("c", "y", "bn"),
             helper.make_node("Identity", ["w"], ["w_out"])]
    model = make(nodes, {"w": arr(4, 4, 1, 1), **bn_params("bn", 4)}, [("x", [1, 4, 3, 3])],
                 [("y", [1, 4, 3, 3]), ("w_out", [4, 4, 1, 1])])
    model.graph.node.pop()  # the weight itself as a graph output
    model.graph.output[1].name = "w"
    onnx.checker.check_model(model, full_check=True)
    out, result = fold(model)
    assert not result.changed and "also a graph output" in result.skipped[0].reason


def test_float16_weights_fold_within_half_precision():
    model = conv_bn_model()
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    run = Pipeline([FoldBatchNorm()]).run(model)
    assert run.report.passes[0].status == "applied"  # tolerance follows the output dtype
    assert "BatchNormalization" not in count_ops(run.model)
    assert run.report.fidelity.max_rel <= 8 * np.finfo(np.float16).eps


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2-tiny", "repvgg_a0-tiny", "mobileone_s0-tiny"])
def test_fold_adds_no_error_beyond_float32_noise(name):
    """Folded ResNet-50 differs from the original by ~2e-5 of the output's magnitude. That is float32
    noise: the original itself is ~1.4e-5 from its float64 evaluation, and onnxruntime's own Conv+BN
    fusion lands as far. Exactness here means: against the float64 truth, the folded model is as
    accurate as the original and as ORT's fusion, up to a small factor (folding moves rounding
    from the BN to the conv bias, which can cancel), and far from any real rewrite error (>1e-3)."""
    from onnx.reference import ReferenceEvaluator

    from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes, run_model
    model = models.build(name)
    folded, _ = fold(model)
    feeds = random_feeds(model, resolve_input_shapes(model), seed=0, count=1)
    truth = ReferenceEvaluator(as_float64(model)).run(None, {"input": feeds[0]["input"].astype(np.float64)})[0]
    scale = np.abs(truth).max()

    def error(m, **kw):
        return np.abs(run_model(m, feeds, **kw)[0]["output"] - truth).max() / scale

    baseline = max(error(model), error(model, optimization="all"))
    assert error(folded) <= 3 * baseline, (error(folded), baseline)
    assert baseline < 3e-5
