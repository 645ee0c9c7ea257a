"""Reports: mean Dice as training defines it, MLflow names, CSV and JSON round trips."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hpsearch.evaluation import EvaluationReport, Evaluator
from hpsearch.metrics import DiceMetric

VALUES, NAMES = [0, 1, 2, 4], ["background", "necrotic core", "oedema", "enhancing/tumour"]
REGIONS = {"whole tumour": [1, 2, 4], "tumour_core": [1, 4]}


def _brats_cases(seed=0, count=4):
    """Random class-index maps; class 3 (value 4) absent from both maps of the last case."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        truth, pred = rng.integers(0, 4, (10, 8, 6)), rng.integers(0, 4, (10, 8, 6))
        if i == count - 1:
            truth[truth == 3], pred[pred == 3] = 0, 0
        cases.append((pred, truth))
    return cases


@pytest.fixture
def report():
    evaluator = Evaluator(VALUES, NAMES, REGIONS)
    for i, (pred, truth) in enumerate(_brats_cases()):
        evaluator.add(f"case_{i}", np.array(VALUES)[pred], np.array(VALUES)[truth], spacing=(1.0, 1.5, 2.5))
    return evaluator.report()


def test_mean_dice_is_trainings_dice_metric(report):
    metric = DiceMetric(num_classes=4)
    for pred, truth in _brats_cases():
        metric.update(pred, truth)
    expected = metric.aggregate()
    assert report.mean_dice == pytest.approx(expected.mean_dice)
    means = report.class_means()
    assert [means[n]["dice"] for n in NAMES[1:]] == pytest.approx(expected.dice[1:])
    assert [means[n]["iou"] for n in NAMES[1:]] == pytest.approx(expected.iou[1:])
    assert report.cases[-1].scores["enhancing/tumour"]["dice"] == 1.0  # empty vs empty, as in training


def test_regions_are_reported_but_not_in_the_mean(report):
    assert report.names == [*NAMES[1:], *REGIONS]
    fg_only = np.mean([report.class_means()[n]["dice"] for n in NAMES[1:]])
    assert report.mean_dice == pytest.approx(fg_only)
    assert report.class_means()["whole tumour"]["dice"] != pytest.approx(fg_only)


def test_metrics_have_metric_safe_names(report):
    metrics = report.metrics()
    means = report.class_means()
    assert metrics["test_dice"] == report.mean_dice
    assert metrics["test_dice_necrotic_core"] == means["necrotic core"]["dice"]
    assert metrics["test_hd95_enhancing_tumour"] == means["enhancing/tumour"]["hd95"]
    assert metrics["test_iou_whole_tumour"] == means["whole tumour"]["iou"]
    assert len(metrics) == 1 + 3 * 5
    assert set(report.metrics(prefix="final_")) == {k.replace("test_", "final_", 1) for k in metrics}


def test_csv_has_one_row_per_case(report, tmp_path):
    path = report.to_csv(tmp_path / "evaluation.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["case"] for r in rows] == ["case_0", "case_1", "case_2", "case_3"]
    assert list(rows[0])[:4] == ["case", "necrotic core_dice", "necrotic core_iou", "necrotic core_hd95"]
    assert float(rows[2]["whole tumour_hd95"]) == report.cases[2].scores["whole tumour"]["hd95"]
    assert not [p.name for p in tmp_path.iterdir() if p.name != "evaluation.csv"]  # no partial file left


def test_json_round_trip(report, tmp_path):
    path = report.to_json(tmp_path / "evaluation.json")
    raw = json.loads(path.read_text())
    assert raw["summary"]["mean_dice"] == pytest.approx(report.mean_dice)
    assert raw["summary"]["num_cases"] == 4
    again = EvaluationReport.from_dict(raw)
    assert again == report
    assert again.metrics() == report.metrics()


def test_format_lists_every_class_and_region(report):
    text = report.format()
    for name in [*NAMES[1:], "whole tumour (1+2+4)", "tumour_core (1+4)"]:
        assert name in text
    assert f"mean foreground Dice {report.mean_dice:.4f} over 4 case(s)" in text


def test_a_case_added_twice_is_refused():
    evaluator = Evaluator([0, 1], ["background", "LV"])
    evaluator.add("a", np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1, 1, 1))
    with pytest.raises(ValueError, match="case 'a' added twice"):
        evaluator.add("a", np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1, 1, 1))


def test_region_name_clashing_with_a_class_once_metric_safe_is_refused():
    with pytest.raises(ValueError, match="rename the region"):
        Evaluator(VALUES, NAMES, {"necrotic_core": [1]})
