"""`onnxopt search`: the fastest model within an accuracy budget, found by trying pipeline specs.

Optuna samples the space (multi-objective TPE: latency ratio down, metric up; the README's fixed
recipes are the first trials) and keeps the study in its storage; Ray runs the trials, on a local
instance or an existing cluster; each trial is measured on the node that built it, side by side
with the original, with nothing else running there (cluster.py). The result is the Pareto front
and the fastest trial whose metric drops at most `max_drop` below the original's."""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import onnx

from ..data.feeds import FeedSet
from ..errors import BadData, UsageError
from ..runtime.fidelity import agreement_measure
from . import study as studies
from .space import BISECT_STEPS, Space, decided_by_timing, load_space, spec_safe, to_spec, uses_ranking
from .trial import Metric, Payload, Samples, control_ratio
from .trial import race as trial_race

DEFAULT_STORAGE = "sqlite:///onnxopt-search.db"
HOLDBACK = 64          # calibration runs held back for the agreement metric (at most a fifth)
CALIBRATION_RUNS = 256
REPEATS_PER_TRIAL = 3  # specs asked again (cheap: no build) before a search that finds no new spec stops
# Before the choice, the fastest within-budget trials are timed again side by side (trial.race):
# picking the fastest of many close trials by one timing each picks the one whose timing erred
# lowest (the digits MobileNet's choice timed 0.744x in its trial, 0.807x side by side with the
# recipes). Those within RACE_MARGIN of the fastest trial's ratio race, RACE_SIZE at most.
RACE_MARGIN = 0.05
RACE_SIZE = 4
# the widest margin, where a node's load moved between trials (studies.race_margin: the original's
# spread there): a ratio timed at the slow moment may be that much too high (on an AVX2 EPYC VM the
# original's time moved 19% and an int8 ratio 21%), but a race of trials further apart than a
# quarter would mostly time models that cannot win. Models within it are kept while the search runs.
RACE_WIDEST = 0.25
OTHERS_POLL_SECONDS = 2.0  # how often a search whose last trials other searches build looks for their results


@dataclasses.dataclass
class SearchResult:
    best: onnx.ModelProto | None          # the fastest model within the budget (None: none was)
    spec: str | None                      # its pipeline spec: `onnxopt run --passes SPEC` reproduces it
    front: list[studies.TrialRecord]      # latency ratio vs metric, fastest first
    trials: list[studies.TrialRecord]     # every counted trial, failed ones with their reason
    closest: studies.TrialRecord | None   # when nothing met the budget: the smallest drop
    report: dict                          # everything, for --report


def search(model: onnx.ModelProto | str | os.PathLike, calibration: FeedSet | str | os.PathLike, *,
           metric: Metric | None = None, evaluation: FeedSet | str | os.PathLike | None = None, max_drop: float = 0.01, trials: int = 32, workers: int = 1,
           ray_address: str | None = None, storage: str | None = None, space: Space | str | None = None,
           resume: bool = False, seed: int = 0, input_shapes: dict[str, tuple[int, ...]] | None = None,
           timing_budget: float = 2.0, progress: Callable[[dict], None] | None = None,
           max_time: float | None = None) -> SearchResult:
    """Search `space` for `model` (see the module docstring). `model` and the data may be given as
    files, as on the command line. `metric(model) -> float` (higher is better) or `evaluation`
    (labelled: top-1) or, without either, agreement with the original on
    held-back calibration samples. `max_time` (seconds from the call): no trial is asked or started
    after it (those running finish; a study with none done goes on until one is), the choice is made
    from the trials done, and --resume continues the study later."""
    started = time.monotonic()
    from ..pipeline.run import Pipeline
    from ..pipeline.spec import parse_spec
    from ..runtime.sessions import resolve_input_shapes, run_model
    from . import cluster
    from .trial import score

    for engine in ("optuna", "ray"):
        try:
            __import__(engine)
        except ImportError:
            raise UsageError(f"onnxopt search needs {engine}: pip install 'onnxopt[search]'") from None
    if trials < 1 or workers < 1:
        raise UsageError("--trials and --workers take a positive count")
    if max_time is not None and not max_time > 0:
        raise UsageError(f"--max-time {max_time:g}: a positive number of seconds")
    if not 0 <= max_drop < 1:
        raise UsageError(f"--max-drop {max_drop:g}: a share of the metric in [0, 1), e.g. 0.01")
    space = load_space(space) if isinstance(space, str) else (space or Space())
    storage = storage or DEFAULT_STORAGE
    model, calibration, evaluation = _as_inputs(model, calibration, evaluation)
    first = next(iter(calibration), None)
    if first is None:
        raise BadData(f"{calibration.source}: no calibration samples")
    shapes = resolve_input_shapes(model, {k: tuple(v.shape) for k, v in first.items()} | (input_shapes or {}))

    kind = "metric" if metric is not None else "top-1" if evaluation is not None else "agreement"
    if kind == "top-1" and evaluation.labels is None:
        raise BadData(f"{evaluation.source}: --eval needs a `labels` array")
    holdback = min(HOLDBACK, len(calibration) // 5) if kind == "agreement" else 0
    if kind == "agreement" and holdback < 4:
        raise BadData(f"{calibration.source}: {len(calibration)} calibration runs; the agreement metric holds back a fifth "
                      "and needs at least 20 (or give --eval labelled data)")
    payload = Payload(model.SerializeToString(), shapes,
                      Samples.of(calibration, limit=CALIBRATION_RUNS if not holdback else len(calibration) - holdback),
                      kind, metric, Samples.of(evaluation) if evaluation is not None else None,
                      Samples.of(calibration, skip=len(calibration) - holdback) if holdback else None, None, timing_budget, seed)

    def measure_original() -> tuple[float, tuple[list[str], list[dict], onnx.ModelProto]]:
        if holdback:
            payload.reference = run_model(model, list(payload.holdback.feedset()), optimization="all")
        return score(payload, model), _exact_prefix(model, payload, space)

    # the original's metric and the exact passes run beside Ray's start (seconds of waiting for its
    # processes): a thread, as their work is in onnxruntime and numpy, which let go of the GIL. The
    # study is opened after both, so a start that fails leaves none behind (a rerun would need --resume)
    original = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onnxopt-original")
    measuring = original.submit(measure_original)
    original.shutdown(wait=False)
    try:
        try:
            info = cluster.connect(ray_address, workers)
        finally:  # a failed start still waits for the thread it began (a thread cannot be cancelled)
            concurrent.futures.wait([measuring])
        base_metric, (exact, exact_report, after_exact) = measuring.result()
        timed_on = cluster.timed_on(joined=bool(ray_address))
        # the study's kind names how the metric is taken: "agreement" studies of an earlier onnxopt
        # scored by the plain cosine, and their trials' metrics do not compare with centred ones
        study_kind = "agreement.centred" if kind == "agreement" else kind
        name = f"onnxopt-{hashlib.sha256(payload.model).hexdigest()[:12]}-{space.fingerprint}-{study_kind}"
        study = studies.open_study(name, storage, resume=resume, seed=seed, startup=max(4, min(10, trials // 3)),
                                   timed_on=timed_on)
        # a new study gets the recipes and the ladder; a resumed one says what it met (whether --resume
        # found the study the user meant): the trials that count toward --trials, and those queued again
        stored = len(study.get_trials(deepcopy=False))
        kept_before = studies.done_count(study)[0] if resume else 0
        requeued = studies.recover_unfinished(study) if resume else 0  # queues again only where trials were
        if not stored:
            for params in space.recipes():
                study.enqueue_trial(params, user_attrs={"recipe": True})
            for params in space.ladder():
                study.enqueue_trial(params, user_attrs={"ladder": True})
    except BaseException:
        cluster.shutdown()
        raise
    runner = cluster.Runner(payload, timed_on)
    driver = cluster.driver_gate()
    kept: dict[int, tuple[tuple, bytes]] = {}  # trial number -> (its choice order, model): those that may race
    asked: dict[int, Any] = {}
    # the sensitivity scan runs beside the first trials (the recipes need no scan unless the space
    # leaves no 0 for protect or spread); a trial that needs it waits for it. The A/A control rides
    # on the first trial built: the original against itself in that trial's timing rounds (a job of
    # its own cost a task, two sessions and a warm-up, seconds of a small model's search)
    jobs: dict[str, dict] = {}
    carrier: int | None = None  # the trial timing the control beside its own candidate, until it reports
    # a study keeps the ranking its first scan gave: a resumed or joining search maps protect and
    # spread to the layers the study's trials were built with
    sensitive: list[str] | None = studies.stored_ranking(study) if space.uses_ranking else []
    if sensitive is None:
        runner.start("scan", ranked_layers, after_exact.SerializeToString())
    waiting: list[tuple[Any, dict]] = []  # asked trials that need the scan, until it is done
    seen_specs = _measured_specs(study)
    building: dict[str, int] = {}         # spec -> the trial building it now
    twins: dict[int, list[Any]] = {}      # that trial -> trials asked for the same spec meanwhile

    def over_budget(trial: Any, metric: float) -> None:
        """How far the trial's drop exceeds --max-drop, as an Optuna constraint (feasible at 0 or
        less): Optuna's TPE then draws its good region from the trials within the budget, where the
        answer lies, not from fast trials that lost too much (Watanabe & Hutter 2023, c-TPE)."""
        trial.set_constraint("drop", base_metric - metric - max_drop)

    def tell_same(trial: Any, source: Any) -> None:
        """`trial` asked for the spec `source` measured (or failed): that result stands for it."""
        for k, v in source.user_attrs.items():
            if k not in ("spec", "recipe", "ladder", "resumed_from", studies.DRIVER):
                trial.set_user_attr(k, v)
        trial.set_user_attr("same_as", source.number)
        if source.state.name == "COMPLETE":
            over_budget(trial, source.values[1])
            study.tell(trial, list(source.values))
        else:
            study.tell(trial, state=_fail())

    def dispatch(trial: Any, params: dict) -> bool:
        """Submit the trial; True if it was told at once (a spec already measured)."""
        spec = to_spec(params, exact, sensitive or [])  # only trials that use the scan need its ranking
        trial.set_user_attr("spec", spec)
        if spec not in seen_specs:  # measured meanwhile by another search sharing the study?
            seen_specs.update(_measured_specs(study))
        again = seen_specs.get(spec)
        if again is not None:  # the sampler asked for a spec already measured: its result stands
            tell_same(trial, again)
            return True
        if spec in building:  # being built now: a second build would only take a worker from another spec
            twins.setdefault(building[spec], []).append(trial)
            return False
        asked[trial.number] = trial
        building[spec] = trial.number
        nonlocal carrier
        # not measured yet, nor being measured by a trial or by a job of its own
        control = "control" not in jobs and carrier is None and "control" not in runner.jobs.values()
        if control:
            carrier = trial.number
        runner.submit(trial.number, spec, control)
        return False

    me = studies.Driver(study)  # says this search is alive to others sharing the study
    me.start()
    timed_out = False

    def past_deadline() -> bool:
        return max_time is not None and time.monotonic() - started >= max_time

    def out_of_time() -> bool:
        """Past max_time with a trial to choose from: no trial is asked or started after it, but a
        study with no finished trial yet (a search that measured nothing could choose nothing) goes
        on until one is."""
        nonlocal timed_out
        if not timed_out and past_deadline():
            timed_out = any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        return timed_out

    def interrupted(trial: Any) -> None:
        """An asked trial not started for the time limit: queued again on --resume, as an interrupt's."""
        trial.set_user_attr("error", studies.INTERRUPTED)
        study.tell(trial, state=_fail())

    try:
        total = trials
        while True:
            # the loop's own work never overlaps a timing on its node (see cluster.driver_work)
            with cluster.driver_work(driver):
                finished, repeats = studies.done_count(study)
                elsewhere = studies.building_elsewhere(study, me.name)  # by other searches sharing the study
                # a trial waiting for the scan leaves its worker to the next one that does not; a
                # repeated spec costs no build and does not count toward --trials, but a sampler that
                # keeps repeating (a space with few specs) is not asked forever
                while (len(runner.pending) < workers
                       and finished + len(runner.pending) + len(waiting) + elsewhere < total
                       and repeats + sum(map(len, twins.values())) < REPEATS_PER_TRIAL * total
                       and not out_of_time()):
                    trial = study.ask()
                    try:
                        me.asked(trial)
                    except _taken():  # failed by a search that took this one for gone: its trial now
                        continue
                    params = space.suggest(trial)
                    if sensitive is None and uses_ranking(params):
                        waiting.append((trial, params))
                    elif dispatch(trial, params):
                        repeats += 1
            if not runner.pending and not runner.jobs and elsewhere and finished < total and not out_of_time():
                # the rest of --trials is being built by other searches: their results, not more
                # trials (until they end, or their searches are gone: live_drivers)
                time.sleep(OTHERS_POLL_SECONDS)
                continue
            got = runner.next()
            if got is None:
                break
            with cluster.driver_work(driver):
                what, key, result = got
                if what == "job":
                    jobs[key] = result
                    if key == "scan":
                        layers = result.get("layers")
                        # a failed scan: trials protect nothing, and the next search scans again
                        sensitive = studies.keep_ranking(study, layers) if layers is not None and "error" not in result else []
                        while waiting:  # one at a time: an interrupt leaves each trial in one place
                            trial, params = waiting[0]
                            # past the time limit a trial that waited starts only to fill the workers
                            # while nothing is finished yet; the rest wait for --resume
                            if past_deadline() and (out_of_time() or len(runner.pending) >= workers):
                                interrupted(trial)
                            else:
                                dispatch(trial, params)
                            waiting.pop(0)
                    continue
                trial = asked.pop(key)
                if key == carrier:  # a trial that failed before timing leaves it to a job of its own
                    carrier = None
                    if "control_ratio" in result:
                        jobs["control"] = {"control_ratio": result.pop("control_ratio")}
                    else:
                        runner.start("control", control_ratio)
                # a trial another search failed and queued again (it took this one for gone) is its now
                with contextlib.suppress(_taken()):
                    for k in ("node", "seconds", "size", "params", "macs", "original_ms", "rounds", "timing_seconds",
                              "gate_wait_seconds", "timings_cut", "model_sha256", "started_at", "timed_on"):
                        if result.get(k) is not None:
                            trial.set_user_attr(k, result[k])
                    if "error" in result:
                        trial.set_user_attr("error", result["error"])
                        study.tell(trial, state=_fail())
                    else:
                        over_budget(trial, result["metric"])
                        study.tell(trial, [result["latency_ratio"], result["metric"]])
                told = study._storage.get_trial(trial._trial_id)
                if told.state.name == "COMPLETE":
                    seen_specs[result["spec"]] = told
                # keep the bytes of those that may race only (RACE_SIZE closest within the widest margin:
                # a full-size model per trial would not fit in memory); a choice not kept is built again below.
                # Only a trial told here: one another search took for gone is failed in the study, cannot
                # race, and would hold a place a contender needs
                if ("error" not in result and told.state.name == "COMPLETE"
                        and studies.within_budget(base_metric - result["metric"], max_drop)):
                    kept[key] = (studies.choice_order(result["latency_ratio"], result["metric"], result["size"]),
                                 result["model"])
                    kept = {n: kept[n] for n in studies.closest_to_fastest(
                        {n: order for n, (order, _) in kept.items()}, max(RACE_MARGIN, RACE_WIDEST), RACE_SIZE)}
                for spec in [s for s, n in building.items() if n == key]:
                    del building[spec]
                for twin in twins.pop(key, []):
                    tell_same(twin, told)
                rung = _next_rung(study, space, base_metric, max_drop)
                if rung is not None:  # asked next, before the sampler's own choices
                    study.enqueue_trial(rung, user_attrs={"ladder": True})
                if progress is not None:
                    progress(_progress_state(study, base_metric, max_drop, total))
        records = studies.records(study, base_metric)
        # nodes where the original's median run moved by more than studies.LOAD_SPREAD between trials:
        # the report names them, and the race widens by them
        moved = studies.load_moved(records)
        best, closest = studies.choose(records, max_drop)
        sources = {n: data for n, (_, data) in kept.items()}
        if best is not None and best.number not in sources:
            # measured by an earlier search of a resumed study, or another sharing it: built again, and raced as built
            sources[best.number] = Pipeline(parse_spec(best.spec), calibration=payload.calibration.feedset(),
                                            input_shapes=shapes, seed=seed, threads=1).run(model).model.SerializeToString()

        def racing(count: int) -> None:
            if progress is not None:
                progress(_progress_state(study, base_metric, max_drop, total) | {"racing": count})
        best, race = _race_the_closest(runner, records, moved, best, sources, max_drop, racing)
    except BaseException as exc:
        cut = {t.number: t for t in [asked.get(n) for n in runner.cancel()] + [t for t, _ in waiting]
               + [t for ts in twins.values() for t in ts] if t is not None}
        if isinstance(exc, KeyboardInterrupt):  # queued again on --resume
            finished_numbers = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
            for number, t in cut.items():
                if number not in finished_numbers:
                    t.set_user_attr("error", studies.INTERRUPTED)
                    study.tell(t, state=_fail())
        raise
    finally:
        with contextlib.suppress(Exception):  # never hide the search's own exception
            me.done()
        cluster.shutdown()
    control = jobs.get("control", {})
    if sensitive is None:
        sensitive = []
    best_model, measured = None, None
    if best is not None:
        best_model = onnx.load_from_string(sources[best.number])
        # the model written is the one measured (by its trial or the race), unless a rebuild (by a
        # pass that chooses by timing, here on the driver) came out another and did not race
        measured = (best.model_sha256 is None or "entrants" in race
                    or hashlib.sha256(sources[best.number]).hexdigest() == best.model_sha256)
    front = sorted((r for r in records if r.on_front), key=lambda r: r.latency_ratio)
    report = {
        "schema": "onnxopt.search/1", "study": name, "storage": studies.shown(storage), "cluster": info, "timed_on": timed_on,
        "metric": {"kind": kind, "original": base_metric, "max_drop": max_drop,
                   "measure": agreement_measure(payload.reference) if holdback else None},
        "space": dataclasses.asdict(space), "exact": exact, "exact_passes": exact_report,
        "sensitive_layers": sensitive, "scan_error": jobs.get("scan", {}).get("error"), "control": control,
        "time_limit": {"seconds": max_time, "reached": timed_out} if max_time is not None else None,
        "requeued": requeued,
        "resumed": {"finished_before": kept_before, "requeued": requeued, "new": not stored} if resume else None,
        "trials_asked": trials, "repeats": studies.done_count(study)[1],
        "best": best.as_dict() if best else None, "closest": closest.as_dict() if closest else None,
        "best_decided_by_timing": decided_by_timing(best.spec) if best else None, "best_is_measured_model": measured,
        "race": race or None,
        "load_moved": {node: list(span) for node, span in moved.items()},
        "front": [r.as_dict() for r in front], "trials": [r.as_dict() for r in records],
    }
    from ..measure.timing import machine
    report["machine"] = machine()
    return SearchResult(best_model, best.spec if best else None, front, records, closest, report)


def _as_inputs(model: Any, calibration: Any, evaluation: Any) -> tuple[onnx.ModelProto, FeedSet, FeedSet | None]:
    """The model and data as search() works on them: files are read as the CLI reads them; any
    other type is a one-line usage error, not an AttributeError from deep inside."""
    from ..data.files import load_feeds
    from ..graph.io import load_model
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    elif not isinstance(model, onnx.ModelProto):
        raise UsageError(f"search(model=...): an onnx.ModelProto or a path, not {type(model).__name__}")

    def feeds(data: Any, what: str) -> FeedSet | None:
        if data is None or isinstance(data, FeedSet):
            return data
        if isinstance(data, (str, os.PathLike)):
            return load_feeds(data, model)
        raise UsageError(f"search({what}=...): a FeedSet (onnxopt.data.files.load_feeds) or a path, "
                         f"not {type(data).__name__}")
    if calibration is None:
        raise UsageError("search(calibration=...): calibration data is required (a FeedSet or a path)")
    return model, feeds(calibration, "calibration"), feeds(evaluation, "evaluation")


def _measured_specs(study: Any) -> dict[str, Any]:
    """spec -> a finished trial that measured it (or was told its result), in the study's storage."""
    return {t.user_attrs.get("spec"): t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}


def _taken() -> type[Exception]:
    """What Optuna raises on a change to a trial that is finished already."""
    import optuna
    return optuna.exceptions.UpdateFinishedTrialError


def _fail():
    import optuna
    return optuna.trial.TrialState.FAIL


def _race_the_closest(runner: Any, records: list[studies.TrialRecord], moved: dict[str, tuple[float, float]],
                      best: studies.TrialRecord | None,
                      sources: dict[int, bytes], max_drop: float,
                      racing: Callable[[int], None]) -> tuple[studies.TrialRecord | None, dict]:
    """(the choice, the race for the report): the trials within the budget closest to the fastest
    (studies.contenders) whose models are at hand race (see RACE_MARGIN, wider where a node's load
    moved: studies.race_margin), and the best worst case there is chosen (_race_winner); with fewer than
    two, `best` stands."""
    margin = studies.race_margin(moved, RACE_MARGIN, RACE_WIDEST)
    close = studies.contenders(records, max_drop, margin, RACE_SIZE)
    entrants = [r for r in close if r.number in sources]
    race: dict = {}
    if len(entrants) > 1:
        racing(len(entrants))
        race = _race(runner, entrants, sources)
        best = _race_winner(entrants, race)
    if len(entrants) < len(close):  # measured by an earlier or another search: their models are not here
        race["left_out"] = [r.number for r in close if r.number not in sources]
    if race:
        race["margin"] = margin
    return best, race


def _race(runner: Any, entrants: list[studies.TrialRecord], sources: dict[int, bytes]) -> dict:
    """Time `entrants` again side by side (trial.race, a job on one node under its gate; the
    search's only task left): the race for the report, each entrant's trial and race ratios."""
    runner.start("race", trial_race, [sources[r.number] for r in entrants])
    what, key, race = runner.next()
    assert (what, key) == ("job", "race"), (what, key)
    if "error" not in race:
        race["entrants"] = [{"number": r.number, "spec": r.spec, "trial_ratio": r.latency_ratio, "race_ratio": ratio,
                             "interval": interval}
                            for r, ratio, interval in zip(entrants, race.pop("ratios"), race.pop("intervals"))]
    return race


def _race_winner(entrants: list[studies.TrialRecord], race: dict) -> studies.TrialRecord:
    """The entrant with the best worst case in the race (all are within the budget): the lowest upper
    end of its ratio's 95% interval, then the lowest ratio. The entrants shared the race's rounds, so a wider
    interval is a ratio that moved more with the moment, as int8's does with a loaded AVX2 machine's
    load (its ratio there went from 0.784 in the race to 0.861 beside the recipes, where a float
    model's holds): of two nearly as fast, the one whose speed holds. Where the race failed, the
    trials' own choice (the first entrant)."""
    if "entrants" not in race:
        return entrants[0]
    race["chosen_by"] = "the lowest upper end of the 95% interval of the race ratio"
    winner = min(race["entrants"], key=lambda e: (e["interval"][1], e["race_ratio"]))
    return next(r for r in entrants if r.number == winner["number"])


def _next_rung(study: Any, space: Space, base_metric: float, max_drop: float) -> dict | None:
    """Once every ladder trial so far is measured, the next one Space.bisect asks (at most
    BISECT_STEPS beyond the ladder's own)."""
    rungs = [t for t in study.get_trials(deepcopy=False)
             if t.user_attrs.get("ladder") and t.user_attrs.get("error") != studies.INTERRUPTED]
    if not rungs or any(not t.state.is_finished() for t in rungs):
        return None
    # a failed rung was tried all the same (None): asked again, it would fail again
    tried = {t.params["prune.target-latency"]: (studies.within_budget(base_metric - t.values[1], max_drop)
                                                 if t.state.name == "COMPLETE" else None)
             for t in rungs if "prune.target-latency" in t.params}
    if len(tried) >= len(space.ladder()) + BISECT_STEPS:
        return None
    return space.bisect(tried)


def _progress_state(study: Any, base_metric: float, max_drop: float, total: int) -> dict:
    done = studies.records(study, base_metric)
    best, _ = studies.choose(done, max_drop)
    return {"done": len(done), "total": total, "failed": sum(r.state == "failed" for r in done),
            "best": best.as_dict() if best else None}


def _exact_prefix(model: onnx.ModelProto, payload: Payload, space: Space) -> tuple[list[str], list[dict], onnx.ModelProto]:
    """The exact passes that change this model (in the space's order), their report, and the model
    after them."""
    from ..pipeline.run import Pipeline
    from ..pipeline.spec import parse_spec
    exact: list[str] = []
    report: list[dict] = []
    if not space.exact:
        return exact, report, model
    run = Pipeline(parse_spec(",".join(space.exact)), calibration=payload.calibration.feedset(),
                         input_shapes=payload.shapes, threads=1).run(model)
    for p in run.report.passes:
        report.append({"pass": p.name, "status": p.status})
        if p.status == "applied":
            exact.append(p.name)
    return exact, report, run.model


def ranked_layers(payload: Payload, after_exact: bytes) -> dict:
    """The prunable layers of the model as the trials' prune will see it (after the exact passes),
    most sensitive first: the dry-run scan's (centred) output cosine with only that group pruned by half."""
    from ..pipeline.run import Pipeline
    from ..pipeline.spec import parse_spec
    dry = Pipeline(parse_spec("prune:ratio=0.3"), calibration=payload.calibration.feedset(), input_shapes=payload.shapes,
                   threads=1, dry_run=True).run(onnx.load_from_string(after_exact))
    details = dry.report.passes[-1].details
    layers = {g["group"]: g.get("layers", []) for g in details.get("groups", [])}
    rows = details.get("sensitivity", {}).get("rows", [])
    ratios = details.get("sensitivity", {}).get("ratios", [])
    half = ratios.index(0.5) if 0.5 in ratios else -1
    ranked = sorted(rows, key=lambda r: r["cosine"][half] if r["cosine"][half] is not None else 1.0)
    out: list[str] = []
    for row in ranked:
        names = [label.split("'", 2)[1] for label in layers.get(row["group"], []) if "'" in label]
        if names and spec_safe(names[0]):
            out.append(names[0])
    return {"layers": out}
