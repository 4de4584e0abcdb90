"""benchmarks/prune.py: the pure helpers its searches and structure check rely on."""
from __future__ import annotations

import pytest

from onnxopt.models import available, build
from onnxopt.testing import load_benchmark

prune = load_benchmark("prune")


def test_weight_shapes_match_between_a_50_percent_cut_and_the_half_width_build():
    from onnxopt.pipeline.run import Pipeline

    # round-to=1: the tiny widths (8..64) halved are not all multiples of onnxruntime's NCHWc block
    pruned = Pipeline.parse("fold-bn,prune:ratio=0.5,round-to=1").run(build("vgg16_bn-tiny")).model
    tiny_half = next(n for n in ("vgg16_bn-half-tiny", "vgg16_bn-tiny-half") if n in available())
    half = Pipeline.parse("fold-bn").run(build(tiny_half)).model
    assert prune.weight_shapes(pruned) == prune.weight_shapes(half)
    assert prune.weight_shapes(pruned) != prune.weight_shapes(build("vgg16_bn-tiny"))
    assert [op for op, _ in prune.weight_shapes(half)].count("Gemm") == 2


def test_bisect_finds_a_decreasing_function_within_tolerance():
    calls = []

    def f(x):
        calls.append(x)
        return 1000 * (1 - x) ** 2

    x, y, tried = prune.bisect(f, 490.0, 0.0, 0.9, rel_tol=0.02, steps=14)
    assert abs(y - 490) <= 0.02 * 490
    assert (x, y) in tried and len(tried) == len(calls) <= 14


def test_bisect_increasing_and_returns_the_closest_when_out_of_steps():
    x, y, tried = prune.bisect(lambda v: v, 0.3, 0.0, 1.0, rel_tol=1e-9, steps=3, decreasing=False)
    assert len(tried) == 3
    assert y == min((t[1] for t in tried), key=lambda v: abs(v - 0.3))


@pytest.mark.parametrize("truth", [0.15, 0.3, 0.45])
def test_next_ratio_converges_on_a_decreasing_curve(truth):
    g = lambda r: (1 - r) ** 2 / (1 - truth) ** 2 - 1  # noqa: E731 - latency ratio minus 1
    points = [(0.0, g(0.0))]
    r = prune.ratio_from_latency(0.8)
    for _ in range(5):
        points.append((r, g(r)))
        r = prune.next_ratio(points)
    assert abs(r - truth) < 0.01


def test_next_ratio_steps_outward_from_the_outermost_point_and_stays_in_range():
    # both points too slow, the curve not (yet) seen decreasing: prune more than the largest ratio tried
    assert prune.next_ratio([(0.0, 0.6), (0.2, 1.2)]) == pytest.approx(0.3)
    # both too fast: prune less than the smallest tried, never below 0
    assert prune.next_ratio([(0.05, -0.5), (0.1, -0.6)]) == 0.0
    assert prune.next_ratio([(0.85, 0.5), (0.8, 0.6)]) == 0.9


def test_next_ratio_interpolates_inside_a_bracket():
    r = prune.next_ratio([(0.2, 0.1), (0.4, -0.1)])
    assert 0.2 < r < 0.4 and r == pytest.approx(0.3)


def test_ratio_from_latency_and_within():
    assert prune.ratio_from_latency(1.0) == 0.0
    assert prune.ratio_from_latency(0.25) == pytest.approx(0.5)
    assert prune.within(0.64, 0.6, 0.1) and not prune.within(0.67, 0.6, 0.1)


def test_bracket_keeps_the_closest_model_on_each_side():
    points = [(0.22, 0.18), (0.31, -0.09), (0.28, -0.065), (0.26, 0.02)]
    assert prune.bracket(points) == [0.26, 0.28]
    assert prune.bracket([(0.2, 0.3), (0.3, 0.1)]) == [0.3]
    assert prune.bracket([(0.4, -0.3), (0.35, -0.1)]) == [0.35]


def test_verdict_is_conclusive_only_against_a_uniform_model_no_faster():
    # the uniform model 5% faster than the target-latency one: not like-for-like
    v = prune.verdict(0.89, [(0.946, 0.78)])
    assert v["better_than_all"] and v["better_than_as_slow"] is None
    v = prune.verdict(0.89, [(1.18, 0.80), (0.946, 0.78)])
    assert v == {"better_than_all": True, "better_than_as_slow": True, "as_slow_compared": 1,
                 "uniform_cosine_at_equal_latency": pytest.approx(0.78 + 0.02 * 0.054 / 0.234)}
    assert prune.verdict(0.75, [(1.18, 0.80), (0.946, 0.70)])["better_than_as_slow"] is False


def test_round_specs_time_the_default_and_the_other_rounding():
    rounded, unrounded = prune.round_specs()
    assert (rounded == "") != (unrounded == "")  # exactly one of them is the pass's default
    assert prune.described("").endswith("(default)") and prune.described(",round-to=1") == "round-to=1"


def test_uniform_cosine_at_equal_latency_interpolates_between_the_bracketing_models():
    assert prune.at_equal_latency([(1.324, 0.6536), (0.956, 0.4596)]) == pytest.approx(
        0.4596 + (0.6536 - 0.4596) * 0.044 / 0.368)
    assert prune.at_equal_latency([(1.2, 0.8), (1.1, 0.7)]) is None  # both slower: no bracket
    assert prune.verdict(0.6, [(1.324, 0.6536), (0.956, 0.4596)])["uniform_cosine_at_equal_latency"] < 0.6


def test_section_d_fidelity_is_the_centred_cosine_on_scenes():
    """Section D's verdict compares the cosine of what the input decides: a model against itself
    scores 1, and a pruned one less than its plain cosine on the same scenes, which the part of the
    outputs common to every scene props up."""
    from onnxopt.pipeline.run import Pipeline
    from onnxopt.runtime.fidelity import compare
    from onnxopt.runtime.sessions import run_model

    original = Pipeline.parse("fold-bn").run(build("mobilenetv2-tiny", seed=0)).model
    pruned = Pipeline.parse("fold-bn,prune:ratio=0.5").run(build("mobilenetv2-tiny", seed=0)).model
    cosines, common = prune.centred_fidelity(original, [("same", original), ("pruned", pruned)])
    assert cosines["same"] == pytest.approx(1.0, abs=1e-6)
    held = prune.zoo_scenes.held_back(original)
    plain = compare(run_model(original, held, optimization="all"), run_model(pruned, held, optimization="all")).cosine
    assert 0.0 < common < 1.0 and cosines["pruned"] < plain - 0.01, (cosines, plain, common)
