"""Dice and IoU against hand-computed values (MONAI-style tables)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpsearch.metrics import DiceMetric, compute_dice, compute_iou, confusion_counts


@pytest.mark.parametrize(
    "pred, true, dice, iou",
    [
        # The seeds' definition 2|X n Y| / (|X| + |Y|): |X|=2, |Y|=1, overlap 1 -> 2/3.
        ([1, 1, 0, 0], [1, 0, 0, 0], [0.8, 2 / 3], [2 / 3, 1 / 2]),
        # Perfect overlap.
        ([0, 1, 1, 0], [0, 1, 1, 0], [1.0, 1.0], [1.0, 1.0]),
        # Disjoint: the two areas never meet.
        ([1, 0, 0, 0], [0, 1, 0, 0], [2 * 2 / (3 + 3), 0.0], [2 / 4, 0.0]),
        # Class absent from truth but predicted: 0, not "empty".
        ([1, 0, 0, 0], [0, 0, 0, 0], [6 / 7, 0.0], [3 / 4, 0.0]),
        # Empty vs empty: 1.0 by default (BraTS convention).
        ([0, 0, 0, 0], [0, 0, 0, 0], [1.0, 1.0], [1.0, 1.0]),
    ],
)
def test_binary_table(pred, true, dice, iou):
    pred, true = np.array(pred), np.array(true)
    np.testing.assert_allclose(compute_dice(pred, true, 2), dice)
    np.testing.assert_allclose(compute_iou(pred, true, 2), iou)


def test_seed_circle_example():
    # The DLI lab's picture: two overlapping areas of 50 and 30 pixels sharing 20.
    true = np.zeros(200, int)
    pred = np.zeros(200, int)
    true[:50] = 1
    pred[30:60] = 1
    assert compute_dice(pred, true, 2)[1] == pytest.approx(2 * 20 / (50 + 30))


def test_multiclass_brats_like():
    true = np.array([0, 1, 1, 2, 2, 2, 3, 3])
    pred = np.array([0, 1, 2, 2, 2, 3, 3, 0])
    tp, fp, fn = confusion_counts(pred, true, 4)
    assert tp.tolist() == [1, 1, 2, 1] and fp.tolist() == [1, 0, 1, 1] and fn.tolist() == [0, 1, 1, 1]
    np.testing.assert_allclose(compute_dice(pred, true, 4), [2 / 3, 2 / 3, 4 / 6, 2 / 4])


def test_empty_score_nan_leaves_case_out():
    metric = DiceMetric(2, empty_score=float("nan"))
    metric.update(np.array([1, 0]), np.array([1, 1]))  # dice 2/3
    metric.update(np.array([0, 0]), np.array([0, 0]))  # empty vs empty: left out
    assert metric.aggregate().mean_dice == pytest.approx(2 / 3)
    metric = DiceMetric(2)
    metric.update(np.array([1, 0]), np.array([1, 1]))
    metric.update(np.array([0, 0]), np.array([0, 0]))
    assert metric.aggregate().mean_dice == pytest.approx((2 / 3 + 1) / 2)


def test_per_case_mean_differs_from_pooled():
    # A large case segmented well and a small case missed: the per-case mean shows
    # the miss, pixel pooling hides it.
    big_true = np.ones(100, int)
    big_pred = np.ones(100, int)
    small_true = np.array([1, 1, 0, 0])
    small_pred = np.zeros(4, int)
    metric = DiceMetric(2)
    metric.update_slices(
        np.concatenate([big_pred, small_pred]),
        np.concatenate([big_true, small_true]),
        np.array([0] * 100 + [1] * 4),
    )
    scores = metric.aggregate()
    assert scores.num_cases == 2
    assert scores.mean_dice == pytest.approx(0.5)
    pooled = compute_dice(np.concatenate([big_pred, small_pred]), np.concatenate([big_true, small_true]), 2)[1]
    assert pooled == pytest.approx(200 / 202)


def test_errors_are_value_errors():
    with pytest.raises(ValueError, match="shape"):
        compute_dice(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="num_classes"):
        DiceMetric(1)
    with pytest.raises(ValueError, match="before any update"):
        DiceMetric(2).aggregate()
    assert math.isnan(DiceMetric(2, empty_score=float("nan")).update(np.zeros(2), np.zeros(2))[1])


def test_regions_are_scored_per_case_like_classes():
    # BraTS classes 0..3 stand for labels 0, 1, 2, 4; whole tumour unites classes 1, 2, 3.
    from hpsearch.feeds import region_classes

    regions = region_classes({"label_values": [0, 1, 2, 4], "regions": {"whole": [1, 2, 4], "core": [1, 4]}})
    assert regions == {"whole": [1, 2, 3], "core": [1, 3]}
    metric = DiceMetric(4, regions=regions)
    true = np.array([1, 2, 3, 0, 0, 0])
    pred = np.array([2, 1, 3, 3, 0, 0])       # every class confused, the tumour outline nearly right
    metric.update(pred, true)
    metric.update(np.zeros(4, int), np.zeros(4, int))   # no tumour at all: empty vs empty
    scores = metric.aggregate()
    assert scores.region_dice["whole"] == pytest.approx((2 * 3 / (4 + 3) + 1) / 2)
    # core: truth {0, 2} (classes 1, 3), prediction {1, 2, 3}; they share voxel 2.
    assert scores.region_dice["core"] == pytest.approx((2 * 1 / (2 + 3) + 1) / 2)
    assert scores.region_iou["whole"] == pytest.approx((3 / 4 + 1) / 2)
    plain = DiceMetric(4)
    plain.update(pred, true)
    plain.update(np.zeros(4, int), np.zeros(4, int))
    assert scores.mean_dice == plain.aggregate().mean_dice  # regions stay out of the mean


@pytest.mark.parametrize("regions", [{"bad": [0]}, {"bad": [4]}, {"bad": []}])
def test_regions_must_be_foreground_classes(regions):
    with pytest.raises(ValueError, match="region 'bad'"):
        DiceMetric(4, regions=regions)
