"""benchmarks/peer_tools.py: every peer job gives a valid model that onnxruntime runs with the
original's output shape, or says its tool is not installed."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.models import build
from onnxopt.runtime.sessions import random_feeds, resolve_input_shapes
from onnxopt.testing import load_benchmark

peer_tools = load_benchmark("peer_tools")

TOOLS = {"onnxoptimizer_fuse_bn": "onnxoptimizer", "onnxsim_simplify": "onnxsim", "onnxsim_quantize": "onnxsim",
         "onnxsim_simplify_quantize": "onnxsim", "onnxsim_prune_30": "onnxsim",
         "ort_quantize_default": "onnxruntime.quantization", "ort_quantize_u8s8": "onnxruntime.quantization"}


@pytest.fixture(scope="module")
def tiny() -> onnx.ModelProto:
    return build("resnet18-tiny")


@pytest.fixture(scope="module")
def calib(tiny) -> list[dict[str, np.ndarray]]:
    return random_feeds(tiny, resolve_input_shapes(tiny), seed=100, count=4)


def outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("job", peer_tools.JOBS, ids=lambda j: j.key)
def test_job_gives_a_valid_model_with_the_same_outputs_shape(job, tiny, calib):
    if job.key in TOOLS:
        pytest.importorskip(TOOLS[job.key])
    before = tiny.SerializeToString()
    try:
        result = job.run(tiny, calib if job.calibrates else None)
    except peer_tools.PeerUnavailable as exc:
        assert exc.reason
        return
    assert tiny.SerializeToString() == before  # the caller's model is never edited
    onnx.checker.check_model(result)
    got, want = outputs(result, calib[0]), outputs(tiny, calib[0])
    assert [o.shape for o in got] == [o.shape for o in want]


def test_a_missing_tool_is_reported_not_raised_as_import_error(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "onnxoptimizer", None)  # makes `import onnxoptimizer` fail
    with pytest.raises(peer_tools.PeerUnavailable, match="onnxoptimizer"):
        peer_tools.onnxoptimizer_fuse_bn(tiny, None)


def test_quantizers_refuse_to_run_without_calibration_data(tiny):
    with pytest.raises(ValueError, match="calibrat"):
        peer_tools.ort_quantize_default(tiny, None)
