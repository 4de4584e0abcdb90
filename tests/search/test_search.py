"""onnxopt search end to end on a local Ray instance and a SQLite study: the chosen spec reproduces
its model with `onnxopt run`, a failing metric fails only its trials, a worker killed mid-trial is
retried, an interrupted search resumes without redoing finished trials, and no trial within the
budget is exit 4 naming the closest."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxopt.data.feeds import FeedSet
from onnxopt.errors import UsageError
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import parse_spec
from onnxopt.search import search
from onnxopt.search.formats import format_front
from onnxopt.search.space import Space
from onnxopt.search.study import LOAD_SPREAD
from onnxopt.search.trial import Payload, Samples
from onnxopt.testing import assert_one_line_error, conv_node, make_model, random_weights, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own imports

# prune and no int8: trials of a second or so
SPACE = Space(exact=("fold-bn", "cleanup"), prune_modes=("off", "ratio"), ratio=(0.2, 0.6), protect=(0.0,),
              quantize_modes=("off",))


def _model() -> onnx.ModelProto:
    # 64 channels: prune:ratio=0.3 keeps 48 of them whether this CPU's channel block is 8 or 16
    c1, i1 = conv_node("x", "a", "c1", 3, 64, seed=0)
    c2, i2 = conv_node("r", "b", "c2", 64, 64, seed=1)
    nodes = [c1, helper.make_node("Relu", ["a"], ["r"]), c2, helper.make_node("Relu", ["b"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1)]
    inits = {**i1, **i2, "fc.w": random_weights(2, 10, 64), "fc.b": random_weights(3, 10)}
    return make_model(nodes, inits, [("x", [1, 3, 16, 16])], [("y", [1, 10])])


def _data(n: int = 40) -> FeedSet:
    return FeedSet({"x": np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)}, 1)


def _run(tmp_path, **kwargs):
    options = dict(trials=4, workers=2, storage=f"sqlite:///{tmp_path / 'study.db'}", space=SPACE,
                   timing_budget=0.2, max_drop=0.5)
    options.update(kwargs)
    return search(_model(), _data(), **options)


def test_the_chosen_spec_reproduces_its_model(tmp_path):
    result = _run(tmp_path)
    assert result.best is not None and len(result.trials) == 4
    assert all(t.state == "complete" for t in result.trials), [t.error for t in result.trials]
    # the recipes come first; no exact pass changes this model (no BN, nothing to clean up)
    assert result.trials[0].spec == "cleanup" and result.trials[1].spec == "prune:ratio=0.3"
    chosen = next(t for t in result.trials if t.spec == result.spec)
    # on the trials' front, unless the race before the choice found it faster than their timings did
    raced = [e["number"] for e in (result.report["race"] or {}).get("entrants", [])]
    assert chosen.drop <= 0.5 and (chosen.on_front or chosen.number in raced)
    assert result.front[0].latency_ratio <= chosen.latency_ratio
    assert [t.latency_ratio for t in result.front] == sorted(t.latency_ratio for t in result.front)
    assert abs(result.report["control"]["control_ratio"] - 1) < 0.5  # the A/A control was measured
    # every ratio was timed on this machine, and the report and the study say which one it is
    from onnxopt.measure.timing import timed_on
    assert result.report["timed_on"] == timed_on() and "onnxruntime" in timed_on()
    # the scan ran beside the recipes (the space spreads ratios by it), and every trial timed alone
    assert sorted(result.report["sensitive_layers"]) == ["c1", "c2"] and result.report["scan_error"] is None
    assert all(0 < t.timing_seconds < t.seconds for t in result.trials)
    # each trial keeps the original's median run it was timed beside (the node's load then); the
    # report names the nodes where that moved by more than a tenth (this machine's load decides which)
    times = [t.original_ms for t in result.trials]
    assert min(times) > 0
    node = result.trials[0].node
    assert result.report["load_moved"] == ({node: [min(times), max(times)]} if max(times) > (1 + LOAD_SPREAD) * min(times)
                                           else {})
    # the sampler knows each trial's overrun of the budget (feasible at <= 0), from its drop
    import optuna
    study = optuna.load_study(study_name=result.report["study"], storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.user_attrs["timed_on"] == timed_on()
    # the study keeps the ranking its protect and spread choices were mapped with, for a resumed search
    assert study.user_attrs["sensitive_layers"] == result.report["sensitive_layers"]
    assert {t.user_attrs["timed_on"] for t in study.trials} == {timed_on()}
    drop_of = {t.spec: t.drop for t in result.trials}  # repeats of a spec too
    assert [round(t.constraints["drop"], 9) for t in study.trials] == \
        [round(drop_of[t.user_attrs["spec"]] - 0.5, 9) for t in study.trials]
    # `onnxopt run --passes SPEC` with the same calibration data builds the same model
    again = Pipeline(parse_spec(result.spec), calibration=_data().take(32), threads=1).run(_model()).model
    assert again.SerializeToString() == result.best.SerializeToString()


def test_a_spec_asked_again_while_it_builds_is_built_once(tmp_path):
    import optuna
    # a space of one spec: with 2 workers the sampler asks it again while its first copy builds
    space = Space(exact=(), prune_modes=("off",), quantize_modes=("off",))
    result = _run(tmp_path, space=space, trials=4)
    # repeats do not count toward --trials: the one spec is the one trial, and the sampler, asking
    # only it, is asked no more than 3 x --trials times again
    assert [(t.spec, t.state) for t in result.trials] == [("cleanup", "complete")]
    study = optuna.load_study(study_name=result.report["study"], storage=f"sqlite:///{tmp_path / 'study.db'}")
    built = [t.number for t in study.trials if "same_as" not in t.user_attrs]
    assert built == [0] and all(t.user_attrs["same_as"] == 0 for t in study.trials[1:])
    assert len(study.trials) == 13 and result.report["repeats"] == 12
    assert all(t.values == study.trials[0].values for t in study.trials)


def test_a_failing_metric_fails_only_its_trials(tmp_path):
    from onnxopt.analysis.cost import model_stats

    def size(model):
        return sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    full = size(_model())

    def metric(model):
        if size(model) < full:
            raise ValueError("metric refuses pruned models")
        return 1.0
    result = _run(tmp_path, metric=metric, trials=5)
    failed = [t for t in result.trials if t.state == "failed"]
    assert "prune:ratio=0.3" in [t.spec for t in failed]  # the recipe prunes on every CPU
    assert all("ValueError: metric refuses pruned models" in t.error for t in failed)
    # the search went on after it: every trial counted, the others measured, none of them pruned
    completed = [t for t in result.trials if t.state == "complete"]
    # (a spec asked again is told its result, not counted: a sampler that learns that only the
    # unpruned model passes asks it again)
    assert len(result.trials) + result.report["repeats"] >= 5 and completed and result.best is not None
    assert {t.params for t in completed} == {model_stats(_model(), {"x": (1, 3, 16, 16)}).params}


def test_a_trial_timed_on_another_machine_than_the_search_fails_with_the_reason(tmp_path, monkeypatch):
    # as if a node of another CPU had joined the cluster after the search asked its nodes: the search
    # times on one machine, and this machine's trials report another
    from onnxopt.search import cluster
    other = "Another CPU (x86-avx2: avx2), onnxruntime 0.0"
    monkeypatch.setattr(cluster, "timed_on", lambda joined: other)
    result = _run(tmp_path, trials=2)
    assert result.best is None and result.report["timed_on"] == other
    assert len(result.trials) == 2 and all(t.state == "failed" for t in result.trials), result.trials
    assert all(f"where the search times on {other}: latency ratios of two machines do not compare" in t.error
               for t in result.trials), [t.error for t in result.trials]
    assert "control_ratio" not in result.report["control"]  # nor does the A/A control timed there count


def test_the_a_a_control_passes_to_the_next_trial_when_its_first_carrier_fails(tmp_path):
    def size(model):
        return sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    full = size(_model())
    calls = [0]

    def metric(model):  # the driver's call on the original passes; the workers' copies start after it
        calls[0] += 1
        if calls[0] > 1 and size(model) == full:
            raise ValueError("metric refuses unpruned models")
        return 1.0
    result = _run(tmp_path, metric=metric, trials=4)
    assert result.trials[0].spec == "cleanup" and result.trials[0].state == "failed", result.trials[0]
    # the first trial built was to time the original against itself; it failed first, so a job did
    assert abs(result.report["control"]["control_ratio"] - 1) < 0.5, result.report["control"]


def test_the_choice_is_the_fastest_of_the_close_trials_timed_again_side_by_side(tmp_path, monkeypatch):
    import onnxopt.search.run as search_run
    from onnxopt.search.formats import format_front
    from onnxopt.search.trial import race as real_race

    def reversed_race(payload, candidates):  # the race finds the trials' order the other way round
        out = real_race(payload, candidates)
        ratios = [1.0 - 0.01 * i for i in range(len(candidates))]
        return out | {"ratios": ratios, "intervals": [[r - 0.002, r + 0.002] for r in ratios]}
    monkeypatch.setattr(search_run, "RACE_MARGIN", 10.0)  # every trial within the budget races
    monkeypatch.setattr(search_run, "trial_race", reversed_race)
    result = _run(tmp_path, trials=4)
    entrants = result.report["race"]["entrants"]
    done = sorted((t for t in result.trials if t.state == "complete"), key=lambda t: t.latency_ratio)
    assert [e["number"] for e in entrants] == [t.number for t in done[:4]] and len(entrants) > 1
    assert result.spec == entrants[-1]["spec"] != done[0].spec  # the race's fastest, not the trials'
    again = Pipeline(parse_spec(result.spec), calibration=_data().take(32), threads=1).run(_model()).model
    assert again.SerializeToString() == result.best.SerializeToString() and result.report["best_is_measured_model"]
    # the real race ran (the fake only reorders it): rounds pooled over its sets
    assert result.report["race"]["rounds"] >= 15
    text = format_front(result)
    assert f"in its trial, x{entrants[-1]['race_ratio']:.3f} in the race" in text
    assert "(trial -> race [95% interval]; chosen: the lowest upper end)" in text
    assert f"x{entrants[-1]['race_ratio']:.3f} [{entrants[-1]['race_ratio'] - 0.002:.3f}-" in text


def test_of_two_nearly_as_fast_in_the_race_the_one_whose_ratio_holds_is_chosen():
    from onnxopt.search.run import _race_winner
    from onnxopt.search.study import TrialRecord
    int8 = TrialRecord(16, "fold-bn,quantize", "complete", 0.99, 0.0, 0.712, 1000)
    steady = TrialRecord(10, "fold-bn,prune:ratio=0.3", "complete", 0.99, 0.0, 0.760, 1000)
    fast = TrialRecord(3, "fold-bn,prune:ratio=0.5", "complete", 0.99, 0.0, 0.70, 1000)

    def race(*rows):
        return {"entrants": [{"number": n, "race_ratio": r, "interval": [lo, hi]} for n, r, lo, hi in rows]}
    # the digits MobileNetV2 on the AVX2 EPYC: int8 0.784 [0.761-0.805] beside float 0.787 [0.769-0.798]
    close = race((16, 0.784, 0.761, 0.805), (10, 0.787, 0.769, 0.798))
    assert _race_winner([int8, steady], close) is steady
    assert close["chosen_by"].startswith("the lowest upper end")
    # a wide interval that still lies below the other's wins: the rule keeps what is surely faster
    assert _race_winner([int8, steady], race((16, 0.70, 0.66, 0.74), (10, 0.787, 0.769, 0.798))) is int8
    # equal upper ends: the lower ratio
    assert _race_winner([fast, steady], race((3, 0.70, 0.69, 0.71), (10, 0.705, 0.70, 0.71))) is fast
    assert _race_winner([steady, int8], {"error": "no quiet node"}) is steady  # a failed race: the trials' own


def test_where_a_nodes_load_moved_the_race_takes_trials_as_far_from_the_fastest_as_it_moved(tmp_path, monkeypatch):
    import onnxopt.search.run as search_run
    import onnxopt.search.study as studies
    from onnxopt.search.formats import format_front
    # the original ran 11 times slower in one trial than in another: every trial within the budget may be the fastest
    monkeypatch.setattr(studies, "load_moved", lambda trials: {"n": (1.0, 11.0)})
    monkeypatch.setattr(search_run, "RACE_WIDEST", 20.0)
    result = _run(tmp_path, trials=4)
    race = result.report["race"]
    within = sorted((t for t in result.trials if t.state == "complete" and t.drop <= 0.5),
                    key=lambda t: (t.latency_ratio, -t.metric, t.size))
    assert race["margin"] == 10.0 and len(within) > 1
    assert [e["number"] for e in race["entrants"]] == [t.number for t in within[:4]]
    assert "trials within the budget and 1000% of the fastest" in format_front(result)
    assert result.report["load_moved"] == {"n": [1.0, 11.0]}


def test_a_trial_another_search_took_for_gone_holds_no_place_in_the_race(tmp_path, monkeypatch):
    import optuna

    import onnxopt.search.cluster as cluster
    import onnxopt.search.run as search_run
    url = f"sqlite:///{tmp_path / 'study.db'}"
    real_next, taken = cluster.Runner.next, []

    def next_after_another_search_failed_one(self, timeout=None):
        # the first measured trial: another search sharing the study took this one for gone and failed
        # it just before its result came back; it would have been the fastest of all
        got = real_next(self, timeout)
        if got and got[0] == "trial" and "error" not in got[2] and not taken:
            storage = optuna.storages.get_storage(url)
            (summary,) = optuna.get_all_study_summaries(storage)
            trial_id = storage.get_trial_id_from_study_id_trial_number(summary._study_id, got[1])
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            taken.append(got[1])
            got = (got[0], got[1], got[2] | {"latency_ratio": 0.01})
        return got
    monkeypatch.setattr(cluster.Runner, "next", next_after_another_search_failed_one)
    monkeypatch.setattr(search_run, "RACE_MARGIN", 10.0)  # every trial within the budget may race
    monkeypatch.setattr(search_run, "RACE_SIZE", 2)
    # every trial within the budget: the taken one would race, and at least two others can
    result = _run(tmp_path, trials=5, storage=url, metric=lambda model: 1.0)
    race = result.report["race"]
    assert taken and next(t for t in result.trials if t.number == taken[0]).state == "failed"
    # both places went to trials this search told: none left out, none of them the taken one
    assert "left_out" not in race and len(race["entrants"]) == 2, race
    assert taken[0] not in [e["number"] for e in race["entrants"]]


def test_a_failed_race_leaves_the_choice_to_the_trials_timings(tmp_path, monkeypatch):
    import onnxopt.search.run as search_run
    from onnxopt.search.formats import format_front

    def broken_race(payload, candidates):
        raise RuntimeError("no quiet node")
    monkeypatch.setattr(search_run, "RACE_MARGIN", 10.0)
    monkeypatch.setattr(search_run, "trial_race", broken_race)
    result = _run(tmp_path, trials=4)
    fastest = min((t for t in result.trials if t.state == "complete" and t.drop <= 0.5), key=lambda t: t.latency_ratio)
    assert result.spec == fastest.spec and "no quiet node" in result.report["race"]["error"]
    assert "race of the closest trials failed" in format_front(result)


def test_a_race_times_every_candidate_against_the_original():
    from onnxopt.search.trial import race
    payload = Payload(_model().SerializeToString(), {"x": (1, 3, 16, 16)}, Samples.of(_data()), "agreement",
                      timing_budget=0.2)
    ran = race(payload, [payload.model, payload.model])
    assert len(ran["ratios"]) == 2 and all(abs(r - 1) < 0.25 for r in ran["ratios"]), ran  # A/A pairs
    assert len(ran["intervals"]) == 2 and ran["rounds"] >= 15


def test_a_metric_failing_on_the_original_stops_the_search_before_any_trial(tmp_path):
    import ray

    def metric(model):
        raise ValueError("metric cannot read this model")
    # the original's metric runs beside Ray's start: its error is the search's, and Ray is left stopped
    with pytest.raises(ValueError, match="metric cannot read this model"):
        _run(tmp_path, metric=metric)
    assert not ray.is_initialized()
    # and no study is left in the storage: the same command, mended, starts without --resume
    import optuna
    assert optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'study.db'}") == []


@pytest.mark.parametrize("too_small", ["scores low", "raises"])
def test_after_the_ladder_the_search_halves_the_gap_where_the_budget_breaks(tmp_path, too_small):
    import optuna
    full = sum(int(np.prod(t.dims)) for t in _model().graph.initializer)

    def kept(model):  # the share of the weights a target kept: the fast rungs lose too much, or fail
        share = sum(int(np.prod(t.dims)) for t in model.graph.initializer) / full
        if share < 0.7 and too_small == "raises":
            raise ValueError("too small")
        return share
    space = Space(exact=(), prune_modes=("target-latency",), criteria=("data",), protect=(0.0,), quantize_modes=("off",))
    _run(tmp_path, metric=kept, space=space, trials=7, workers=1, max_drop=0.3)
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'study.db'}")[0]
                              .study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    rungs = [t for t in study.trials if t.user_attrs.get("ladder")]
    targets = [t.params["prune.target-latency"] for t in rungs]
    # one worker: the ladder, then targets halfway across the gap the rungs before them left (a
    # failed rung counts as tried, never asked again), two of them at most: the sampler has the rest
    assert targets[:3] == [0.5, 0.65, 0.8] and len(set(targets)) == len(targets) <= 5
    assert [t.number for t in rungs] == list(range(len(rungs))) and len(study.trials) >= 7
    for i in range(3, 6):
        tried = {t.params["prune.target-latency"]: (t.values[1] >= 0.7 - 1e-12 if t.state.name == "COMPLETE" else None)
                 for t in rungs[:i]}
        expected = space.bisect(tried) if i < 5 else None
        assert (rungs[i].params["prune.target-latency"] if i < len(rungs) else None) == \
            (expected["prune.target-latency"] if expected else None)


def test_a_worker_killed_mid_trial_is_retried(tmp_path):
    driver, marker = os.getpid(), tmp_path / "killed"

    def metric(model):
        if os.getpid() != driver and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies in the middle of a trial
        return 1.0
    result = _run(tmp_path, metric=metric, trials=3)
    assert marker.exists()
    assert [t.state for t in result.trials] == ["complete"] * 3, [t.error for t in result.trials]


def test_an_interrupted_search_resumes_without_redoing_finished_trials(tmp_path):
    calls = tmp_path / "calls"

    def metric(model):
        with open(calls, "a") as f:
            f.write(f"{len(model.graph.node)}\n")
        return 1.0

    def interrupt(state):
        if state["done"] >= 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, metric=metric, trials=6, progress=interrupt)
    first = len(calls.read_text().split())
    import optuna
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'study.db'}")[0]
                              .study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    finished = [t for t in study.trials if t.state.name == "COMPLETE" and "same_as" not in t.user_attrs]
    interrupted = [t for t in study.trials if t.user_attrs.get("error") == "interrupted"]
    failed_own = [t for t in study.trials if t.state.name == "FAIL" and t.user_attrs.get("error") != "interrupted"]
    assert len(finished) >= 2
    # as an earlier scan left it (another onnxopt may rank otherwise): the resumed search maps with it
    study.set_user_attr("sensitive_layers", ["c2"])
    result = _run(tmp_path, metric=metric, trials=6, resume=True)
    assert result.report["sensitive_layers"] == ["c2"]
    assert result.report["requeued"] == len(interrupted)
    # the user is told what --resume met: the trials kept and those queued again
    done = len(finished) + len(failed_own)  # what counts toward --trials: repeats of a spec do not
    assert result.report["resumed"] == {"finished_before": done, "requeued": len(interrupted), "new": False}
    assert (f"resumed: {done} trial(s) done earlier, not redone; {len(interrupted)} interrupted one(s) queued again"
            in format_front(result))
    assert len(result.trials) == 6 and all(t.state == "complete" for t in result.trials)
    # the resumed run measured only what was missing (plus the original's metric once)
    new_calls = len(calls.read_text().split()) - first
    assert new_calls <= 1 + (6 - len(finished)), (new_calls, len(finished))
    with pytest.raises(Exception, match="--resume continues it"):
        _run(tmp_path, metric=metric, trials=6)
    # --resume where nothing is stored (a mistyped --storage, say) starts anew, and says so
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    anew = _run(fresh, metric=metric, trials=1, resume=True)
    assert anew.report["resumed"] == {"finished_before": 0, "requeued": 0, "new": True}
    assert "held no search of this model, space and metric; this one started anew" in format_front(anew)


def test_a_time_limit_stops_asking_and_resume_goes_on(tmp_path):
    # a limit passed before the first trial still lets the search run until one trial is done: a
    # search that measured nothing could choose nothing
    cut = _run(tmp_path, trials=5, workers=1, max_time=1e-3)
    assert cut.report["time_limit"] == {"seconds": 1e-3, "reached": True}
    assert len(cut.trials) == 1 and cut.trials[0].state == "complete" and cut.best is not None
    assert ("time limit: no trial was asked once 0.001 s had passed and a trial was done; 1 of the 5 trials "
            "asked for are done, and --resume continues the study") in format_front(cut)
    # a search resumed past its limit with a trial done asks none: it chooses from what the study holds
    again = _run(tmp_path, trials=5, workers=1, resume=True, max_time=1e-3)
    assert len(again.trials) == 1 and again.report["time_limit"]["reached"] and again.best is not None
    rest = _run(tmp_path, trials=5, workers=1, resume=True, max_time=600)
    assert rest.report["time_limit"] == {"seconds": 600, "reached": False}
    assert len(rest.trials) == 5 and rest.report["resumed"]["finished_before"] == 1
    assert "time limit" not in format_front(rest)
    with pytest.raises(UsageError, match="--max-time"):
        _run(tmp_path, max_time=0)


def test_past_the_time_limit_trials_that_waited_for_the_scan_start_only_to_fill_the_workers(tmp_path):
    # every trial of this space prunes and protects a layer (no prune-off recipe), so all wait for the
    # sensitivity scan: the search asks the four before the scan is back, and past the limit starts
    # two (its workers) of them
    import optuna
    space = dataclasses.replace(SPACE, protect=(0.5,), prune_modes=("ratio",))
    cut = _run(tmp_path, trials=4, workers=2, space=space, max_time=1e-3)
    assert cut.report["time_limit"]["reached"] and len(cut.trials) == 2
    assert all(t.state == "complete" for t in cut.trials)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name=cut.report["study"], storage=storage)
    assert sum(t.user_attrs.get("error") == "interrupted" for t in study.trials) == 2
    rest = _run(tmp_path, trials=4, workers=2, space=space, resume=True)
    assert rest.report["requeued"] == 2 and len(rest.trials) == 4


def test_the_cli_writes_the_choice_report_and_plot(capsys, tmp_path):
    model_path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(_model(), model_path)
    np.savez(calib, x=_data().arrays["x"])
    space = tmp_path / "space.yaml"
    space.write_text("exact: [fold-bn, cleanup]\nprune: {modes: [off, ratio], protect: [0]}\nquantize: {modes: [off]}\n")
    out, report, plot = tmp_path / "best.onnx", tmp_path / "search.json", tmp_path / "front.png"
    code, text, err = run_cli(capsys, "search", model_path, "--calib", calib, "--trials", "3", "--workers", "2",
                              "--storage", f"sqlite:///{tmp_path / 's.db'}", "--space", space, "--max-drop", "0.5",
                              "--timing-budget", "0.2", "-o", out, "--report", report, "--plot", plot)
    assert code == 0, err
    assert "Pareto front" in text and "chosen:" in text and "reproduce with: onnxopt run MODEL --passes" in text
    doc = json.loads(report.read_text())
    assert doc["schema"] == "onnxopt.search/1" and len(doc["trials"]) == 3 and doc["best"]["spec"]
    assert doc["metric"]["kind"] == "agreement" and doc["machine"]["cpu_kind"]
    assert doc["metric"]["measure"] == "top-1 agreement" and "metric: agreement (top-1 agreement) 100.00" in text
    assert onnx.load(str(out)).graph.node and plot.read_bytes()[:4] == b"\x89PNG"


def test_the_cli_calibrates_on_an_image_folder_and_says_how_to_reproduce_with_it(capsys, tmp_path):
    from PIL import Image
    model_path, images = tmp_path / "m.onnx", tmp_path / "imgs"
    onnx.save(_model(), model_path)
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(25):  # agreement holds back a fifth and needs 20 runs
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    space = tmp_path / "space.yaml"
    space.write_text("exact: [cleanup]\nprune: {modes: [off]}\nquantize: {modes: [off]}\n")
    spec = "resize=16,size=16,scale=255"
    code, text, err = run_cli(capsys, "search", model_path, "--calib", images, "--preprocess", spec, "--trials", "1",
                              "--space", space, "--storage", f"sqlite:///{tmp_path / 's.db'}", "--timing-budget", "0.2")
    assert code == 0, err
    assert f"reproduce with: onnxopt run MODEL --passes cleanup --calib CALIB --preprocess {spec}" in text


def test_no_trial_within_the_budget_names_the_closest(tmp_path):
    def size(model):
        return sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    full = size(_model())

    def metric(model):  # every pruned model loses a tenth
        return 1.0 if size(model) == full else 0.9
    space = Space(exact=(), prune_modes=("ratio",), ratio=(0.25, 0.6), protect=(0.0,), quantize_modes=("off",))
    result = _run(tmp_path, metric=metric, trials=3, space=space, max_drop=0.01)
    assert result.best is None and result.spec is None
    assert result.closest is not None and abs(result.closest.drop - 0.1) < 1e-9
    assert result.closest.spec.startswith("prune:ratio=")


def test_on_the_cli_no_trial_within_the_budget_is_exit_4(capsys, tmp_path, monkeypatch):
    from onnxopt.search import run as search_run
    from onnxopt.search.study import TrialRecord
    closest = TrialRecord(1, "prune:ratio=0.5", "complete", 0.8, 0.2, 0.61, 1000)

    def no_luck(model, calibration, **kwargs):
        report = {"study": "s", "cluster": {"nodes": 1, "cpus": 1}, "timed_on": "test", "control": {},
                  "metric": {"kind": "agreement", "original": 1.0, "max_drop": kwargs["max_drop"]}}
        return search_run.SearchResult(None, None, [closest], [closest], closest, report)
    monkeypatch.setattr(search_run, "search", no_luck)
    model_path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(_model(), model_path)
    np.savez(calib, x=_data().arrays["x"])
    got = run_cli(capsys, "search", model_path, "--calib", calib, "--max-drop", "0.01", "-o", tmp_path / "best.onnx")
    assert_one_line_error(*got, 4, "no trial within --max-drop 0.01", "closest: prune:ratio=0.5 (drop 20.00 points")
    assert not Path(tmp_path / "best.onnx").exists()


def test_eval_on_a_model_without_a_classes_output_is_a_one_line_error_before_any_trial(capsys, tmp_path):
    # top-1 over a feature map's argmax would be a number that means nothing; the search refuses it
    model = _model()
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, None))
    model_path, labelled, calib = tmp_path / "m.onnx", tmp_path / "val.npz", tmp_path / "calib.npz"
    onnx.save(model, model_path)
    np.savez(calib, x=_data().arrays["x"])
    np.savez(labelled, x=_data(12).arrays["x"], labels=np.arange(12) % 10)
    got = run_cli(capsys, "search", model_path, "--calib", calib, "--eval", labelled, "--trials", "2",
                  "--storage", f"sqlite:///{tmp_path / 's.db'}", "-o", tmp_path / "best.onnx")
    assert_one_line_error(*got, 3, "--eval", "top-1 needs an output shaped [N, classes]; the model gives s [1, 64, 16, 16]")
    assert not (tmp_path / "best.onnx").exists()


def test_in_python_the_model_and_data_may_be_files_and_other_types_are_a_usage_error(tmp_path):
    model_path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(_model(), model_path)
    np.savez(calib, x=_data().arrays["x"])
    result = search(str(model_path), calib, trials=1, workers=1, storage=f"sqlite:///{tmp_path / 's.db'}",
                    space=SPACE, timing_budget=0.2, max_drop=0.5)
    assert result.best is not None and result.trials[0].state == "complete"
    with pytest.raises(UsageError, match=r"search\(calibration=...\): a FeedSet .* or a path, not dict"):
        search(_model(), {"x": _data().arrays["x"]}, storage=f"sqlite:///{tmp_path / 't.db'}")
    with pytest.raises(UsageError, match=r"search\(model=...\): an onnx.ModelProto or a path, not bytes"):
        search(_model().SerializeToString(), _data(), storage=f"sqlite:///{tmp_path / 't.db'}")


def test_the_progress_bar_counts_trials_and_the_time_left(capsys, tmp_path, monkeypatch):
    from onnxopt.search import run as search_run
    from onnxopt.search.study import TrialRecord
    done = TrialRecord(0, "cleanup", "complete", 1.0, 0.0, 0.95, 1000)

    def two_moments(model, calibration, **kwargs):
        kwargs["progress"]({"done": 1, "total": 4, "failed": 0, "best": None})
        kwargs["progress"]({"done": 2, "total": 4, "failed": 1, "best": {"latency_ratio": 0.95, "drop": 0.0}})
        report = {"study": "s", "cluster": {"nodes": 1, "cpus": 1}, "timed_on": "test", "control": {},
                  "metric": {"kind": "agreement", "original": 1.0, "max_drop": kwargs["max_drop"]}}
        return search_run.SearchResult(_model(), "cleanup", [done], [done], None, report)
    monkeypatch.setattr(search_run, "search", two_moments)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # pytest's capture stands in for a terminal
    model_path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(_model(), model_path)
    np.savez(calib, x=_data().arrays["x"])
    code, _, err = run_cli(capsys, "search", model_path, "--calib", calib, "--max-time", "10m")
    assert code == 0, err
    assert "1/4 trials, 0 failed; none within budget yet; 10 min left" in err
    assert "2/4 trials, 1 failed; fastest within budget x0.950 (drop 0.00); 10 min left" in err


def test_without_the_search_extra_the_error_says_what_to_install(monkeypatch):
    import sys

    from onnxopt.errors import UsageError
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if `pip install onnxopt` without [search]
    with pytest.raises(UsageError, match=r"onnxopt search needs optuna: pip install 'onnxopt\[search\]'"):
        search(_model(), _data())


def test_a_cluster_address_nothing_answers_at_is_a_one_line_error_in_seconds(capsys, tmp_path):
    import socket
    import time
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model_path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(_model(), model_path)
    np.savez(calib, x=_data().arrays["x"])
    started = time.perf_counter()
    got = run_cli(capsys, "search", model_path, "--calib", calib, "--ray", f"127.0.0.1:{port}",
                  "--storage", f"sqlite:///{tmp_path}/s.db")
    assert_one_line_error(*got, 2, f"--ray 127.0.0.1:{port}: nothing answers there")
    assert time.perf_counter() - started < 30  # Ray alone retries for minutes
    assert not (tmp_path / "s.db").exists()  # no study left behind for a search that never started


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", None], ids=["a web server", "a silent one"])
def test_a_cluster_address_where_something_else_answers_is_a_one_line_error(capsys, tmp_path, monkeypatch, reply):
    import socket
    import threading

    from onnxopt.search import cluster
    monkeypatch.setattr(cluster, "PROBE_SECONDS", 0.5)
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held = []

    def answer():  # as the dashboard's port or a web server would: not gRPC
        conn, _ = server.accept()
        held.append(conn)
        conn.recv(64)
        if reply is not None:
            conn.sendall(reply)
    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    model_path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(_model(), model_path)
    np.savez(calib, x=_data().arrays["x"])
    try:
        got = run_cli(capsys, "search", model_path, "--calib", calib, "--ray", f"127.0.0.1:{port}",
                      "--storage", f"sqlite:///{tmp_path}/s.db")
    finally:
        answering.join(timeout=5)
        server.close()
        for conn in held:
            conn.close()
    assert_one_line_error(*got, 2, f"--ray 127.0.0.1:{port}: something answers there, but not as a Ray head does")


@pytest.mark.parametrize("address, message", [("127.0.0.1:99999", "port 99999 is out of range"),
                                              ("a..b:6379", "nothing answers there")])
def test_a_malformed_cluster_address_is_a_one_line_error(address, message):
    from onnxopt.errors import UsageError
    from onnxopt.search import cluster
    with pytest.raises(UsageError, match=rf"--ray {address}: {message}"):
        cluster._reachable(address)


def test_a_local_instance_stops_its_idle_autoscaler_monitor_before_ray_stops_the_gcs(monkeypatch):
    """Ray stops the GCS before the monitor, whose SIGTERM handler then waits on the gone GCS for the
    second Ray allows it (1.0 of a 1.3 s shutdown): killed first, nothing waits."""
    from ray._private import node as ray_node
    from ray._private import worker as ray_worker
    from ray._private.ray_constants import PROCESS_TYPE_GCS_SERVER, PROCESS_TYPE_MONITOR

    from onnxopt.search import cluster
    stopped: list[str] = []  # process types, in the order Ray's node stops them
    stop = ray_node.Node._kill_process_impl

    def watching(self, process_type, *args, **kwargs):
        stopped.append(process_type)
        return stop(self, process_type, *args, **kwargs)
    monkeypatch.setattr(ray_node.Node, "_kill_process_impl", watching)
    cluster.connect(None, 1)
    try:
        monitors = ray_worker._global_node.all_processes.get(PROCESS_TYPE_MONITOR, [])
        assert [m.process.poll() for m in monitors] == [None]  # a local instance has one, running
    finally:
        cluster.shutdown()
    assert stopped.index(PROCESS_TYPE_MONITOR) < stopped.index(PROCESS_TYPE_GCS_SERVER), stopped
    assert [m.process.poll() for m in monitors] == [-signal.SIGKILL]


def test_agreement_on_an_output_that_is_not_classes_is_the_cosine_of_what_the_input_decides():
    from onnxopt.runtime.fidelity import agreement_measure, compare
    from onnxopt.runtime.sessions import run_model
    from onnxopt.search.trial import score

    def conv(scale: float, bias: float) -> onnx.ModelProto:  # a feature map over a large common bias
        node, inits = conv_node("x", "y", "c", 3, 4, seed=0)
        inits = {"c.w": inits["c.w"] * np.float32(scale), "c.b": np.full(4, bias, np.float32)}
        return make_model([node], inits, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])])
    original = conv(1.0, 20.0)
    held = Samples.of(FeedSet({"x": np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)}, 1))
    payload = Payload(original.SerializeToString(), {"x": (1, 3, 8, 8)}, held, "agreement", holdback=held)
    payload.reference = run_model(original, list(held.feedset()), optimization="all")
    assert score(payload, original) > 1 - 1e-9 and agreement_measure(payload.reference) == "centred output cosine"
    # the bias alone: a plain cosine above 0.99, and nothing of what the input decides
    bias_only = conv(0.0, 20.0)
    assert compare(payload.reference, run_model(bias_only, list(held.feedset()), optimization="all")).cosine > 0.99
    assert abs(score(payload, bias_only)) < 1e-9
    assert 0.5 < score(payload, conv(0.5, 20.0)) < 0.99  # half the input's part, the common part moved
