"""What every suite shares: machine description and writing results."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from onnxopt.bench import machine  # noqa: F401 - suites import it from here

RESULTS = Path(__file__).resolve().parent / "results"


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
