"""The centred cosine: what the input decides, which a plain cosine hides behind the part of the
outputs common to every input."""
from __future__ import annotations

import numpy as np

from onnxopt.runtime.fidelity import centred_cosine, compare


def _runs(outputs):
    return [{"y": o} for o in outputs]


def test_a_model_that_kept_only_the_common_part_passes_a_plain_cosine_and_fails_the_centred_one():
    rng = np.random.default_rng(0)
    common = rng.standard_normal((1, 100)) * 10         # an anchor grid, a bias: the same for every input
    own = rng.standard_normal((8, 1, 100))             # what each input decides
    reference = _runs(common + own)
    constant = _runs(np.broadcast_to(common, (8, 1, 100)).copy())
    assert compare(reference, constant).cosine > 0.99  # a plain cosine passes a model that ignores its input
    assert abs(centred_cosine(reference, constant)) < 1e-12
    halved = _runs(common + 0.5 * own + 0.5 * rng.standard_normal((8, 1, 100)))
    assert 0.6 < centred_cosine(reference, halved) < 0.8  # cos 45 degrees: half the signal, as much noise
    assert centred_cosine(reference, reference) == 1.0


def test_the_centred_cosine_is_the_worst_output_and_says_none_where_it_cannot_tell():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 1, 10)), rng.standard_normal((4, 1, 10))
    reference = [{"a": x, "b": y} for x, y in zip(a, b)]
    candidate = [{"a": x, "b": 2 * b.mean(0) - y} for x, y in zip(a, b)]  # b's own part turned round
    assert np.isclose(centred_cosine(reference, candidate), -1.0)
    assert centred_cosine(_runs(np.ones((4, 1, 10))), _runs(np.ones((4, 1, 10)))) is None  # nothing varies
    assert centred_cosine(reference[:1], candidate[:1]) is None                            # one input
    nan = a.copy()
    nan[0, 0, 0] = np.nan
    assert centred_cosine(_runs(nan), _runs(nan)) is None
    assert centred_cosine(_runs(a), _runs(a[:, :, :5])) == 0.0                              # a changed shape


def test_an_output_that_cannot_be_centred_counts_by_its_plain_cosine_and_a_lost_value_is_total_disagreement():
    rng = np.random.default_rng(2)
    varying = rng.standard_normal((4, 1, 10))
    fixed = np.ones((1, 3))  # an anchor grid beside the boxes: the same for every input
    reference = [{"boxes": v, "anchors": fixed} for v in varying]
    candidate = [{"boxes": v + 0.3 * rng.standard_normal(v.shape), "anchors": fixed} for v in varying]
    boxes = centred_cosine([{"y": r["boxes"]} for r in reference], [{"y": c["boxes"]} for c in candidate])
    assert 0.5 < boxes < 0.99 and centred_cosine(reference, candidate) == boxes  # the anchors: cosine 1
    broken = [{"boxes": c["boxes"], "anchors": -fixed} for c in candidate]
    assert np.isclose(centred_cosine(reference, broken), -1.0)  # that output's own plain cosine, the worst
    lost = [dict(c) for c in candidate]
    lost[2]["boxes"] = np.full((1, 10), np.nan)
    assert centred_cosine(reference, lost) == 0.0


def test_a_value_lost_beside_one_the_reference_lacks_too_is_total_disagreement():
    rng = np.random.default_rng(3)
    reference = _runs(rng.standard_normal((4, 1, 10)))
    reference[1]["y"][0, 0] = np.nan  # the reference's own NaN (a Log of a negative input)
    candidate = [dict(r) for r in reference]
    candidate[1] = {"y": reference[1]["y"].copy()}
    candidate[1]["y"][0, 5] = np.nan  # lost where the reference has a value
    assert centred_cosine(reference, candidate) == 0.0
    assert centred_cosine(reference, reference) is None  # NaN where the reference has it: nothing to centre


def test_compare_carries_the_centred_cosine_and_agreement_picks_the_measure_the_outputs_allow():
    from onnxopt.runtime.fidelity import agreement
    rng = np.random.default_rng(4)
    common = rng.standard_normal((1, 1, 50)) * 10  # [1, 1, 50]: not a classifier's [N, classes]
    reference = [{"y": common + x, "z": x * 0 + 3.0} for x in rng.standard_normal((6, 1, 1, 50))]
    candidate = [{"y": r["y"] + rng.standard_normal((1, 1, 50)), "z": r["z"]} for r in reference]
    fid = compare(reference, candidate)
    # per output: y is centred; z is the same for every input, so it cannot be, and counts by its plain cosine
    assert fid.outputs["y"].centred_cosine == centred_cosine([{"y": r["y"]} for r in reference],
                                                             [{"y": c["y"]} for c in candidate])
    assert fid.outputs["z"].centred_cosine is None
    assert fid.centred_cosine == centred_cosine(reference, candidate) < fid.cosine - 0.1
    assert agreement(reference, candidate) == ("centred output cosine", fid.centred_cosine)
    # a classifier's [N, classes] output is judged by its top-1; one run has nothing to centre over
    logits = [{"p": rng.standard_normal((4, 10))}]
    assert agreement(logits, logits) == ("top-1 agreement", 1.0)
    assert compare(logits, logits).centred_cosine is None
    flat = [{"v": rng.standard_normal(7)}]
    assert agreement(flat, flat)[0] == "output cosine"
