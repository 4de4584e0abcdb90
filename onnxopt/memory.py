"""Peak memory of an onnxruntime session: building it and running one inference.

Measured in a child process, because a process's peak resident size only ever grows: in the
benchmarking process the first big model would set the peak for all the others. On Linux the child
resets its peak resident size (/proc/self/clear_refs) after importing onnxruntime and reading the
model file, builds the session, runs it once and reads the new peak: the difference is what the
session needed (weights as ORT holds them, the arena, the optimized graph). Elsewhere it falls back
to the process-lifetime peak (`resource`), which under-reports models smaller than onnxruntime's
own import; without `resource` the number is unknown.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys
import numpy as np
import onnxruntime as ort

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def reset_peak():
    # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmHWM") is not None
    except OSError:
        return False

def peak():
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024  # Linux reports KiB, macOS bytes

path, spec, threads, level = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = open(path, "rb").read()
feed = {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in spec.items()}
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.log_severity_level = 4
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the timed sessions
if reset_peak():
    before = status("VmRSS")
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    print(json.dumps({"bytes": status("VmHWM") - before}))
else:  # the process-lifetime peak: low for models smaller than what importing onnxruntime took
    before = peak()
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    print(json.dumps({"bytes": peak() - before}))
"""

_LEVEL_NAMES = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def peak_session_bytes(model: bytes, feed_spec: dict[str, tuple[tuple[int, ...], str]], *, threads: int = 1,
                       optimization: str = "all", timeout: float = 300.0) -> int | None:
    """Peak resident bytes a session of `model` adds while it is built and runs once on zero inputs
    of `feed_spec` ({input: (shape, dtype name)}). None where it cannot be measured."""
    try:
        import resource  # noqa: F401 - only probing that the platform has it
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="onnxopt-mem-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model)
        spec = {k: [list(shape), dtype] for k, (shape, dtype) in feed_spec.items()}
        try:
            done = subprocess.run([sys.executable, "-c", _CHILD, str(path), json.dumps(spec), str(threads),
                                   _LEVEL_NAMES[optimization]], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
    if done.returncode != 0:
        return None
    try:
        return max(0, int(json.loads(done.stdout.strip().splitlines()[-1])["bytes"]))
    except (ValueError, KeyError, IndexError):
        return None
