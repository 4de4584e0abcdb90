"""The fusion audit (onnxopt.analysis.fusion): what onnxruntime's optimized graph of a QDQ model
still runs in float. A float tail after the last DequantizeLinear is not an island; an op kept
float that onnxruntime fuses anyway (QLinearAdd, QLinearConcat, a float-weight QLinearConv) is
reported as fused, not claimed as float."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxopt.analysis.fusion import audit
from onnxopt.testing import conv_node as conv
from onnxopt.testing import make_model, small_cnn
from onnxopt.testing import quantized as quantize

F32 = np.float32


make = make_model


def _residual_add():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("x", "b", "c2", 3, 4, seed=2)
    c3, i3 = conv("s", "y", "c3", 4, 4, seed=1)
    return make([c1, c2, helper.make_node("Add", ["a", "b"], ["s"], name="add"), c3], {**i1, **i2, **i3},
                [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])


def _concat():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    c2, i2 = conv("x", "b", "c2", 3, 4, seed=2)
    c3, i3 = conv("s", "y", "c3", 8, 4, seed=1)
    return make([c1, c2, helper.make_node("Concat", ["a", "b"], ["s"], name="cat", axis=1), c3], {**i1, **i2, **i3},
                [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])


# An op kept float between quantized neighbours still reads a DequantizeLinear and feeds a
# QuantizeLinear (the next quantized op needs it): the very unit onnxruntime fuses, so Add/Concat
# become QLinearAdd/QLinearConcat and a float-weight Conv a QLinearConv (onnxruntime quantizes the
# weight itself). Placement cannot prevent that without making the neighbours float too; the report
# must say so instead of claiming the op runs in float.
@pytest.mark.parametrize("build, options, kernel, node", [
    (_residual_add, {"exclude": ("add",)}, "QLinearAdd", "add"),
    (_residual_add, {"op_types": ("Conv",)}, "QLinearAdd", "add"),
    (_concat, {"exclude": ("Concat",)}, "QLinearConcat", "cat"),
    (small_cnn, {"exclude": ("c2",)}, "QLinearConv", "c2"),
], ids=["exclude-add", "op-types-conv", "exclude-concat", "exclude-middle-conv"])
def test_an_op_kept_float_but_fused_by_onnxruntime_is_reported(build, options, kernel, node):
    model = build()
    out, result = quantize(model, **options)
    assert any(v == "excluded" for v in result.details["kept_float"].values())
    assert audit(out).integer_nodes.get(node) == kernel  # what onnxruntime really does
    assert result.details["fusion"]["fused_anyway"] == {node: kernel}
    assert any("fuses them into integer kernels anyway" in n and node in n for n in result.notes)


# Was a bug (fixed): the fusion audit counts as a 'float island' an op that merely reads the last
# DequantizeLinear and writes a graph output (Conv -> Softmax), contrary to the README's definition
# 'every op onnxruntime left in float between a DequantizeLinear and a QuantizeLinear': a fully
# fused model is reported with 1 float island (fusion.audit ignores what the op feeds)
def test_audit_does_not_count_a_float_tail_as_an_island():
    c1, i1 = conv("x", "a", "c1", 3, 4, seed=0)
    model = make([c1, helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=1)], i1,
                 [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    out, result = quantize(model)
    assert audit(out).integer_ops.get("QLinearConv") == 1
    assert audit(out).islands == []
    assert result.stats["float islands"] == 0
