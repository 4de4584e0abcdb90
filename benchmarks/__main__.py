"""Run every benchmark suite: `python -m benchmarks [--quick]`."""
import sys

from . import foundation, reparam

SUITES = [foundation, reparam]

if __name__ == "__main__":
    for suite in SUITES:
        suite.main(sys.argv[1:])
