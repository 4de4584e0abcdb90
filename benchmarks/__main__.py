"""Run every benchmark suite, then write results/SUMMARY.md: `python -m benchmarks [--quick]`."""
import sys
import time

from . import foundation, peers, prune, quantize, quantize_cpu, reparam, startup
from .summary import record_run, write_summary

SUITES = [foundation, reparam, peers, prune, quantize, quantize_cpu, startup]


def main(argv: list[str]) -> None:
    seconds = {}
    for suite in SUITES:
        name = suite.__name__.rsplit(".", 1)[-1]
        start = time.perf_counter()
        suite.main(argv)
        seconds[name] = time.perf_counter() - start
        print(f"[benchmarks] {name}: {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    quick = "--quick" in argv
    record_run(list(seconds), seconds, quick)
    write_summary(quick)
    print(f"[benchmarks] all suites: {sum(seconds.values()):.0f} s; wrote the summary to "
          f"benchmarks/results/{'quick/' if quick else ''}SUMMARY.md", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
