"""Per-case scores of one segmentation in its scan's own geometry: Dice, IoU, HD95.

Label maps hold *original* label values (BraTS 0, 1, 2, 4). Each foreground class
(label value != 0) is scored on its own mask; each *region* (a name and a list of
label values, e.g. ``whole_tumour = [1, 2, 4]``) on the union of its values' masks.
Dice and IoU are those of :mod:`hpsearch.metrics` (the numbers training validates
with); HD95 is MedPy's symmetric 95th percentile of surface distances, in mm
(the voxel spacing of the scan's header).

**Empty masks** (a class or region absent from the prediction, the truth, or both):

=====================  ======  =====  =====================================
prediction / truth     dice    iou    hd95 (mm)
=====================  ======  =====  =====================================
both empty             1.0     1.0    0.0
exactly one empty      0.0     0.0    the volume's diagonal in mm
=====================  ======  =====  =====================================

Predicting nothing where there is nothing is right (the BraTS convention, and
training's ``empty_score=1``). A structure missed entirely, or predicted where none is,
gets the largest distance possible in that scan, ``|shape * spacing|``: a finite
worst-case penalty (BraTS scripts use 373.13 mm, the diagonal of 240x240x155 at
1 mm), so means over cases stay finite and still punish the miss.

Example:
    >>> truth = np.zeros((4, 4, 4), np.uint8); truth[1, 1, 1] = 1
    >>> case_scores(truth, truth, label_values=[0, 1], class_names=["bg", "LV"], spacing=(1, 1, 1))
    {'LV': {'dice': 1.0, 'iou': 1.0, 'hd95': 0.0}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from medpy.metric.binary import hd95 as medpy_hd95

from hpsearch.metrics import confusion_counts, dice_from_counts, iou_from_counts
from hpsearch.selection import metric_name

SCORES = ("dice", "iou", "hd95")


def check_labels(
    label_values: Sequence[int],
    class_names: Sequence[str],
    regions: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Check a label declaration and its regions; return the regions normalised.

    Args:
        label_values: Every label value, background 0 included, in any order.
        class_names: The name of each value, aligned with ``label_values``.
        regions: Region name -> the foreground label values it unites.

    Returns:
        ``{name: sorted unique values}`` in the given order.

    Raises:
        ValueError: Misaligned names, no background 0, duplicate values, a region that
            is empty, names a value not in ``label_values`` or 0, or whose name (made
            metric-safe) clashes with a class's or another region's.
    """
    values = [int(v) for v in label_values]
    if len(values) != len(class_names):
        raise ValueError(f"{len(values)} label_values but {len(class_names)} class_names; give one name per value")
    if 0 not in values or len(set(values)) != len(values) or len(values) < 2:
        raise ValueError(f"label_values {values} must be distinct, include background 0 and one foreground value")
    taken = {metric_name(str(n)): str(n) for v, n in zip(values, class_names) if v != 0}
    if len(taken) != len(values) - 1:
        raise ValueError(f"class names {list(class_names)} are not distinct once made metric-safe")
    normalised: dict[str, tuple[int, ...]] = {}
    for name, members in (regions or {}).items():
        members = sorted({int(v) for v in members})
        if not members:
            raise ValueError(f"region {name!r} names no label values")
        unknown = [v for v in members if v not in values or v == 0]
        if unknown:
            raise ValueError(f"region {name!r} names label value(s) {unknown}; regions unite foreground "
                             f"values of label_values {values}")
        key = metric_name(str(name))
        if key in taken:
            raise ValueError(f"region {name!r} has the name of {taken[key]!r}; rename the region")
        taken[key] = str(name)
        normalised[str(name)] = tuple(members)
    return normalised


def case_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    label_values: Sequence[int],
    class_names: Sequence[str],
    spacing: Sequence[float],
    regions: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, dict[str, float]]:
    """Dice, IoU and HD95 of every foreground class and region of one case.

    Args:
        pred: Predicted label map, original label values, 3D.
        truth: Ground-truth label map, same shape and values.
        label_values: Every label value, background 0 included.
        class_names: The name of each value, aligned with ``label_values``.
        spacing: Voxel size in mm along each axis of the maps (the header's zooms).
        regions: Region name -> label values whose union it scores.

    Returns:
        ``{name: {"dice", "iou", "hd95"}}``: foreground classes in ascending label
        value, then regions in the given order. HD95 in mm; empty masks as in the
        module docstring.

    Raises:
        ValueError: Not 3D, shapes differ, bad spacing, a map holds a value outside
            ``label_values``, or a bad declaration (:func:`check_labels`).
    """
    regions = check_labels(label_values, class_names, regions)
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.ndim != 3 or pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} and ground truth shape {truth.shape} must be the same 3D shape")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must be three positive voxel sizes in mm")
    order = sorted(zip((int(v) for v in label_values), class_names))
    values = np.array([v for v, _ in order])
    pred_idx = _class_indices(pred, values, "prediction")
    truth_idx = _class_indices(truth, values, "ground truth")

    # All classes at once from one confusion matrix, exactly as training counts them.
    tp, fp, fn = confusion_counts(pred_idx, truth_idx, len(values))
    dice, iou = dice_from_counts(tp, fp, fn), iou_from_counts(tp, fp, fn)
    diagonal = float(np.linalg.norm(np.multiply(pred.shape, spacing)))
    scores = {}
    for index, (value, name) in enumerate(order):
        if value != 0:
            hd = _hd95(pred_idx == index, truth_idx == index, spacing, diagonal)
            scores[str(name)] = {"dice": float(dice[index]), "iou": float(iou[index]), "hd95": hd}
    for name, members in regions.items():
        indices = np.searchsorted(values, members)
        p, t = np.isin(pred_idx, indices), np.isin(truth_idx, indices)
        counts = [c[1:] for c in confusion_counts(p, t, 2)]  # class 1 of the mask: the region
        scores[name] = {"dice": float(dice_from_counts(*counts)[0]), "iou": float(iou_from_counts(*counts)[0]),
                        "hd95": _hd95(p, t, spacing, diagonal)}
    return scores


def _class_indices(labels: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
    """Label values -> class indices (positions in ``values``); any other value is refused."""
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"{what} holds non-integer values; label maps hold integer label values")
    found = np.unique(labels).astype(np.int64)
    unknown = sorted(set(found.tolist()) - set(values.tolist()))
    if unknown:
        raise ValueError(f"{what} holds label value(s) {unknown} not in label_values {values.tolist()}")
    return np.searchsorted(values, labels.astype(np.int64)).astype(np.uint8 if len(values) < 256 else np.int32)


def _hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], diagonal: float) -> float:
    """MedPy's HD95 (mm) on the masks' bounding box, with the empty-mask conventions.

    MedPy runs a distance transform over the whole array; cropping to the bounding box
    of both masks plus one voxel gives the same surfaces and distances (the margin keeps
    edge voxels' background neighbours) at a fraction of the cost on a 240x240x155 scan.
    """
    has_pred, has_truth = pred.any(), truth.any()
    if not has_pred and not has_truth:
        return 0.0
    if not has_pred or not has_truth:
        return diagonal
    where = np.argwhere(pred | truth)
    low, high = np.maximum(where.min(axis=0) - 1, 0), where.max(axis=0) + 2
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    return float(medpy_hd95(pred[box], truth[box], voxelspacing=spacing))
