"""A real Ray cluster on this machine: a head and a second node started with `ray start` on
127.0.0.1 (one CPU each), and a search joining it with `ray_address`. Trials run on both nodes,
each node has its own timing gate, and the driver leaves the cluster running when it is done."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.data.feeds import FeedSet
from onnxopt.search import search
from onnxopt.search.space import Space
from onnxopt.testing import conv_node, make_model, random_weights

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(monkeypatch):
    # a private test cluster: no token to distribute, no usage report
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.setenv(k, env[k])
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common], env=env,
                       check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", f"--address={address}", *common], env=env, check=True, capture_output=True,
                       timeout=120)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _model() -> onnx.ModelProto:
    from onnx import helper
    c1, i1 = conv_node("x", "a", "c1", 3, 32, seed=0)
    nodes = [c1, helper.make_node("Relu", ["a"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1)]
    return make_model(nodes, {**i1, "fc.w": random_weights(2, 10, 32), "fc.b": random_weights(3, 10)},
                      [("x", [1, 3, 16, 16])], [("y", [1, 10])])


@pytest.mark.skipif(shutil.which(RAY) is None and not Path(RAY).exists(), reason="the ray CLI is not installed")
def test_a_search_runs_its_trials_on_both_nodes(two_node_cluster, tmp_path):
    import ray
    data = FeedSet({"x": np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)}, 1)
    space = Space(exact=("cleanup",), prune_modes=("off", "ratio"), protect=(0.0,), quantize_modes=("off",))
    result = search(_model(), data, trials=6, workers=2, ray_address=two_node_cluster, space=space,
                    storage=f"sqlite:///{tmp_path / 's.db'}", timing_budget=0.2, max_drop=0.5)
    assert result.report["cluster"] == {"address": two_node_cluster, "nodes": 2, "cpus": 2}
    assert all(t.state == "complete" for t in result.trials), [t.error for t in result.trials]
    assert len({t.node for t in result.trials}) == 2  # both nodes built and timed trials
    from onnxopt.measure.timing import timed_on
    assert result.report["timed_on"] == timed_on()  # each node, asked, answered this machine
    assert not ray.is_initialized()  # the driver left ...
    ray.init(address=two_node_cluster, log_to_driver=False, logging_level="ERROR")
    try:  # ... the cluster stayed, with one timing gate per node
        gates = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("onnxopt-timing-gate-")]
        assert len(gates) == 2 and len(ray.nodes()) == 2
    finally:
        ray.shutdown()


@pytest.mark.skipif(shutil.which(RAY) is None and not Path(RAY).exists(), reason="the ray CLI is not installed")
def test_without_ray_address_a_search_starts_its_own_instance_beside_a_ray_start_cluster(two_node_cluster, tmp_path):
    # `ray start` left a cluster on this machine: a plain ray.init() would join it (and refuse the CPUs
    # asked for); the search's default is a local instance of its own, with the workers asked for
    data = FeedSet({"x": np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)}, 1)
    space = Space(exact=("cleanup",), prune_modes=("off",), protect=(0.0,), quantize_modes=("off",))
    result = search(_model(), data, trials=1, workers=2, space=space, storage=f"sqlite:///{tmp_path / 's.db'}",
                    timing_budget=0.2, max_drop=0.5)
    assert result.report["cluster"] == {"address": "local", "nodes": 1, "cpus": 2}
    assert result.trials[0].state == "complete", result.trials[0].error
