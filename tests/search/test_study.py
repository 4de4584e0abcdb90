"""The study around the trials: an interrupted recipe is queued again as the recipe it was, the
sensitivity scan runs whenever the space uses it, and --resume refuses a storage whose search of
this model had another space instead of silently starting over."""
from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
from onnx import helper

from onnxopt.data.feeds import FeedSet
from onnxopt.errors import UsageError
from onnxopt.search import study as studies
from onnxopt.search.run import ranked_layers
from onnxopt.search.space import Space, uses_ranking
from onnxopt.search.trial import Payload, Samples
from onnxopt.testing import conv_node, make_model


def test_an_interrupted_recipe_is_queued_again_as_a_recipe():
    study = optuna.create_study(directions=["minimize", "maximize"])
    params = Space().recipes()[2]  # quantize as the README writes it
    study.enqueue_trial(params, user_attrs={"recipe": True})
    trial = study.ask()
    Space().suggest(trial)  # asked, never told: the search was interrupted while it ran
    assert studies.recover_unfinished(study) == 1
    again = study.ask()
    assert again.user_attrs.get("recipe") is True and again.user_attrs.get("resumed_from") == trial.number
    assert Space().suggest(again)["quantize.speed"] is True  # what makes a recipe trial the recipe


def test_a_resumed_study_leaves_the_running_trials_of_a_live_search_to_it():
    import time
    study = optuna.create_study(directions=["minimize", "maximize"])
    alive, gone = studies.Driver(study), studies.Driver(study)
    now = time.time()
    alive.beat(now - 10)                           # heard from 10 s ago
    gone.beat(now - studies.STALE_SECONDS - 1)     # not heard from for longer than a search may be silent
    mine, theirs, nobodys = study.ask(), study.ask(), study.ask()
    alive.asked(mine)
    gone.asked(theirs)
    # `nobodys` was asked just now and not named yet (a search names its trial right after asking it)
    assert studies.live_drivers(study, now) == {alive.name}
    assert studies.recover_unfinished(study, now) == 1

    def states():
        return {t.number: (t.state.name, t.user_attrs.get("error")) for t in study.trials}
    assert states()[mine.number] == states()[nobodys.number] == ("RUNNING", None)
    assert states()[theirs.number] == ("FAIL", studies.INTERRUPTED)
    # minutes later a trial nobody named is nobody's: queued again, the live search's still its own
    later = now + studies.STALE_SECONDS + 5
    alive.beat(later - 10)
    assert studies.recover_unfinished(study, later) == 1
    assert states()[nobodys.number] == ("FAIL", studies.INTERRUPTED) and states()[mine.number] == ("RUNNING", None)
    assert sorted(t.user_attrs["resumed_from"] for t in study.trials if t.state.name == "WAITING") == \
        [theirs.number, nobodys.number]
    alive.done()  # a search that ended says so: its trials are anyone's at once
    assert studies.live_drivers(study, later) == set()


def test_trials_other_live_searches_build_count_toward_the_trials_asked():
    import time
    study = optuna.create_study(directions=["minimize", "maximize"])
    me, other, gone = studies.Driver(study), studies.Driver(study), studies.Driver(study)
    now = time.time()
    me.beat(now)
    other.beat(now - 10)
    gone.beat(now - studies.STALE_SECONDS - 1)
    assert studies.building_elsewhere(study, me.name, now) == 0
    for driver, count in ((me, 2), (other, 3), (gone, 1)):
        for _ in range(count):
            driver.asked(study.ask())
    study.ask()  # not named yet: nobody's to count
    # the live other search's three: not this search's own two, nor those of a search gone
    assert studies.building_elsewhere(study, me.name, now) == 3
    finished = [t for t in study.trials if t.user_attrs.get(studies.DRIVER) == other.name][0]
    study.tell(finished.number, [0.5, 1.0])
    assert studies.building_elsewhere(study, me.name, now) == 2
    assert studies.building_elsewhere(study, other.name, now) == 2  # the other search sees this one's two
    other.done()
    assert studies.building_elsewhere(study, me.name, now) == 0


def test_the_sensitivity_scan_runs_when_only_spread_uses_it():
    assert not Space(protect=(0.0,), spread=(0.0,)).uses_ranking
    assert Space(protect=(0.0,), spread=(0.0, 0.5)).uses_ranking
    assert not Space(prune_modes=("off",), spread=(0.5,)).uses_ranking
    assert uses_ranking({"prune": "ratio", "prune.ratio": 0.3, "prune.protect": 0.0, "prune.spread": 0.5})
    assert uses_ranking({"prune": "target-latency", "prune.target-latency": 0.6, "prune.protect": 0.25})
    assert not uses_ranking({"prune": "ratio", "prune.ratio": 0.3, "prune.protect": 0.0, "prune.spread": 0.0})
    assert not uses_ranking({"prune": "off", "quantize": "on"})
    c1, i1 = conv_node("x", "a", "c1", 3, 16, seed=0)
    c2, i2 = conv_node("r", "y", "c2", 16, 16, seed=1)
    model = make_model([c1, helper.make_node("Relu", ["a"], ["r"]), c2], {**i1, **i2}, [("x", [1, 3, 8, 8])],
                       [("y", [1, 16, 8, 8])])
    data = FeedSet({"x": np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)}, 1)
    payload = Payload(model.SerializeToString(), {"x": (1, 3, 8, 8)}, Samples.of(data), "agreement")
    assert ranked_layers(payload, model.SerializeToString()) == {"layers": ["c1"]}  # c2 feeds the output


def test_resume_refuses_a_search_of_this_model_with_another_space(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    old, new = Space(), dataclasses.replace(Space(), spread=(0.0,))
    studies.open_study(f"onnxopt-abc123-{old.fingerprint}-top-1", storage, resume=False, seed=0, startup=4)
    with pytest.raises(UsageError, match="another space"):
        studies.open_study(f"onnxopt-abc123-{new.fingerprint}-top-1", storage, resume=True, seed=0, startup=4)
    # without --resume it is a new search; another model's searches are not in the way
    studies.open_study(f"onnxopt-abc123-{new.fingerprint}-top-1", storage, resume=False, seed=0, startup=4)
    studies.open_study(f"onnxopt-def456-{new.fingerprint}-top-1", storage, resume=True, seed=0, startup=4)


def test_resume_refuses_a_search_of_this_model_scored_by_another_metric(tmp_path):
    # an earlier onnxopt's agreement study (plain cosines) is not continued with centred ones
    storage, fingerprint = f"sqlite:///{tmp_path / 'study.db'}", Space().fingerprint
    studies.open_study(f"onnxopt-abc123-{fingerprint}-agreement", storage, resume=False, seed=0, startup=4)
    with pytest.raises(UsageError) as refused:
        studies.open_study(f"onnxopt-abc123-{fingerprint}-agreement.centred", storage, resume=True, seed=0, startup=4)
    message = str(refused.value)
    assert "scored by agreement (onnxopt-abc123-" in message and "this one scores by agreement.centred" in message
    assert "plain output cosine" in message and "\n" not in message
    studies.open_study(f"onnxopt-abc123-{fingerprint}-agreement.centred", storage, resume=False, seed=0, startup=4)
    studies.open_study(f"onnxopt-abc123-{fingerprint}-agreement.centred", storage, resume=True, seed=0, startup=4)
    # a search with --eval resumed without it (or with a metric of one's own): refused too, and said so
    other = f"sqlite:///{tmp_path / 'other.db'}"
    studies.open_study(f"onnxopt-abc123-{fingerprint}-top-1", other, resume=False, seed=0, startup=4)
    with pytest.raises(UsageError) as refused:
        studies.open_study(f"onnxopt-abc123-{fingerprint}-metric", other, resume=True, seed=0, startup=4)
    assert "scored by top-1" in str(refused.value) and "this one scores by metric" in str(refused.value)
    assert "plain output cosine" not in str(refused.value)


def test_a_job_names_the_node_it_ran_on(monkeypatch):
    import ray

    from onnxopt.search import cluster
    from onnxopt.search.trial import NoGate

    class Gate(NoGate):
        def quiet(self):
            return NoGate().quiet()
    monkeypatch.setattr(cluster, "node_gate", Gate)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Context", (), {"get_node_id": lambda self: "n" * 40})())
    assert cluster._job_on_node("payload", lambda payload, x: {"control_ratio": x}, 1.0) == \
        {"control_ratio": 1.0, "node": "n" * 12}


def test_a_study_keeps_the_machine_it_is_timed_on_and_is_resumed_only_there(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    here, there = "CPU A (x86-vnni: avx512_vnni), onnxruntime 1.0", "CPU B (x86-avx2: avx2), onnxruntime 1.0"
    name = f"onnxopt-abc123-{Space().fingerprint}-top-1"
    assert studies.open_study(name, storage, resume=False, seed=0, startup=4, timed_on=here).user_attrs == \
        {"timed_on": here}
    studies.open_study(name, storage, resume=True, seed=0, startup=4, timed_on=here)
    with pytest.raises(UsageError) as refused:
        studies.open_study(name, storage, resume=True, seed=0, startup=4, timed_on=there)
    message = str(refused.value)
    assert "\n" not in message and f"was timed on {here}" in message and f"now be timed on {there}" in message
    # a study kept by an onnxopt that did not record the machine takes the first one resuming it
    old = f"onnxopt-def456-{Space().fingerprint}-top-1"
    optuna.create_study(study_name=old, storage=storage, directions=["minimize", "maximize"])
    assert studies.open_study(old, storage, resume=True, seed=0, startup=4, timed_on=there).user_attrs == \
        {"timed_on": there}


def test_a_node_that_timed_on_another_machine_gets_no_more_trials():
    from types import SimpleNamespace

    from onnxopt.search.cluster import Runner
    here, there = "CPU A (x86-vnni: avx512_vnni), onnxruntime 1.0", "CPU B (x86-avx2: avx2), onnxruntime 1.0"
    nodes = [{"NodeID": name * 20, "Alive": True, "Resources": {"CPU": 1}} for name in ("a", "b")]
    # a trial node "a" ran (a trial reports its node's first 12 characters) with its A/A control
    result = {"spec": "cleanup", "latency_ratio": 0.9, "control_ratio": 1.0, "timed_on": there, "node": "a" * 12}
    runner = Runner.__new__(Runner)  # its Ray: two idle nodes of one CPU each
    runner.ray = SimpleNamespace(nodes=lambda: nodes, wait=lambda refs, num_returns, timeout: (refs[:1], refs[1:]),
                                 get=lambda ref: dict(result))
    runner.pending, runner.jobs, runner.placed, runner.avoided, runner.timed_on = {"ref": 3}, {}, {}, set(), here
    assert runner._least_loaded_node() == "a" * 20
    kind, number, got = runner.next()
    assert (kind, number) == ("trial", 3) and "control_ratio" not in got
    assert got["error"] == f"timed on {there}, where the search times on {here}: latency ratios of two machines do not compare"
    assert runner._least_loaded_node() == "b" * 20
    runner.pending, result["timed_on"] = {"ref": 4}, here  # timed here: taken as it is
    assert runner.next() == ("trial", 4, result) and runner._least_loaded_node() == "b" * 20
    # a job (the race, the A/A control) timed on another machine: failed, and its node avoided too
    nodes.append({"NodeID": "c" * 20, "Alive": True, "Resources": {"CPU": 1}})
    result.clear()
    result.update(control_ratio=1.0, timed_on=there, node="b" * 12)
    runner.pending, runner.jobs = {}, {"ref": "control"}
    kind, name, got = runner.next()
    assert (kind, name) == ("job", "control") and "control_ratio" not in got and got["error"].startswith(f"timed on {there}")
    assert runner._least_loaded_node() == "c" * 20


def test_a_storage_url_is_shown_without_its_password():
    assert studies.shown("postgresql+psycopg2://bob:secret@db:5432/onnxopt") == "postgresql+psycopg2://bob:***@db:5432/onnxopt"
    assert studies.shown("sqlite:///onnxopt-search.db") == "sqlite:///onnxopt-search.db"


def test_a_cluster_whose_nodes_time_on_different_machines_is_refused():
    from onnxopt.search.cluster import one_machine
    a, b = "CPU A (x86-vnni: avx512_vnni), onnxruntime 1.0", "CPU B (arm64: asimddp), onnxruntime 1.0"
    assert one_machine([a, a]) == a
    with pytest.raises(UsageError) as refused:
        one_machine([a, b, a])
    assert str(refused.value).startswith(f"the cluster's nodes time on different machines (2 node(s) {a}; "
                                         f"1 node(s) {b})")


def test_the_race_takes_the_trials_within_the_budget_and_the_margin_of_the_fastest():
    def record(number, ratio, drop, state="complete"):
        return studies.TrialRecord(number, f"spec{number}", state, metric=1 - drop, drop=drop, latency_ratio=ratio)
    done = [record(0, 0.70, 0.0), record(1, 0.60, 0.02),  # the fastest overall is over the budget
            record(2, 0.72, 0.01), record(3, 0.734, 0.0), record(4, 0.737, 0.0), record(5, 0.71, 0.005),
            record(6, 0.50, 0.0, "failed"), record(7, 0.705, 0.0)]
    # within 5% of 0.70 (0.735): 0.734 is in, 0.737 out; at most 4, the choice's first
    assert [r.number for r in studies.contenders(done, 0.01, 0.05, 4)] == [0, 7, 5, 2]
    assert [r.number for r in studies.contenders(done, 0.01, 0.05, 9)] == [0, 7, 5, 2, 3]
    assert studies.contenders(done, 0.01, 0.05, 4)[0] is studies.choose(done, 0.01)[0]
    assert studies.contenders(done[1:2], 0.01, 0.05, 4) == []
