"""What every suite shares: machine description and writing results."""
from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import numpy
    import onnx
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}


def median(values: list[float]) -> float:
    return statistics.median(values)


def what_it_did(stats: dict, skipped: list[str]) -> str:
    """A pass's counts and, if it declined anything, how often and the first reason."""
    did = " ".join(f"{k}={v:g}" for k, v in stats.items())
    if skipped:
        did += f" ({len(skipped)} declined: {skipped[0].split(': ', 1)[-1]})"
    return did


def write(name: str, data: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
