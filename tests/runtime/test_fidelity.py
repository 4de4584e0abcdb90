"""The centred cosine: what the input decides, which a plain cosine hides behind the part of the
outputs common to every input."""
from __future__ import annotations

import numpy as np

import pytest

from onnxopt.runtime.fidelity import centred_cosine, compare, per_sample, top1, top1_accuracy


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


def test_per_sample_splits_batched_runs_so_one_batch_can_be_centred_and_leaves_unbatched_outputs_whole():
    rng = np.random.default_rng(3)
    common = rng.standard_normal((1, 6)) * 10
    batched = [{"y": common + rng.standard_normal((5, 6)), "z": rng.standard_normal((5, 2))},
               {"y": common + rng.standard_normal((3, 6)), "z": rng.standard_normal((3, 2))}]
    split, same = per_sample(batched, batched, [5, 3])
    assert len(split) == len(same) == 8 and all(run["y"].shape == (1, 6) and run["z"].shape == (1, 2) for run in split)
    np.testing.assert_array_equal(np.concatenate([run["y"] for run in split]),
                                  np.concatenate([run["y"] for run in batched]))
    # a batched run alone cannot be centred; split, it is, and a model that kept only the common part
    # shows: 0 on y (nothing of what the input decides), z unchanged, the worst output counts
    constant = [{"y": np.repeat(common, 5, axis=0), "z": batched[0]["z"]}]
    assert centred_cosine(batched[:1], constant) is None
    assert abs(centred_cosine(*per_sample(batched[:1], constant, [5]))) < 1e-12
    assert compare(batched[:1], constant).cosine > 0.95  # what the plain cosine says of it
    # batch 1 splits into itself
    ones = [{"y": run["y"][:1]} for run in batched]
    assert [np.array_equal(a["y"], b["y"]) for a, b in zip(per_sample(ones, ones, [1, 1])[0], ones)] == [True, True]


def test_per_sample_leaves_both_sides_whole_where_either_has_an_output_that_is_not_batched():
    rng = np.random.default_rng(4)
    reference = [{"y": rng.standard_normal((5, 3))}]
    # an anchor table or a count beside the batched output: nothing is split
    anchors = [{"y": reference[0]["y"], "anchors": np.ones((4, 2))}]
    assert all(a is b for a, b in zip(per_sample(anchors, anchors, [5])[0], anchors))
    assert all(a is b for a, b in zip(per_sample(reference, reference, [5, 5])[0], reference))  # sizes not the runs'
    # a candidate that lost the batch axis: neither side is split, and compare() calls it total disagreement
    squeezed = [{"y": reference[0]["y"][0]}]
    ref_runs, cand_runs = per_sample(reference, squeezed, [5])
    assert len(ref_runs) == len(cand_runs) == 1
    fid = compare(ref_runs, cand_runs)
    assert fid.max_rel == float("inf") and fid.cosine == 0.0


# -- top1_accuracy ---------------------------------------------------------------------------
def test_top1_accuracy_on_known_logits():
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 2.0]], np.float32)
    # argmax: 1, 0, 2, 1
    assert top1_accuracy([{"y": logits}], np.array([1, 0, 2, 1])) == 1.0
    assert top1_accuracy([{"y": logits}], np.array([1, 0, 0, 0])) == 0.5
    assert top1_accuracy([{"y": logits}], np.array([[1], [2], [0], [0]])) == 0.25  # labels [N, 1]
    # several batches are concatenated in order
    assert top1_accuracy([{"y": logits[:1]}, {"y": logits[1:3]}, {"y": logits[3:]}], np.array([1, 0, 2, 0])) == 0.75


def test_top1_accuracy_picks_the_first_classification_output():
    logits = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    outputs = [{"feature": np.zeros((2, 8, 4), np.float32), "score": np.zeros((2, 1), np.float32), "logits": logits}]
    assert top1_accuracy(outputs, np.array([1, 1])) == 0.5


def test_top1_accuracy_is_none_without_a_classification_output():
    assert top1_accuracy([{"y": np.zeros((2, 3, 4), np.float32)}], np.array([0, 1])) is None
    assert top1_accuracy([{"y": np.zeros((2, 1), np.float32)}], np.array([0, 1])) is None  # one class
    assert top1_accuracy([{"y": np.zeros(2, np.float32)}], np.array([0, 1])) is None
    assert top1_accuracy([], np.array([0, 1])) is None
    # as many predictions as labels, or no number at all
    assert top1_accuracy([{"y": np.eye(3, dtype=np.float32)}], np.array([0, 1])) is None


def test_top1_says_why_it_means_nothing_where_a_search_or_quantize_would_score_garbage():
    boxes = [{"boxes": np.zeros((1, 25200, 85), np.float32), "mask": np.zeros((1, 2, 8, 8), np.float32)}]
    with pytest.raises(ValueError, match=r"needs an output shaped \[N, classes\]; the model gives boxes \[1, 25200, 85\], "
                                         r"mask \[1, 2, 8, 8\]"):
        top1(boxes, np.array([3]))
    logits = [{"y": np.eye(3, dtype=np.float32)}]
    # one [classes] row per sample fed: three rows for two samples (a model that batches otherwise) is refused
    with pytest.raises(ValueError, match="3 predictions for 2 samples"):
        top1(logits, np.array([0, 1, 2, 0]), fed=2)
    assert top1(logits, np.array([0, 1, 0, 7]), fed=3) == pytest.approx(2 / 3)  # labels beyond those fed unused
    with pytest.raises(ValueError, match="3 predictions for 4 samples"):
        top1(logits, np.array([0, 1, 2, 0]))


def test_top1_reads_a_1x1_conv_heads_classes_with_their_unit_dims():
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]], np.float32)
    assert top1([{"y": logits[:, :, None, None]}], np.array([1, 2])) == 0.5  # SqueezeNet's [N, classes, 1, 1]
    assert top1([{"y": logits[:, None, :]}], np.array([1, 0])) == 1.0


def test_top1_takes_a_squeezed_batch_1_output_as_one_sample_a_run_and_refuses_one_hot_labels():
    runs = [{"y": np.array([0.1, 0.7, 0.2], np.float32)}, {"y": np.array([0.9, 0.0, 0.1], np.float32)}]
    assert top1(runs, np.array([1, 2]), fed=2) == 0.5  # a batch-1 model whose output lost its batch dim
    with pytest.raises(ValueError, match=r"labels shaped \[2, 3\]: top-1 needs one class index per sample"):
        top1(runs, np.eye(3)[[1, 0]])
    # a [N] score per sample of a batch-6 run is no class: one argmax per run is not one per sample
    with pytest.raises(ValueError, match="1 predictions for 6 samples"):
        top1([{"score": np.arange(6, dtype=np.float32)}], np.zeros(6, int), fed=6)
