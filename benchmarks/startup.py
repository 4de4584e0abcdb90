"""Start-up: how long a user waits before onnxopt does anything, per CPU kind.

Fresh processes, the median of RUNS: `onnxopt --help`, `import onnxopt`, `import onnx` (what every
command that loads a model pays; ml_dtypes, which onnx imports, dominated it at 0.7.0) and a whole
verified `onnxopt run resnet50.onnx --passes fold-bn,cleanup` (the zoo's ResNet-50 at 224x224,
written once to a temporary folder). Results: results/startup-<kind>.md.

Every command runs once unmeasured first, with bytecode caching on (into a temporary
PYTHONPYCACHEPREFIX): a user's Python caches compiled modules, but these machines set
PYTHONDONTWRITEBYTECODE, which makes every run compile onnxopt's own modules again (0.15 s).
Run: `python -m benchmarks.startup [--quick]`.
"""
from __future__ import annotations

import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onnxopt.runtime.cpu import cpu_summary

from .common import machine, write

RUNS = 5


def wall(args: list[str], env: dict[str, str], runs: int = RUNS) -> list[float]:
    subprocess.run(args, check=True, capture_output=True, env=env)  # fills the bytecode cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    onnxopt = str(Path(sys.executable).with_name("onnxopt"))  # this environment's, whatever PATH says
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        rows = {"onnxopt --help": wall([onnxopt, "--help"], env),
                "python -c 'import onnxopt'": wall([sys.executable, "-c", "import onnxopt"], env),
                "python -c 'import onnx'": wall([sys.executable, "-c", "import onnx"], env)}
        from onnx import save

        from onnxopt import models
        name = "resnet50-tiny" if quick else "resnet50"
        path = Path(tmp) / f"{name}.onnx"
        save(models.build(name, seed=0), path)
        rows[f"onnxopt run {name}.onnx --passes fold-bn,cleanup (verified)"] = wall(
            [onnxopt, "run", str(path), "--passes", "fold-bn,cleanup", "-o", str(Path(tmp) / "out.onnx")], env, 3)
    cpu = cpu_summary()
    data = {"machine": machine(), "cpu": cpu, "ml_dtypes": importlib.metadata.version("ml_dtypes"),
            "seconds": {k: {"median": statistics.median(v), "runs": v} for k, v in rows.items()}}
    lines = [f"# Start-up on {cpu['kind']} ({cpu['model']})", "",
             f"Fresh processes, median of {RUNS} (the run: of 3); Python {data['machine']['python']}, onnx "
             f"{data['machine']['onnx']}, onnxruntime {data['machine']['onnxruntime']}, ml_dtypes {data['ml_dtypes']}; "
             "each command run once unmeasured first, bytecode caching on.",
             "", "| command | median s | runs |", "|---|---|---|"]
    lines += [f"| `{k}` | {v['median']:.2f} | {', '.join(f'{x:.2f}' for x in v['runs'])} |"
              for k, v in data["seconds"].items()]
    write(f"startup-{cpu['kind']}", data, "\n".join(lines), quick)
    return data


if __name__ == "__main__":
    main()
