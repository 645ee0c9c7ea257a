"""The search metric: what training reports, in the direction that picks the best epoch."""

from __future__ import annotations

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.search.config import SearchConfig
from hpsearch.selection import check_metric, selectable_metrics

CLASSES = ["background", "LV"]


@pytest.mark.parametrize(
    "metric, mode, needle",
    [
        ("val_dice", "max", None),
        ("val_dice_LV", "max", None),
        ("val_loss", "min", None),
        ("val_dice", "min", "search.mode: min would select the worst val_dice; use max"),
        ("val_loss", "max", "search.mode: max would select the worst val_loss; use min"),
        ("val_dice_RV", "max", "search.metric: val_dice_RV is not reported by training on this dataset"),
        ("val_accuracy", "max", "search.metric: val_accuracy is not reported"),
    ],
)
def test_check_metric(metric, mode, needle):
    if needle is None:
        check_metric(metric, mode, CLASSES)
        return
    with pytest.raises(HpsearchError, match=needle):
        check_metric(metric, mode, CLASSES)


def test_the_job_derives_the_mode_and_refuses_a_contrary_one():
    assert SearchConfig(metric="val_loss").mode == "min" and SearchConfig().mode == "max"
    with pytest.raises(ValueError, match="would select the worst val_iou"):
        SearchConfig(metric="val_iou", mode="min")
    with pytest.raises(ValueError, match="String should match pattern"):
        SearchConfig(metric="val_accuracy")
    assert "val_dice_LV" in selectable_metrics(CLASSES)
