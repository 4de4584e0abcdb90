"""Run reports as text: the before/after table lists ops most frequent first and ties by name, so
the same run prints the same table in every process (set order follows per-process string hashing)."""
from __future__ import annotations

import os
import subprocess
import sys

from onnxopt.analysis.cost import ModelStats
from onnxopt.pipeline.report import compare_stats


def _ops_column(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.strip()[0].isupper()]


def test_ops_are_ordered_by_count_then_name():
    before = ModelStats(9, {"Relu": 2, "Gemm": 1, "Flatten": 1, "GlobalAveragePool": 1, "Conv": 4}, 10, 40, 100, 17)
    after = ModelStats(7, {"Relu": 2, "Gemm": 1, "Flatten": 1, "GlobalAveragePool": 1, "Conv": 2}, 8, 32, 80, 17)
    assert _ops_column(compare_stats(before, after)) == ["Conv", "Relu", "Flatten", "Gemm", "GlobalAveragePool"]


def test_the_table_is_the_same_under_every_hash_seed():
    code = ("from onnxopt.analysis.cost import ModelStats\nfrom onnxopt.pipeline.report import compare_stats\n"
            "s = ModelStats(3, {'Gemm': 1, 'Flatten': 1, 'GlobalAveragePool': 1, 'Softmax': 1}, 1, 4, 1, 17)\n"
            "print(compare_stats(s, s))")
    tables = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3, 4)}
    assert len(tables) == 1
