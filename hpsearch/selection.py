"""The search metric: which per-epoch number picks the best epoch of a trial and the best trial.

One concept for the whole search: the job's ``search.metric`` and ``search.mode`` are checked
here against what training reports, the trainer keeps the weights of the best epoch by the
same metric, Ray Tune's checkpoints are ranked by it, and export takes that epoch. Scores
(Dice, IoU) are maximised, losses minimised; a job that asks otherwise is refused.

Example:
    >>> default_mode("val_loss"), default_mode("val_dice_LV")
    ('min', 'max')
    >>> selectable_metrics(["background", "necrotic core"])
    ['loss', 'val_dice', 'val_dice_necrotic_core', 'val_iou', 'val_loss']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hpsearch.errors import HpsearchError

LOSSES = ("loss", "val_loss")
SCORES = ("val_dice", "val_iou")
PATTERN = r"^(loss|val_loss|val_dice|val_iou|val_dice_[A-Za-z0-9_.-]+)$"


def metric_name(class_name: str) -> str:
    """A class name as MLflow and Ray accept it in a metric key."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", class_name).strip("_") or "class"


def default_mode(metric: str) -> str:
    """``min`` for a loss, ``max`` for a score."""
    return "min" if metric in LOSSES else "max"


def selectable_metrics(class_names: Sequence[str]) -> list[str]:
    """Every metric a search can select by, for a dataset's classes (background first)."""
    per_class = [f"val_dice_{metric_name(name)}" for name in class_names[1:]]
    return sorted([*LOSSES, *SCORES, *per_class])


def check_metric(metric: str, mode: str, class_names: Sequence[str] | None = None, where: str = "search") -> None:
    """Refuse a metric training does not report (for these classes) or a mode that would
    pick the worst epoch.

    Raises:
        HpsearchError: One line naming ``search.metric`` or ``search.mode``.
    """
    if class_names is not None and metric not in selectable_metrics(class_names):
        raise HpsearchError(f"{where}.metric: {metric} is not reported by training on this dataset; "
                            f"choose one of {', '.join(selectable_metrics(class_names))}")
    if mode != default_mode(metric):
        raise HpsearchError(f"{where}.mode: {mode} would select the worst {metric}; "
                            f"use {default_mode(metric)} or leave mode out")
