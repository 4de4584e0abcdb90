"""Run every benchmark suite, then write results/SUMMARY.md: `python -m benchmarks [--quick]`.
`python -m benchmarks NAME [NAME ...]` runs only those suites (e.g. `realworld`, which fetches pinned
wheels and is not part of the full run) and leaves SUMMARY.md as it is."""
import sys
import time

from . import foundation, peers, prune, quantize, quantize_cpu, realworld, reparam, search, startup
from .summary import record_run, write_summary

SUITES = [foundation, reparam, peers, prune, quantize, quantize_cpu, startup]


ON_REQUEST = {"realworld": realworld,  # fetches third-party wheels: only when named
              "search": search}  # about an hour of searches (x86-vnni), with Optuna and Ray: only when named


def main(argv: list[str]) -> None:
    named = [a for a in argv if not a.startswith("-")]
    if named:
        known = {s.__name__.rsplit(".", 1)[-1]: s for s in SUITES} | ON_REQUEST
        unknown = [n for n in named if n not in known]
        if unknown:
            raise SystemExit(f"unknown suite {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        for name in named:
            known[name].main([a for a in argv if a.startswith("-")])
        return
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
