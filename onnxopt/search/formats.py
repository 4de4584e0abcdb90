"""A search's results for people (the front as a table, one line on the choice) and as a plot."""
from __future__ import annotations

import math
import shlex
from pathlib import Path

from ..text import human, human_bytes, table
from .cluster import MAX_HOLD
from .run import RACE_MARGIN, RACE_WIDEST, SearchResult
from .space import decided_by_timing
from .study import within_budget


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}"


def _target(spec: str) -> float:
    """The latency target of a ladder trial's spec."""
    from ..pipeline.spec import parse_spec
    return next(p.options.target_latency for p in parse_spec(spec) if p.name == "prune")


def format_front(result: SearchResult) -> str:
    r = result.report
    metric = r["metric"]
    again = f" (+{r['repeats']} asked again, not rebuilt)" if r.get("repeats") else ""
    measure = f" ({metric['measure']})" if metric.get("measure") else ""
    lines = [f"search {r['study']}: {len(result.trials)} trials{again} on {r['cluster']['nodes']} node(s) "
             f"({r['cluster']['cpus']} CPUs); timed on {r['timed_on']}",
             f"metric: {metric['kind']}{measure} {metric['original'] * 100:.2f} for the original; budget: drop <= "
             f"{metric['max_drop'] * 100:.2f} points; A/A control of a trial ratio: "
             f"{r['control'].get('control_ratio', float('nan')):.3f}"]
    limit = r.get("time_limit")
    if limit and limit["reached"]:
        lines.append(f"time limit: no trial was asked once {limit['seconds']:g} s had passed and a trial was done; "
                     f"{len(result.trials)} of the {r['trials_asked']} trials asked for are done, and --resume "
                     "continues the study")
    resumed = r.get("resumed")
    if resumed is not None:
        lines.append(f"--resume: {r['storage']} held no search of this model, space and metric; this one started anew"
                     if resumed.get("new") else f"resumed: {resumed['finished_before']} trial(s) done earlier, not "
                     f"redone; {resumed['requeued']} interrupted one(s) queued again")
    lines.append("")
    rows = [[str(t.number), f"{t.latency_ratio:.3f}", _pct(t.metric), _pct(t.drop), human_bytes(t.size or 0),
             human(t.macs), ("*" if result.best is not None and t.spec == result.spec else ""), t.spec]
            for t in result.front]
    lines.append("Pareto front (latency ratio vs metric; * = chosen):")
    lines.append(table(rows, ["#", "latency", "metric", "drop", "size", "MACs", "", "spec"], align="rrrrrrll"))
    rungs = [t for t in result.trials if t.origin == "ladder"]
    if rungs:  # where the budget breaks along the latency axis: what the user may trade next
        lines += ["", "latency targets (the ladder, then halving the gap where the budget breaks):"]
        lines += [f"  #{t.number} target {_target(t.spec):g}: " + ("failed" if t.state != "complete" else
                  f"x{t.latency_ratio:.3f}, drop {_pct(t.drop)} points, "
                  + ("within the budget" if within_budget(t.drop, metric["max_drop"])
                     else "over the budget"))
                  for t in sorted(rungs, key=lambda t: _target(t.spec))]
    if r.get("scan_error"):
        lines += ["", f"sensitivity scan failed ({r['scan_error']}): no layer was protected or spared"]
    failed = [t for t in result.trials if t.state == "failed"]
    if failed:
        lines += ["", f"{len(failed)} failed trial(s):"]
        lines += [f"  #{t.number} {t.spec}: {t.error}" for t in failed[:8]]
    measured = {t.spec: t for t in result.trials}.values()  # a spec asked again was not measured again
    busy = sum(t.seconds or 0 for t in measured)
    alone = sum(t.timing_seconds or 0 for t in measured)
    if busy:  # timing has its node alone: the share of trial time that workers cannot overlap
        lines += ["", f"trials: {busy:.0f} s of work, {alone:.0f} s of it timing with the node to itself"]
    cut = [t for t in measured if t.timings_cut]
    if cut:
        lines += [f"warning: {len(cut)} trial(s) timed for longer than {MAX_HOLD:.0f} s at once, and the node's other "
                  f"builds went on before the timing ended; their ratios may be off: "
                  + ", ".join(f"#{t.number}" for t in cut[:8])]
    for node, (fastest, slowest) in sorted((r.get("load_moved") or {}).items()):
        places = max(0, 2 - math.floor(math.log10(slowest)))  # the slower to three significant digits, the faster alike
        lines += [f"warning: the original's median run took {fastest:.{places}f} to {slowest:.{places}f} ms across the trials on node "
                  f"{node}: its load moved while they were timed, and ratios timed at different loads compare "
                  f"loosely (int8's most); a race before the choice, where there is one, takes the trials within the largest "
                  f"such spread of the fastest ({RACE_WIDEST:.0%} at most) and times them in the same rounds"]
    lines.append("")
    if result.best is not None:
        best = next(t for t in result.trials if t.spec == result.spec and t.state == "complete")
        race = r.get("race") or {}
        raced = next((e for e in race.get("entrants", []) if e["number"] == best.number), None)
        latency = (f"latency x{best.latency_ratio:.3f}" if raced is None else
                   f"latency x{best.latency_ratio:.3f} in its trial, x{raced['race_ratio']:.3f} in the race")
        lines.append(f"chosen: {result.spec} ({latency}, drop {best.drop * 100:.2f} points); "
                     f"reproduce with: onnxopt run MODEL --passes {shlex.quote(result.spec)} --calib CALIB"
                     + (f" --preprocess {shlex.quote(r['calibration_preprocess'])}" if r.get("calibration_preprocess")
                        else ""))
        if raced is not None:
            lines.append(f"  raced side by side: {len(race['entrants'])} trials within the budget and "
                         f"{race.get('margin', RACE_MARGIN):.0%} of "
                         "the fastest (trial -> race [95% interval]; chosen: the lowest upper end): "
                         + ", ".join(f"#{e['number']} x{e['trial_ratio']:.3f} -> x{e['race_ratio']:.3f} "
                                     f"[{e['interval'][0]:.3f}-{e['interval'][1]:.3f}]"
                                     for e in race["entrants"])
                         + ("" if best.on_front else "; the trials' own timings had put it off the front"))
        elif race.get("error"):
            lines.append(f"  the side-by-side race of the closest trials failed ({race['error']}): chosen by the trials' "
                         "own timing")
        if race.get("left_out"):
            lines.append("  not raced, their models built by an earlier or another search of this study: "
                         + ", ".join(f"#{n}" for n in race["left_out"]))
        if r.get("best_is_measured_model") is False:
            lines.append("  warning: built again for -o, this spec gave another model than the one measured (a pass of "
                         "it chooses by timing); its latency was not measured")
        elif decided_by_timing(result.spec):
            lines.append("  (a pass of it chooses by timing on this CPU: run again, it may build another model; the "
                         "model measured here is the one -o writes)")
    elif result.closest is not None:
        c = result.closest
        lines.append(f"no trial within the budget; closest: #{c.number} {c.spec} (drop {c.drop * 100:.2f} points, "
                     f"latency x{c.latency_ratio:.3f})")
    return "\n".join(lines)


def plot_front(result: SearchResult, path: str | Path) -> None:
    """Latency ratio against metric drop, every trial, the front joined, the budget as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..graph.io import atomic_write_bytes
    done = [t for t in result.trials if t.state == "complete"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([t.latency_ratio for t in done], [t.drop * 100 for t in done], s=18, color="0.6", label="trials")
    front = sorted(result.front, key=lambda t: t.latency_ratio)
    ax.plot([t.latency_ratio for t in front], [t.drop * 100 for t in front], "o-", color="C0", label="Pareto front")
    ax.axhline(result.report["metric"]["max_drop"] * 100, color="C3", ls="--", lw=1, label="budget")
    if result.best is not None:
        best = next(t for t in done if t.spec == result.spec)
        ax.scatter([best.latency_ratio], [best.drop * 100], marker="*", s=160, color="C1", zorder=5, label="chosen")
    ax.set_xlabel("latency / original (side by side, 1 thread)")
    ax.set_ylabel("metric drop (points)")
    ax.set_title(f"onnxopt search: {result.report['timed_on']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
