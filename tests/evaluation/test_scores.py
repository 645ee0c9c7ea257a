"""One case's Dice, IoU and HD95: hand-made shapes with known distances, spacing, regions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric.binary import hd95 as medpy_hd95

from hpsearch.evaluation.scores import _hd95, case_scores
from hpsearch.metrics import compute_dice, compute_iou

BRATS = {"label_values": [0, 1, 2, 4], "class_names": ["background", "NCR", "ED", "ET"]}
REGIONS = {"whole_tumour": [1, 2, 4], "tumour_core": [1, 4], "enhancing": [4]}


def _scores(pred, truth, spacing=(1.0, 1.0, 1.0), **kwargs):
    declared = {"label_values": [0, 1], "class_names": ["background", "fg"], **kwargs}
    return case_scores(pred, truth, spacing=spacing, **declared)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_of_two_planes_three_voxels_apart_along_a_2mm_axis(axis):
    """Every surface voxel is 3 voxels from the other plane: 3 * 2.0 mm, whatever the other spacings."""
    truth, pred = np.zeros((12, 12, 12), np.uint8), np.zeros((12, 12, 12), np.uint8)
    index = [slice(2, 9)] * 3
    index[axis] = 3
    truth[tuple(index)] = 1
    index[axis] = 6
    pred[tuple(index)] = 1
    spacing = [0.7, 0.7, 0.7]
    spacing[axis] = 2.0
    scores = _scores(pred, truth, spacing)["fg"]
    assert scores["hd95"] == pytest.approx(6.0)
    assert scores["dice"] == 0.0 and scores["iou"] == 0.0


def test_hd95_of_a_single_voxel_against_a_displaced_one():
    truth, pred = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8)
    truth[3, 3, 3], pred[3, 5, 4] = 1, 1  # 2 voxels along y (1.5 mm), 1 along z (0.5 mm)
    assert _scores(pred, truth, (2.0, 1.5, 0.5))["fg"]["hd95"] == pytest.approx(math.hypot(3.0, 0.5))


def test_cropping_gives_medpys_full_volume_answer():
    """The bounding-box crop is a speed-up only, also for masks touching the volume's edge."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        pred = rng.random((20, 18, 9)) > 0.93
        truth = rng.random((20, 18, 9)) > 0.9
        truth[0, :, 0] = True  # on the edge
        spacing = (0.8, 1.3, 3.0)
        assert _hd95(pred, truth, spacing, 0.0) == pytest.approx(medpy_hd95(pred, truth, voxelspacing=spacing))


@pytest.mark.parametrize(
    ("pred_has", "truth_has", "shape", "spacing", "expected"),
    [
        (False, False, (10, 20, 30), (2.0, 1.0, 0.5), {"dice": 1.0, "iou": 1.0, "hd95": 0.0}),
        (False, True, (10, 20, 30), (2.0, 1.0, 0.5), {"dice": 0.0, "iou": 0.0, "hd95": math.sqrt(1025)}),
        (True, False, (10, 20, 30), (2.0, 1.0, 0.5), {"dice": 0.0, "iou": 0.0, "hd95": math.sqrt(1025)}),
        (False, True, (240, 240, 155), (1.0, 1.0, 1.0), {"dice": 0.0, "iou": 0.0, "hd95": 373.13}),
        (True, True, (10, 20, 30), (2.0, 1.0, 0.5), {"dice": 1.0, "iou": 1.0, "hd95": 0.0}),
    ],
)
def test_empty_mask_conventions(pred_has, truth_has, shape, spacing, expected):
    pred, truth = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    pred[2:4, 2:4, 2:4] = pred_has
    truth[2:4, 2:4, 2:4] = truth_has
    assert _scores(pred, truth, spacing)["fg"] == pytest.approx(expected, abs=5e-3)


def test_regions_score_unions_of_label_values():
    truth = np.zeros((16, 16, 8), np.uint8)
    truth[2:12, 2:12, 1:7] = 2   # oedema around
    truth[4:10, 4:10, 2:6] = 1   # necrosis inside
    truth[5:9, 5:9, 3:5] = 4     # enhancing core
    pred = truth.copy()
    pred[truth == 1], pred[truth == 4] = 4, 1  # necrosis and enhancing swapped: same core, same tumour
    pred[2, 2:12, 1:7] = 0                      # one oedema face missed
    scores = case_scores(pred, truth, spacing=(1.0, 1.0, 2.0), regions=REGIONS, **BRATS)
    assert list(scores) == ["NCR", "ED", "ET", "whole_tumour", "tumour_core", "enhancing"]
    assert scores["NCR"]["dice"] == scores["ET"]["dice"] == 0.0
    assert scores["tumour_core"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    assert scores["enhancing"] == scores["ET"]
    whole_pred, whole_truth = pred > 0, truth > 0
    expected = compute_dice(whole_pred, whole_truth, 2)[1]
    assert scores["whole_tumour"]["dice"] == pytest.approx(expected) and 0.8 < expected < 1
    assert scores["whole_tumour"]["iou"] == pytest.approx(compute_iou(whole_pred, whole_truth, 2)[1])
    assert scores["whole_tumour"]["hd95"] == pytest.approx(medpy_hd95(whole_pred, whole_truth, (1.0, 1.0, 2.0)))


def test_classes_match_trainings_dice_and_iou():
    rng = np.random.default_rng(3)
    values = np.array([0, 1, 2, 4])
    truth_idx, pred_idx = rng.integers(0, 4, (12, 10, 6)), rng.integers(0, 4, (12, 10, 6))
    scores = case_scores(values[pred_idx], values[truth_idx], spacing=(1, 1, 1), **BRATS)
    assert [scores[n]["dice"] for n in ("NCR", "ED", "ET")] == pytest.approx(compute_dice(pred_idx, truth_idx, 4)[1:])
    assert [scores[n]["iou"] for n in ("NCR", "ED", "ET")] == pytest.approx(compute_iou(pred_idx, truth_idx, 4)[1:])


@pytest.mark.parametrize(
    ("pred", "truth", "kwargs", "message"),
    [
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), {}, "prediction shape (4, 4, 4) and ground truth shape (4, 4, 5)"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {}, "same 3D shape"),
        (np.full((4, 4, 4), 3), np.zeros((4, 4, 4)), {}, "prediction holds label value(s) [3] not in label_values"),
        (np.zeros((4, 4, 4)), np.full((4, 4, 4), 7), {}, "ground truth holds label value(s) [7]"),
        (np.full((4, 4, 4), 0.5), np.zeros((4, 4, 4)), {}, "prediction holds non-integer values"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"spacing": (1.0, 0.0, 1.0)}, "three positive voxel sizes"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"regions": {"wt": [1, 3]}}, "region 'wt' names label value(s) [3]"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"regions": {"all": [0, 1]}}, "names label value(s) [0]"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"regions": {"fg": [1]}}, "region 'fg' has the name of 'fg'"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"regions": {"none": []}}, "region 'none' names no label values"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"class_names": ["background"]}, "one name per value"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), {"label_values": [1, 2], "class_names": ["a", "b"]}, "background 0"),
    ],
)
def test_bad_input_is_a_helpful_value_error(pred, truth, kwargs, message):
    spacing = kwargs.pop("spacing", (1.0, 1.0, 1.0))
    with pytest.raises(ValueError) as caught:
        _scores(pred, truth, spacing, **kwargs)
    assert message in str(caught.value)
