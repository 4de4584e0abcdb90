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


def status(key: str) -> int | None:
    """A byte count from /proc/self/status (VmRSS, VmHWM); None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    Whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmHWM") is not None
    except OSError:
        return False


def lifetime_peak() -> int:
    """The process-lifetime peak RSS in bytes (resource; Linux reports KiB, macOS bytes)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024


_CHILD = r"""
import json, sys
import numpy as np
from onnxopt.measure.memory import lifetime_peak, reset_peak, status
from onnxopt.runtime.sessions import make_session  # the timed sessions' options, spinning off as there

path, spec, threads, level = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = open(path, "rb").read()
feed = {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in spec.items()}
# without clear_refs, the process-lifetime peak: low for models smaller than the imports took
resettable = reset_peak()
before = status("VmRSS") if resettable else lifetime_peak()
make_session(data, optimization=level, threads=threads, spinning=False).run(None, feed)
print(json.dumps({"bytes": (status("VmHWM") if resettable else lifetime_peak()) - before}))
"""


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
                                   optimization], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
    if done.returncode != 0:
        return None
    try:
        return max(0, int(json.loads(done.stdout.strip().splitlines()[-1])["bytes"]))
    except (ValueError, KeyError, IndexError):
        return None
