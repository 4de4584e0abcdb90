"""Benchmark suites (not installed). Run from the repo root: `python -m benchmarks` (all suites) or
`python -m benchmarks.foundation`. Results go to benchmarks/results/ as JSON and Markdown."""
