"""Registry, spec strings, typed options and pipeline files (onnxopt/registry.py, onnxopt/options.py).

Test-local passes are registered into a throw-away copy of the registry (the `registry` fixture), so
the global one keeps exactly the built-ins.
"""
# No `from __future__ import annotations`: the Options classes below are resolved with
# typing.get_type_hints, and real annotation objects keep that independent of module lookup.
import dataclasses
import json
from typing import Literal

import numpy as np
import pytest

import onnxopt.pipeline.registry as registry_module
import onnxopt.pipeline.spec as reg
from onnxopt.errors import BadInput, BadOption, OnnxoptError, UnknownPass, UsageError
from onnxopt.passes import Cleanup, FoldBatchNorm
from onnxopt.pipeline.contract import Pass, PassResult
from onnxopt.pipeline.options import option
from onnxopt.pipeline.registry import register_pass
from onnxopt.pipeline.run import Pipeline
from onnxopt.pipeline.spec import get_pass, load_config, parse_spec


class Knobs(Pass):
    """Every option type the coercion layer knows."""

    name = "test-knobs"
    exact = True

    @dataclasses.dataclass(frozen=True)
    class Options:
        ratio: float = option(0.5, "fraction")
        round_to: int = option(1, "multiple")
        enabled: bool = option(True, "on or off")
        mode: Literal["fast", "exact"] = option("fast", "how")
        layers: tuple[str, ...] = option((), "layer names")
        sizes: tuple[int, ...] = option((1, 2), "sizes")
        limit: int | None = option(None, "optional cap")

    def run(self, graph, ctx):
        return PassResult()


class Bare(Pass):
    name = "test-bare"
    exact = True

    def run(self, graph, ctx):
        return PassResult()


@pytest.fixture
def registry(monkeypatch):
    """A private registry: built-ins plus the test-local passes, discarded after the test."""
    reg.available_passes()  # import the built-ins into the real registry first
    private = dict(registry_module._REGISTRY)
    monkeypatch.setattr(registry_module, "_REGISTRY", private)
    register_pass(Knobs)
    register_pass(Bare)
    return private


def test_builtins_are_registered_without_test_passes():
    passes = reg.available_passes()
    assert passes["fold-bn"] is FoldBatchNorm and passes["cleanup"] is Cleanup
    assert "test-knobs" not in passes
    passes["junk"] = Bare  # a copy: the registry is not affected
    assert "junk" not in reg.available_passes()


# ---------------------------------------------------------------------------------------------
# register_pass / get_pass


def test_duplicate_registration_raises(registry):
    class Other(Pass):
        name = "test-knobs"

        def run(self, graph, ctx):
            return PassResult()

    with pytest.raises(ValueError, match="pass 'test-knobs' registered twice"):
        register_pass(Other)
    assert registry["test-knobs"] is Knobs
    assert register_pass(Knobs) is Knobs  # the same class again (e.g. a reload) is fine

    class Shadow(Pass):
        name = "fold-bn"

        def run(self, graph, ctx):
            return PassResult()

    with pytest.raises(ValueError, match="registered twice"):
        register_pass(Shadow)
    assert get_pass("fold-bn") is FoldBatchNorm


def test_registration_needs_a_string_name(registry):
    class Nameless(Pass):
        def run(self, graph, ctx):
            return PassResult()

    with pytest.raises(TypeError, match="Nameless: a pass needs a string `name`"):
        register_pass(Nameless)


@pytest.mark.parametrize("spelling", ["fold-bn", "fold_bn", "FOLD_BN", " Fold-BN "])
def test_get_pass_normalizes_spelling(spelling):
    assert get_pass(spelling) is FoldBatchNorm


def test_get_pass_suggests_the_closest_name():
    with pytest.raises(UnknownPass) as info:
        get_pass("fold-bm")
    msg = str(info.value)
    assert msg.startswith("unknown pass 'fold-bm'; did you mean 'fold-bn'?")
    listed = msg.split("(available: ")[1].rstrip(")").split(", ")
    assert listed == sorted(listed) and {"cleanup", "fold-bn", "simplify"} <= set(listed)
    assert info.value.exit_code == 2
    with pytest.raises(UnknownPass) as info:
        get_pass("zzzzzz")
    assert "did you mean" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# parse_spec


def test_parse_spec_plain_list():
    passes = parse_spec("fold-bn,cleanup")
    assert [type(p) for p in passes] == [FoldBatchNorm, Cleanup]
    assert passes[0].options == FoldBatchNorm.Options()
    assert passes[1].options == Cleanup.Options()


def test_parse_spec_options_go_to_the_right_pass_typed():
    fold, clean = parse_spec("fold-bn:affine=false,lone-bn=affine,cleanup")
    assert isinstance(fold, FoldBatchNorm) and isinstance(clean, Cleanup)
    assert fold.options.affine is False
    assert fold.options.lone_bn == "affine"
    assert clean.options.inputs is True
    clean, fold = parse_spec(" cleanup : inputs = no , fold_bn:lone-bn=AFFINE ")
    assert clean.options.inputs is False
    assert fold.options == FoldBatchNorm.Options(lone_bn="affine")


def test_parse_spec_same_pass_twice_gets_separate_options(registry):
    a, b = parse_spec("test-knobs:ratio=0.1,test-knobs:ratio=0.9,round-to=4")
    assert (a.options.ratio, a.options.round_to) == (0.1, 1)
    assert (b.options.ratio, b.options.round_to) == (0.9, 4)


@pytest.mark.parametrize("spec, error, message", [
    ("fold-bn:afine=false", BadOption, "fold-bn: unknown option 'afine'; did you mean 'affine'?"),
    ("fold-bn:lone_bm=affine", BadOption, "unknown option 'lone-bm'; did you mean 'lone-bn'?"),
    ("cleanup:zzz=1", BadOption, "cleanup: unknown option 'zzz' (options: inputs)"),
    ("test-bare:x=1", BadOption, "test-bare: unknown option 'x' (it takes no options)"),
    ("fold-bn:affine=maybe", BadOption, "fold-bn: option 'affine' expects true or false, got 'maybe'"),
    ("fold-bn:lone-bn=drop", BadOption, "option 'lone-bn' must be one of keep, affine, got 'drop'"),
    ("affine=false,fold-bn", BadOption, "option 'affine=false' comes before any pass name"),
    ("fold-bm", UnknownPass, "did you mean 'fold-bn'?"),
    ("", UsageError, "no passes given"),
    (" , ,", UsageError, "no passes given"),
])
def test_parse_spec_rejects(registry, spec, error, message):
    with pytest.raises(error) as info:
        parse_spec(spec)
    assert message in str(info.value)
    assert info.value.exit_code == 2


# ---------------------------------------------------------------------------------------------
# Option coercion


@pytest.mark.parametrize("key, raw, field, expected", [
    ("ratio", "0.25", "ratio", 0.25),
    ("ratio", "1", "ratio", 1.0),
    ("ratio", 0.3, "ratio", 0.3),
    ("round-to", "8", "round_to", 8),
    ("round_to", "8", "round_to", 8),
    ("round-to", 8.0, "round_to", 8),
    ("round-to", 16, "round_to", 16),
    ("enabled", "off", "enabled", False),
    ("enabled", "No", "enabled", False),
    ("enabled", "0", "enabled", False),
    ("enabled", "TRUE", "enabled", True),
    ("enabled", "yes", "enabled", True),
    ("enabled", False, "enabled", False),
    ("enabled", 1, "enabled", True),
    ("mode", "exact", "mode", "exact"),
    ("mode", "EXACT", "mode", "exact"),
    ("layers", "conv1|conv2|fc", "layers", ("conv1", "conv2", "fc")),
    ("layers", "conv1", "layers", ("conv1",)),
    ("layers", "", "layers", ()),
    ("layers", ["a", "b"], "layers", ("a", "b")),
    ("sizes", "4|8", "sizes", (4, 8)),
    ("sizes", [16, "32"], "sizes", (16, 32)),
    ("limit", "none", "limit", None),
    ("limit", None, "limit", None),
    ("limit", "3", "limit", 3),
])
def test_option_coercion(registry, key, raw, field, expected):
    p = reg.make_pass("test-knobs", {key: raw})
    value = getattr(p.options, field)
    assert value == expected and type(value) is type(expected)
    # everything else keeps its default
    others = {f.name for f in dataclasses.fields(Knobs.Options)} - {field}
    for name in others:
        assert getattr(p.options, name) == getattr(Knobs.Options(), name)


@pytest.mark.parametrize("key, raw, message", [
    ("round-to", "2.5", "option 'round-to' expects an integer, got '2.5'"),
    ("round-to", 2.5, "option 'round-to' expects an integer, got 2.5"),
    ("round-to", True, "option 'round-to' expects a number, got True"),
    ("ratio", "abc", "option 'ratio' expects a number, got 'abc'"),
    ("ratio", False, "option 'ratio' expects a number, got False"),
    ("enabled", "2", "option 'enabled' expects true or false, got '2'"),
    ("mode", "slow", "option 'mode' must be one of fast, exact, got 'slow'"),
    ("sizes", "1|x", "option 'sizes' expects an integer, got 'x'"),
    ("limit", "many", "option 'limit' expects an integer, got 'many'"),
])
def test_option_coercion_errors(registry, key, raw, message):
    with pytest.raises(BadOption) as info:
        reg.make_pass("test-knobs", {key: raw})
    assert str(info.value) == f"test-knobs: {message}"


def test_options_from_keyword_overrides_are_coerced_and_frozen():
    p = Knobs(ratio="0.3", round_to="8", enabled="false")
    assert (p.options.ratio, p.options.round_to, p.options.enabled) == (0.3, 8, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.options.ratio = 0.4  # type: ignore[misc]
    base = Knobs.Options(mode="exact")
    q = Knobs(base, ratio=0.1)
    assert q.options == Knobs.Options(mode="exact", ratio=0.1)
    with pytest.raises(BadOption, match="unknown option 'ration'; did you mean 'ratio'"):
        Knobs(ration=0.3)


@pytest.mark.parametrize("kwargs, spec", [
    ({}, "test-knobs"),
    ({"ratio": 0.3}, "test-knobs:ratio=0.3"),
    ({"round_to": 8, "enabled": False}, "test-knobs:round-to=8,enabled=False"),
    ({"mode": "exact", "layers": ("a", "b"), "sizes": (4, 8)}, "test-knobs:mode=exact,layers=a|b,sizes=4|8"),
    ({"limit": 3, "ratio": 1e-5}, "test-knobs:ratio=1e-05,limit=3"),
    ({"sizes": ()}, "test-knobs:sizes="),
])
def test_pass_spec_round_trips_through_parse_spec(registry, kwargs, spec):
    p = Knobs(**kwargs)
    assert p.spec == spec
    (again,) = parse_spec(p.spec)
    assert type(again) is Knobs and again.options == p.options
    # several passes in one string
    both = parse_spec(f"{p.spec},{FoldBatchNorm(affine=False, lone_bn='affine').spec}")
    assert both[0].options == p.options
    assert both[1].options == FoldBatchNorm.Options(affine=False, lone_bn="affine")


def test_builtin_spec_round_trip():
    p = FoldBatchNorm(affine=False, lone_bn="affine")
    assert p.spec == "fold-bn:affine=False,lone-bn=affine"
    assert parse_spec(p.spec)[0].options == p.options
    assert repr(p) == "<FoldBatchNorm fold-bn:affine=False,lone-bn=affine>"


class Coded(Pass):
    """Literal options whose values are not lower-case strings."""

    name = "test-coded"
    exact = True

    @dataclasses.dataclass(frozen=True)
    class Options:
        bits: Literal[4, 8] = option(8, "bit width")
        norm: Literal["L1", "L2"] = option("L1", "norm")

    def run(self, graph, ctx):
        return PassResult()


def test_literal_int_option_from_spec_string():
    assert Coded.from_values({"bits": "4"}).options.bits == 4


def test_literal_mixed_case_option_exact_spelling():
    assert Coded.from_values({"norm": "L2"}).options.norm == "L2"


# ---------------------------------------------------------------------------------------------
# Pipeline files


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_json_list_of_strings(tmp_path):
    path = write(tmp_path, "p.json", json.dumps(["fold-bn:affine=false", "cleanup"]))
    passes, settings = load_config(path)
    assert [type(p) for p in passes] == [FoldBatchNorm, Cleanup]
    assert passes[0].options.affine is False
    assert settings == {}


def test_load_config_yaml_all_entry_forms_and_settings(registry, tmp_path):
    path = write(tmp_path, "p.yaml", """
passes:
  - fold-bn,cleanup:inputs=false
  - name: test-knobs
    ratio: 0.3
    round-to: 8
    layers: [a, b]
  - name: fold-bn
    options: {lone-bn: affine}
  - test-knobs: {mode: exact, sizes: "4|8"}
  - cleanup:
verify: false
rtol: 0.001
input-shapes: {x: [1, 3, 8, 8]}
seed: 3
samples: 1
threads: 2
""")
    passes, settings = load_config(path)
    assert [p.name for p in passes] == ["fold-bn", "cleanup", "test-knobs", "fold-bn", "test-knobs", "cleanup"]
    assert passes[1].options.inputs is False
    assert passes[2].options == Knobs.Options(ratio=0.3, round_to=8, layers=("a", "b"))
    assert passes[3].options == FoldBatchNorm.Options(lone_bn="affine")
    assert passes[4].options == Knobs.Options(mode="exact", sizes=(4, 8))
    assert passes[5].options == Cleanup.Options()
    assert settings == {"verify": False, "rtol": 0.001, "input_shapes": {"x": [1, 3, 8, 8]}, "seed": 3,
                        "samples": 1, "threads": 2}


def test_load_config_settings_drive_a_pipeline(tmp_path):
    from onnxopt.testing import parse_model

    path = write(tmp_path, "p.json", json.dumps({
        "passes": [{"fold-bn": {"affine": True}}, "cleanup"],
        "rtol": 1e-5, "samples": 1, "input-shapes": {"x": [2, 3, 4, 4]}}))
    passes, settings = load_config(path)
    rng = np.random.default_rng(0)
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4,4] x) => (float[N,2,4,4] y) {
      c = Conv(x, W)
      y = BatchNormalization(c, s, b, m, v)
    }""", W=rng.standard_normal((2, 3, 1, 1)).astype(np.float32), s=np.ones(2, np.float32),
                         b=np.zeros(2, np.float32), m=np.full(2, 0.5, np.float32), v=np.full(2, 4.0, np.float32))
    result = Pipeline(passes, **settings).run(model)
    assert result.report.input_shapes == {"x": (2, 3, 4, 4)}
    assert result.report.fidelity.samples == 1
    assert [p.status for p in result.report.passes] == ["applied", "unchanged"]
    assert result.report.fidelity.max_rel <= 1e-5


def test_load_config_passes_as_one_spec_string(tmp_path):
    path = write(tmp_path, "p.yml", "passes: fold-bn:lone-bn=affine,cleanup\nverify: true\n")
    passes, settings = load_config(path)
    assert [p.name for p in passes] == ["fold-bn", "cleanup"]
    assert passes[0].options.lone_bn == "affine"
    assert settings == {"verify": True}


@pytest.mark.parametrize("name, text, error, message", [
    ("p.json", json.dumps({"passes": ["cleanup"], "verfy": False}), BadInput,
     "unknown setting(s) verfy (known: passes, "),
    ("p.json", json.dumps({"passes": []}), BadInput, "'passes' must be a non-empty list"),
    ("p.json", json.dumps({"steps": ["cleanup"]}), BadInput, "a pipeline file needs a 'passes' list"),
    ("p.json", json.dumps(42), BadInput, "a pipeline file needs a 'passes' list"),
    ("p.json", json.dumps({"passes": [3]}), BadInput, "cannot read pass entry 3"),
    ("p.json", json.dumps({"passes": [{"a": {}, "b": {}}]}), BadInput, "cannot read pass entry"),
    ("p.json", "{not json", BadInput, "cannot parse pipeline file"),
    ("p.yaml", "passes: [fold-bn\n", BadInput, "cannot parse pipeline file"),
    ("p.yaml", "passes: [fold-bm]\n", UnknownPass, "did you mean 'fold-bn'?"),
    ("p.yaml", "passes:\n  - fold-bn: {afine: false}\n", BadOption, "did you mean 'affine'?"),
])
def test_load_config_rejects(tmp_path, name, text, error, message):
    path = write(tmp_path, name, text)
    with pytest.raises(error) as info:
        load_config(path)
    assert message in str(info.value)
    if error is BadInput:
        assert str(path) in str(info.value) and info.value.exit_code == 3
    if "verfy" in message:  # the list of known settings names every run setting
        for setting in ("input-shapes", "rtol", "samples", "seed", "threads", "verify"):
            assert setting in str(info.value).split("(known:")[1]


def test_load_config_missing_file(tmp_path):
    with pytest.raises(BadInput, match="no such pipeline file"):
        load_config(tmp_path / "absent.yaml")


def test_load_config_entry_with_string_options_is_a_clear_error(tmp_path):
    path = write(tmp_path, "p.json", json.dumps({"passes": [{"fold-bn": "affine=false"}]}))
    with pytest.raises(OnnxoptError):
        load_config(path)


def test_load_config_non_mapping_options_is_not_silently_ignored(tmp_path):
    path = write(tmp_path, "p.json", json.dumps({"passes": [{"name": "fold-bn", "options": "affine=false"}]}))
    with pytest.raises(OnnxoptError):
        load_config(path)
