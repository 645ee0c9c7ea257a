"""Segmentation metrics the way medical papers report them: per case, then averaged.

Dice of one class on one case is ``2|X ∩ Y| / (|X| + |Y|)`` over the case's voxels
(X predicted, Y ground truth); IoU is ``|X ∩ Y| / |X ∪ Y|``. A score is computed per
case (a volume, i.e. all slices of a patient) and per class, then averaged over
cases; pooling pixels over a batch would let large cases drown small ones.

**Empty vs. empty.** When a class is absent from both the prediction and the ground
truth of a case, its score is ``empty_score``: 1.0 by default, as in the BraTS
challenge (predicting nothing where there is nothing is right). A class that is
absent from the ground truth but predicted scores 0. Pass ``empty_score=nan`` to
leave such cases out of the class mean instead (the nnU-Net evaluation convention).

Pure functions (:func:`compute_dice`, :func:`compute_iou`) work on one case;
:class:`DiceMetric` accumulates cases and aggregates.

Example:
    >>> pred = np.array([[1, 1, 0, 0]])
    >>> true = np.array([[1, 0, 0, 0]])
    >>> compute_dice(pred, true, num_classes=2).round(3).tolist()   # 2*1/(2+1)
    [0.8, 0.667]
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np


def confusion_counts(pred: np.ndarray, true: np.ndarray, num_classes: int):
    """True positives, false positives and false negatives per class.

    Args:
        pred: Predicted class indices, any shape.
        true: Ground-truth class indices, same shape.
        num_classes: Number of classes ``C``.

    Returns:
        Three int64 arrays of shape ``(C,)``: tp, fp, fn.
    """
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {true.shape}")
    joint = true.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    confusion = np.bincount(joint, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(confusion)
    return tp, confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp


def dice_from_counts(tp, fp, fn, empty_score: float = 1.0) -> np.ndarray:
    """``2 tp / (2 tp + fp + fn)`` per class; ``empty_score`` where the denominator is 0."""
    return _ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + fp + fn, empty_score)


def iou_from_counts(tp, fp, fn, empty_score: float = 1.0) -> np.ndarray:
    """``tp / (tp + fp + fn)`` per class; ``empty_score`` where the denominator is 0."""
    return _ratio(np.asarray(tp), np.asarray(tp) + fp + fn, empty_score)


def compute_dice(pred, true, num_classes: int, empty_score: float = 1.0) -> np.ndarray:
    """Dice per class (background included at index 0) of one case."""
    return dice_from_counts(*confusion_counts(pred, true, num_classes), empty_score)


def compute_iou(pred, true, num_classes: int, empty_score: float = 1.0) -> np.ndarray:
    """IoU per class (background included at index 0) of one case."""
    return iou_from_counts(*confusion_counts(pred, true, num_classes), empty_score)


def _ratio(numerator, denominator, empty_score: float) -> np.ndarray:
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), empty_score)


@dataclasses.dataclass(frozen=True)
class SegmentationScores:
    """Per-case-averaged scores of a validation set.

    Attributes:
        dice: Mean Dice per class over cases, background at index 0.
        iou: Mean IoU per class over cases.
        num_cases: Cases averaged.
        region_dice, region_iou: Mean Dice and IoU over cases of each evaluation region
            (a union of classes, e.g. BraTS whole tumour); not part of :attr:`mean_dice`.
    """

    dice: np.ndarray
    iou: np.ndarray
    num_cases: int
    region_dice: dict[str, float] = dataclasses.field(default_factory=dict)
    region_iou: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def mean_dice(self) -> float:
        """Mean foreground Dice: the number a search optimises."""
        return float(np.nanmean(self.dice[1:])) if np.isfinite(self.dice[1:]).any() else float("nan")

    @property
    def mean_iou(self) -> float:
        return float(np.nanmean(self.iou[1:])) if np.isfinite(self.iou[1:]).any() else float("nan")


class DiceMetric:
    """Accumulate cases, then report per-class Dice and IoU averaged over cases.

    Args:
        num_classes: Number of classes including background.
        empty_score: Score of a class absent from both prediction and truth.
        regions: Region name -> the class indices it unites (BraTS whole tumour: the
            classes of labels 1, 2 and 4), scored per case like a class.

    Example:
        >>> metric = DiceMetric(num_classes=2)
        >>> _ = metric.update(np.array([1, 1, 0]), np.array([1, 0, 0]))   # one case
        >>> _ = metric.update(np.array([0, 0, 0]), np.array([0, 0, 0]))   # empty vs empty
        >>> round(metric.aggregate().mean_dice, 4)                    # (2/3 + 1) / 2
        0.8333
    """

    def __init__(self, num_classes: int, empty_score: float = 1.0, regions: dict[str, list[int]] | None = None):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and one class), got {num_classes}")
        for name, members in (regions or {}).items():
            if not members or not all(0 < int(c) < num_classes for c in members):
                raise ValueError(f"region {name!r}: class indices {list(members)} must be foreground classes "
                                 f"1..{num_classes - 1}")
        self.num_classes = num_classes
        self.empty_score = empty_score
        self.regions = {name: [int(c) for c in members] for name, members in (regions or {}).items()}
        self._dice: list[np.ndarray] = []
        self._iou: list[np.ndarray] = []
        self._regions: list[np.ndarray] = []  # per case: (dice, iou) of each region

    def update(self, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
        """Add one case (all its voxels or slices); return its per-class Dice."""
        counts = confusion_counts(pred, true, self.num_classes)
        dice = dice_from_counts(*counts, self.empty_score)
        self._dice.append(dice)
        self._iou.append(iou_from_counts(*counts, self.empty_score))
        if self.regions:
            scores = []
            for members in self.regions.values():
                union = confusion_counts(np.isin(pred, members), np.isin(true, members), 2)
                scores.append((dice_from_counts(*union, self.empty_score)[1], iou_from_counts(*union, self.empty_score)[1]))
            self._regions.append(np.asarray(scores, np.float64))
        return dice

    def update_slices(self, pred: np.ndarray, true: np.ndarray, case: np.ndarray) -> None:
        """Add slices labelled with their case index; each case is scored as a whole."""
        for case_index in np.unique(case):
            members = case == case_index
            self.update(pred[members], true[members])

    def aggregate(self) -> SegmentationScores:
        if not self._dice:
            raise ValueError("DiceMetric.aggregate() called before any update()")
        # nanmean warns for an all-NaN class (empty_score=nan and the class never
        # present); NaN is the right answer there, so the warning is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dice = np.nanmean(np.stack(self._dice), axis=0)
            iou = np.nanmean(np.stack(self._iou), axis=0)
            regions = np.nanmean(np.stack(self._regions), axis=0) if self._regions else np.zeros((0, 2))
        names = list(self.regions)
        return SegmentationScores(dice=dice, iou=iou, num_cases=len(self._dice),
                                  region_dice={n: float(v) for n, v in zip(names, regions[:, 0])},
                                  region_iou={n: float(v) for n, v in zip(names, regions[:, 1])})

    def reset(self) -> None:
        self._dice.clear()
        self._iou.clear()
        self._regions.clear()
