"""The search space: every choice it can make is a spec `onnxopt run --passes` accepts, space files
narrow it (and bad ones are refused in one line), the fixed recipes come first."""
from __future__ import annotations

import optuna
import pytest

from onnxopt.errors import BadOption
from onnxopt.pipeline.spec import parse_spec
from onnxopt.search.space import Space, decided_by_timing, load_space, spec_safe, spread_ratios, to_spec


def test_every_choice_is_a_spec_the_cli_parses():
    space = Space(protect=(0.0, 0.5))
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    specs = set()
    for _ in range(60):
        trial = study.ask()
        params = space.suggest(trial)
        spec = to_spec(params, ["fold-bn", "cleanup"], ["stem", "layer1/conv", "fc.1"])
        passes = parse_spec(spec)
        assert [p.name for p in passes][:2] == ["fold-bn", "cleanup"]
        if params["prune"] != "off":
            prune = next(p for p in passes if p.name == "prune")
            if params["prune.protect"] == 0.5:
                assert prune.options.exclude == ("stem", "layer1/conv")  # the most sensitive half stays whole
            assert prune.options.criterion in ("data", "recon")  # always named: recipes alone prune as `prune` does
        specs.add(spec)
        study.tell(trial, [1.0, 1.0])
    assert len(specs) > 20
    assert any("target-latency=" in s for s in specs) and any("quantize:method=percentile" in s for s in specs)


def test_a_spread_ratio_spends_less_on_sensitive_groups():
    ranked = ["stem", "layer1/conv", "layer2/conv", "layer3/conv", "fc.1"]  # most sensitive first
    assert spread_ratios(0.4, 1.0, ranked) == {"stem": 0.0, "layer1/conv": 0.2, "layer3/conv": 0.6, "fc.1": 0.8}
    assert spread_ratios(0.4, 0.5, ranked) == {"stem": 0.2, "layer1/conv": 0.3, "layer3/conv": 0.5, "fc.1": 0.6}
    assert spread_ratios(0.6, 1.0, ranked)["fc.1"] == 0.9  # never a whole group
    params = {"prune": "ratio", "prune.ratio": 0.4, "prune.protect": 0.2, "prune.spread": 1.0, "quantize": "off"}
    prune = parse_spec(to_spec(params, [], ranked))[0]
    # the protected group stays whole, the other four spread from nothing to twice the ratio
    assert prune.options.exclude == ("stem",)
    assert prune.options.ratios == ("layer1/conv=0", "layer2/conv=0.27", "layer3/conv=0.53", "fc.1=0.8")
    assert "ratios=" not in to_spec({**params, "prune.spread": 0.0}, [], ranked)


def test_nothing_to_do_is_still_a_spec():
    assert to_spec({"prune": "off", "quantize": "off"}, [], []) == "cleanup"
    assert to_spec({"prune": "ratio", "prune.ratio": 0.25, "prune.protect": 0.0, "quantize": "on",
                    "quantize.method": "minmax", "quantize.max-drop": "0.005"}, ["fold-bn"], []) == \
        "fold-bn,prune:ratio=0.25,quantize:max-drop=0.005"


def test_recipes_follow_the_space():
    assert len(Space().recipes()) == 4
    narrow = Space(quantize_modes=("off",), ratio=(0.1, 0.2))
    assert narrow.recipes() == [{"prune": "off", "quantize": "off"}]  # 0.3 is outside, quantize is off


def test_a_latency_ladder_follows_the_recipes():
    assert [to_spec(p, ["fold-bn"], []) for p in Space().ladder()] == [
        f"fold-bn,prune:target-latency={t},criterion=recon" for t in (0.5, 0.65, 0.8)]
    # the ladder keeps to the space: its range, its criteria, its protect shares
    narrow = Space(target_latency=(0.6, 0.9), criteria=("data",), protect=(0.25,), quantize_modes=("on",))
    assert [(p["prune.target-latency"], p["prune.criterion"], p["prune.protect"], "quantize" in p)
            for p in narrow.ladder()] == [(0.65, "data", 0.25, False), (0.8, "data", 0.25, False)]
    assert Space(prune_modes=("off", "ratio")).ladder() == []


def test_bisection_narrows_the_ladder_to_where_the_budget_breaks():
    space = Space()

    def target(rungs):
        nxt = space.bisect(rungs)
        return None if nxt is None else (nxt["prune.target-latency"], nxt["prune.criterion"], nxt.get("quantize"))
    # 0.65 lost too much, 0.8 kept to the budget: halfway, then halfway again on the side it falls
    assert target({0.5: False, 0.65: False, 0.8: True}) == (0.725, "recon", "off")
    assert target({0.5: False, 0.65: False, 0.8: True, 0.725: True}) == (0.688, "recon", "off")
    assert target({0.5: False, 0.65: False, 0.8: True, 0.725: False}) == (0.762, "recon", "off")
    # a faster target within the budget beside a slower one over it: the fastest within decides
    assert target({0.5: False, 0.65: True, 0.8: False}) == (0.575, "recon", "off")
    # none within: towards the space's slow end; all within: towards its fast end
    assert target({0.5: False, 0.65: False, 0.8: False}) == (0.875, "recon", "off")
    assert target({0.5: True, 0.65: True, 0.8: True}) == (0.45, "recon", "off")
    # a rung that failed was tried: never asked again, and no verdict on either side of it
    assert target({0.5: False, 0.65: None, 0.8: True}) is None  # halfway 0.5-0.8 is the failed 0.65
    assert target({0.5: False, 0.65: False, 0.8: True, 0.725: None}) is None
    assert target({0.5: None, 0.65: False, 0.8: True}) == (0.725, "recon", "off")
    # close enough, or nothing measured, or no ladder in the space: nothing more to ask
    assert target({0.7: False, 0.725: True}) is None
    assert target({}) is None
    assert Space(prune_modes=("off", "ratio")).bisect({0.5: True}) is None


def test_recipes_are_the_readme_recipes_as_written():
    # the space times int8 everywhere (speed=false) but the recipes keep quantize's own speed check,
    # as `onnxopt run --passes fold-bn,quantize` runs it: the search must beat those, not a variant
    study = optuna.create_study(directions=["minimize", "maximize"])
    for params in Space().recipes():
        study.enqueue_trial(params, user_attrs={"recipe": True})
    specs = []
    for _ in range(4):
        trial = study.ask()
        specs.append(to_spec(Space().suggest(trial), ["fold-bn"], []))
        study.tell(trial, [1.0, 1.0])
    assert specs == ["fold-bn", "fold-bn,prune:ratio=0.3", "fold-bn,quantize", "fold-bn,prune:ratio=0.3,quantize"]
    trial = optuna.create_study().ask()
    params = Space(quantize_modes=("on",)).suggest(trial)
    assert "speed=false" in to_spec(params, [], [])  # a sampled trial follows the space


def test_space_files_narrow_the_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("exact: [fold-bn]\nprune: {modes: [ratio], ratio: [0.2, 0.4], protect: 0, spread: [0, 1]}\n"
                    "quantize: {modes: [false]}\n")
    space = load_space(path)
    assert space.exact == ("fold-bn",) and space.prune_modes == ("ratio",) and space.ratio == (0.2, 0.4)
    assert space.protect == (0,) and space.spread == (0, 1) and space.quantize_modes == ("off",)
    assert space.fingerprint != Space().fingerprint


def test_a_space_file_narrows_the_criteria(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("prune: {modes: [ratio], criteria: [recon]}\nquantize: {modes: [off]}\n")
    trial = optuna.create_study().ask()
    assert parse_spec(to_spec(load_space(path).suggest(trial), [], []))[0].options.criterion == "recon"
    space = Space(prune_modes=("ratio",), quantize_modes=("off",))  # the default: both
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=1))
    chosen = set()
    for _ in range(12):
        trial = study.ask()
        chosen.add(parse_spec(to_spec(space.suggest(trial), [], []))[0].options.criterion)
        study.tell(trial, [1.0, 1.0])
    assert chosen == {"data", "recon"}


@pytest.mark.parametrize("text,words", [
    ("prune: {modes: [sometimes]}", "prune modes ['sometimes']"),
    ("prune: {ratio: [0.5, 1.5]}", "must lie in (0, 1)"),
    ("prune: {spread: [2]}", "spread [2]"),
    ("prune: {criteria: [bn]}", "prune criteria ['bn']"),
    ("quantize: {bits: [4]}", "unknown quantize key 'bits'"),
    ("quantize: {speed: [sometimes]}", "quantize speed"),
    ("exact: [prune]", "exact passes ['prune']"),
    ("tune: {}", "unknown key(s) tune"),
])
def test_bad_space_files_are_refused_in_one_line(tmp_path, text, words):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(BadOption) as err:
        load_space(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_only_plain_names_stand_in_a_spec():
    assert spec_safe("/0/body.0/Conv") and spec_safe("conv_1")
    assert not spec_safe("a,b") and not spec_safe("x:y") and not spec_safe("a|b") and not spec_safe("")


def test_specs_whose_passes_choose_by_timing_are_known():
    assert decided_by_timing("fold-bn,quantize") and decided_by_timing("prune:target-latency=0.6")
    assert not decided_by_timing("fold-bn,prune:ratio=0.3,quantize:speed=false")
    assert not decided_by_timing("cleanup")
