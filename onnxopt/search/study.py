"""The Optuna study behind a search: where trials are kept (SQLite by default, any database URL
Optuna accepts to share a study), how a resumed study picks up, and the Pareto front.

Two objectives: the latency ratio against the original (minimize) and the metric (maximize).
Finished trials carry their spec, size, MACs and timing in user attributes; a trial cut off by an
interrupt is marked failed as "interrupted" and its choices are queued again on --resume, so a
resumed search never repeats a finished trial and never loses an unfinished one.

Searches on several machines may share one study (a database URL, each after the first with
--resume): each driver writes the time into the study every BEAT_SECONDS and names itself on the
trials it asks, and a resuming search queues again only the running trials of drivers it has not
heard from in STALE_SECONDS; those of a live one are that one's to finish."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from ..errors import BadInput, UsageError, first_line

INTERRUPTED = "interrupted"
TIMED_ON = "timed_on"  # the study's user attribute: the machine its latency ratios were timed on
DRIVER = "driver"      # a trial's user attribute: the search that asked it (Driver.name)
RANKING = "sensitive_layers"  # the study's user attribute: the scan's ranking (stored_ranking)
BEAT_SECONDS = 30.0    # how often a search says it is alive, while it waits for its trials
# a search not heard from for this long is gone: its running trials are queued again by the next
# search resuming the study (long beside the beat: a driver busy racing its last trials or paused
# by a loaded machine is not taken for gone)
STALE_SECONDS = 300.0


def shown(storage: str) -> str:
    """A storage URL as messages and reports show it: its password masked."""
    with contextlib.suppress(Exception):  # not a URL SQLAlchemy reads: nothing to mask
        from sqlalchemy.engine import make_url
        return make_url(storage).render_as_string(hide_password=True)
    return storage


def open_study(name: str, storage: str, *, resume: bool, seed: int, startup: int, timed_on: str | None = None) -> Any:
    """The study `name` in `storage`, new or (`resume`) continued. `timed_on`: the machine its
    trials are timed on (cluster.timed_on), kept with the study; a resumed study timed on another
    machine is refused, as its trials' latency ratios would not compare with the new ones."""
    import warnings

    import optuna
    optuna.logging.set_verbosity(logging.WARNING)
    # `group` (conditional parameters sampled jointly) is marked experimental; its interface, not its
    # results, may change, and the warning would reach every user's terminal
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                         n_startup_trials=startup)
    try:
        existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL
        raise BadInput(f"--storage {shown(storage)}: cannot open: {first_line(exc, 200)}") from None
    _, model, space, kind = name.split("-", 3)  # onnxopt-<model hash>-<space fingerprint>-<metric kind>
    other_space = [n for n in existing if n != name and n.startswith(f"onnxopt-{model}-") and n.endswith(f"-{kind}")]
    if resume and name not in existing and other_space:
        raise UsageError(f"--storage {shown(storage)} holds a search of this model with another space ({other_space[0]}): "
                         "--resume continues only the same space (file, or defaults of this onnxopt); drop --resume to start anew")
    other_metric = [n for n in existing if n != name and n.startswith(f"onnxopt-{model}-{space}-")]
    if resume and name not in existing and other_metric:
        other = other_metric[0].split("-", 3)[3]
        why = (" (agreement was the plain output cosine before onnxopt took out the part common to every input)"
               if other == "agreement" else "")
        raise UsageError(f"--storage {shown(storage)} holds a search of this model scored by {other} ({other_metric[0]}), "
                         f"where this one scores by {kind}: --resume continues only the same metric{why}; "
                         "drop --resume to start anew")
    if name in existing and not resume:
        raise UsageError(f"--storage {shown(storage)} already holds search '{name}' of this model and space; "
                         "--resume continues it, another --storage starts afresh")
    study = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "maximize"],
                                sampler=sampler, load_if_exists=True)
    if timed_on is not None:
        before = study.user_attrs.get(TIMED_ON)
        if before is None:  # new, or kept by an onnxopt that did not record it
            study.set_user_attr(TIMED_ON, timed_on)
        elif before != timed_on:
            raise UsageError(f"--storage {shown(storage)}: search '{name}' was timed on {before}; its trials would now be "
                             f"timed on {timed_on}, and latency ratios of two machines do not compare: "
                             "resume it there, or start anew with another --storage")
    return study


def stored_ranking(study: Any) -> list[str] | None:
    """The layer ranking (most sensitive first) this study's protect and spread choices were mapped
    with: the first search's scan, kept in the study so that a resumed or joining search maps the
    same parameters to the same layers (a later onnxopt may scan differently); None before a scan."""
    value = study.user_attrs.get(RANKING)
    return [str(v) for v in value] if isinstance(value, list) else None


def keep_ranking(study: Any, layers: list[str]) -> list[str]:
    """Store this search's scan unless another search of the study stored one first; the one stored."""
    before = stored_ranking(study)
    if before is not None:
        return before
    study.set_user_attr(RANKING, list(layers))
    return list(layers)


class Driver:
    """This search in its study: the name it gives the trials it asks, and the time it was last
    alive, a study user attribute `driver:NAME` (0 once it is done), written by a thread every
    BEAT_SECONDS: the search loop itself may wait minutes for a timing to end."""

    def __init__(self, study: Any) -> None:
        self.study = study
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, now: float | None = None) -> None:
        """Say this search is alive (at `now`, for tests)."""
        self.study.set_user_attr(f"{DRIVER}:{self.name}", time.time() if now is None else now)

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._beating, name="onnxopt-search-heartbeat", daemon=True)
        self._thread.start()

    def _beating(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat is made up by the next one
                self.beat()

    def done(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.study.set_user_attr(f"{DRIVER}:{self.name}", 0.0)

    def asked(self, trial: Any) -> None:
        trial.set_user_attr(DRIVER, self.name)


def live_drivers(study: Any, now: float | None = None) -> set[str]:
    """The searches of this study heard from within STALE_SECONDS."""
    now = time.time() if now is None else now
    prefix = f"{DRIVER}:"
    return {k[len(prefix):] for k, v in study.user_attrs.items()
            if k.startswith(prefix) and isinstance(v, (int, float)) and now - v < STALE_SECONDS}


def building_elsewhere(study: Any, me: str, now: float | None = None) -> int:
    """Trials that other searches sharing the study (alive: live_drivers) are building now. They
    count toward --trials as this search's own do: counted as not yet asked, each search sharing a
    study would run up to its workers' worth of trials past it."""
    import optuna
    others = live_drivers(study, now) - {me}
    if not others:
        return 0
    return sum(t.user_attrs.get(DRIVER) in others
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def recover_unfinished(study: Any, now: float | None = None) -> int:
    """Trials left running by an interrupted search (or marked interrupted): failed as such, their
    choices queued again, once; trials running in a search still alive (live_drivers) are left to
    it, and so are those of nobody asked within STALE_SECONDS while one is (a search names its
    trial just after Optuna makes it). Returns how many were queued."""
    import optuna
    now = time.time() if now is None else now
    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get("resumed_from") for t in trials}
    alive = live_drivers(study, now)
    count = 0
    for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            driver = t.user_attrs.get(DRIVER)
            if driver in alive or (driver is None and alive and _age(t, now) < STALE_SECONDS):
                continue
            study._storage.set_trial_user_attr(t._trial_id, "error", INTERRUPTED)
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        elif not (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("error") == INTERRUPTED):
            continue
        if t.number not in queued:
            attrs = {"resumed_from": t.number}
            # a recipe runs as written (Space.suggest reads this); a ladder rung is one the bisection counts
            for kind in ("recipe", "ladder"):
                if t.user_attrs.get(kind):
                    attrs[kind] = True
            study.enqueue_trial(t.params, user_attrs=attrs)
            count += 1
    return count


def _age(trial: Any, now: float) -> float:
    """Seconds since the trial was asked (Optuna keeps the asking machine's local time)."""
    start = trial.datetime_start
    return float("inf") if start is None else now - start.timestamp()


def done_count(study: Any) -> tuple[int, int]:
    """(trials that count toward --trials: built and finished, or failed for a reason of their own;
    repeats: trials the sampler asked for a spec already built, told that spec's result)."""
    import optuna
    counted = repeats = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE or (
                t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("error") != INTERRUPTED):
            if "same_as" in t.user_attrs:
                repeats += 1
            else:
                counted += 1
    return counted, repeats


@dataclasses.dataclass
class TrialRecord:
    number: int
    spec: str
    state: str                 # "complete" | "failed"
    metric: float | None = None
    drop: float | None = None
    latency_ratio: float | None = None
    size: int | None = None
    params: int | None = None
    macs: int | None = None
    node: str | None = None
    seconds: float | None = None
    error: str | None = None
    on_front: bool = False
    timing_seconds: float | None = None  # of `seconds`, those it held its node alone to time
    model_sha256: str | None = None      # of the model it built (passes that time may build another next time)
    timings_cut: int = 0                 # timings longer than the gate's MAX_HOLD: builds ran beside their end
    origin: str = "sampler"              # who asked for it: "recipe", "ladder" (latency targets, bisected) or "sampler"
    original_ms: float | None = None     # the original's median run in this trial's timing: the node's load then

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def records(study: Any, base_metric: float) -> list[TrialRecord]:
    import optuna
    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if "same_as" in a:  # a repeat: the trial it repeats stands for it
            continue
        origin = "recipe" if a.get("recipe") else "ladder" if a.get("ladder") else "sampler"
        if t.state == optuna.trial.TrialState.COMPLETE:
            latency, metric = t.values
            out.append(TrialRecord(t.number, a.get("spec", ""), "complete", metric, base_metric - metric, latency,
                                   a.get("size"), a.get("params"), a.get("macs"), a.get("node"), a.get("seconds"),
                                   timing_seconds=a.get("timing_seconds"), model_sha256=a.get("model_sha256"),
                                   timings_cut=a.get("timings_cut") or 0, origin=origin,
                                   original_ms=a.get("original_ms")))
        elif t.state == optuna.trial.TrialState.FAIL and a.get("error") != INTERRUPTED:
            out.append(TrialRecord(t.number, a.get("spec", ""), "failed", error=a.get("error"),
                                   seconds=a.get("seconds"), origin=origin))
    front = pareto([r for r in out if r.state == "complete"])
    for r in front:
        r.on_front = True
    return out


# how far the original's median run may differ between one node's trials before the report says the
# node's load moved: between trials in separate processes it differs by a few percent where its
# sessions land; a neighbour's load moved it 19% over ten trials on an AVX2 EPYC VM, where such load
# moved an int8 model's ratio from 0.77 to 0.93 (benchmarks/results/notes/int8-load-x86-avx2.md)
LOAD_SPREAD = 0.10


def load_moved(trials: list[TrialRecord]) -> dict[str, tuple[float, float]]:
    """node -> (fastest, slowest) median run of the original over that node's trials, for the
    nodes where they differ by more than LOAD_SPREAD: the load a trial met moved its ratio there,
    and ratios timed at two loads compare loosely (an int8 model's most)."""
    by_node: dict[str, list[float]] = {}
    for r in trials:
        if r.state == "complete" and r.original_ms:
            by_node.setdefault(r.node or "?", []).append(r.original_ms)
    return {node: (min(ms), max(ms)) for node, ms in by_node.items() if max(ms) > (1 + LOAD_SPREAD) * min(ms)}


def race_margin(moved: dict[str, tuple[float, float]], quiet: float, widest: float) -> float:
    """How close to the fastest trial's ratio a trial must be to race: `quiet` where every node's
    load held (`moved`, from load_moved, is empty), else the largest share the original's median
    run moved by on a node, `widest` at most. A trial timed at a slow moment may run as fast as one
    timed at a quiet moment, and the race times both at the same moment."""
    spreads = [slowest / fastest - 1 for fastest, slowest in moved.values()]
    return max(quiet, min(widest, max(spreads))) if spreads else quiet


def pareto(done: list[TrialRecord]) -> list[TrialRecord]:
    """Trials no other trial beats on both latency ratio and metric (ties kept once, by spec)."""
    front = []
    for r in done:
        dominated = any((o.latency_ratio <= r.latency_ratio and o.metric >= r.metric)
                        and (o.latency_ratio < r.latency_ratio or o.metric > r.metric) for o in done)
        if not dominated and not any(f.spec == r.spec for f in front):
            front.append(r)
    return sorted(front, key=lambda r: r.latency_ratio)


def within_budget(drop: float, max_drop: float) -> bool:
    """Whether a metric's drop below the original's is at most `max_drop` (to rounding)."""
    return drop <= max_drop + 1e-12


def choice_order(latency_ratio: float, metric: float, size: int | None) -> tuple:
    """The choice's order: latency ratio; ties go to the better metric, then the smaller model."""
    return latency_ratio, -metric, size or 0


def _faster(r: TrialRecord) -> tuple:
    return choice_order(r.latency_ratio, r.metric, r.size)


def choose(done: list[TrialRecord], max_drop: float) -> tuple[TrialRecord | None, TrialRecord | None]:
    """(the fastest trial within the budget, the closest one when none is)."""
    within = [r for r in done if r.state == "complete" and within_budget(r.drop, max_drop)]
    if within:
        return min(within, key=_faster), None
    complete = [r for r in done if r.state == "complete"]
    return None, (min(complete, key=lambda r: (r.drop, r.latency_ratio)) if complete else None)


def closest_to_fastest(orders: dict[Any, tuple], margin: float, size: int) -> list[Any]:
    """Of keys with their choice_order(), those whose latency ratio is within `margin` (a share) of
    the fastest's, `size` at most, in the choice's order."""
    ranked = sorted(orders, key=orders.__getitem__)
    return [k for k in ranked if orders[k][0] <= orders[ranked[0]][0] * (1 + margin)][:size]


def contenders(done: list[TrialRecord], max_drop: float, margin: float, size: int) -> list[TrialRecord]:
    """The trials within the budget closest to the fastest (closest_to_fastest); the first is
    choose()'s."""
    within = {r.number: r for r in done if r.state == "complete" and within_budget(r.drop, max_drop)}
    return [within[n] for n in closest_to_fastest({n: _faster(r) for n, r in within.items()}, margin, size)]
