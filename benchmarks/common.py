"""What every suite shares: machine description and writing results."""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from onnxopt.measure.timing import machine  # noqa: F401 - suites import it from here

RESULTS = Path(__file__).resolve().parent / "results"


def median(values: list[float]) -> float:
    return statistics.median(values)


def what_it_did(stats: dict, skipped: list[str]) -> str:
    """A pass's counts and, if it declined anything, how often and the first reason."""
    did = " ".join(f"{k}={v:g}" for k, v in stats.items())
    if skipped:
        did += f" ({len(skipped)} declined: {skipped[0].split(': ', 1)[-1]})"
    return did


def results_dir(quick: bool = False) -> Path:
    """results/, or results/quick/ (not committed) for smoke runs: a --quick run must never replace
    the tables the README quotes."""
    return RESULTS / "quick" if quick else RESULTS


def write(name: str, data: dict, markdown: str | Callable[[dict], str], quick: bool = False) -> None:
    """Save the JSON first: a renderer given as a function that trips on an older run's entries loses no measurements."""
    folder = results_dir(quick)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    if callable(markdown):
        markdown = markdown(data)
    (folder / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
