"""The best trial's predictions on a few validation slices, drawn over the image.

One row per slice: the image, the ground truth over it, the prediction over it, with the
slice's Dice per foreground class (:func:`hpsearch.metrics.compute_dice`) in the title.
Slices are chosen where the ground truth has the most foreground, one per validation case
first, so the rows show different patients and something to segment.

The model is the best trial's best checkpoint (``results.json``), rebuilt as ``hpsearch
export`` rebuilds it, on the validation slices the search scored it on (from the
preprocessing cache). TensorFlow is imported here, once the search is over.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from hpsearch.dashboard.collect import Search
from hpsearch.metrics import compute_dice
from hpsearch.search.folds import fold_zero

CLASS_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#ffff33", "#a65628")


@dataclasses.dataclass
class Overlays:
    """A PNG of the overlays, or why there is none.

    Attributes:
        png: The figure as PNG bytes (empty if ``message``).
        trial_id: The trial whose model predicted.
        slices: Per row: case id, slice number within the case, Dice per foreground class.
        message: Why there are no overlays ("" if there are).
    """

    png: bytes
    trial_id: str = ""
    slices: list[dict] = dataclasses.field(default_factory=list)
    message: str = ""


def best_trial_overlays(search: Search, count: int = 4) -> Overlays:
    """Overlays of the best trial's predictions on ``count`` validation slices (patch mode:
    one slice of each of ``count`` whole validation scans).

    Returns an :class:`Overlays` with a ``message`` instead of a picture when the search
    kept no checkpoint to predict with (an unfinished search has no ``results.json``).
    """
    from hpsearch.data import load_dataset
    from hpsearch.spec import Job
    from hpsearch.trainer import STATE_FILE

    best = search.best_trial()
    if best is None:
        return Overlays(b"", message="no finished trial")
    # A cross-validated trial: fold 0's model, the one the recorded validation cases validate.
    checkpoint = fold_zero(Path(best.checkpoint)) if best.checkpoint else None
    if checkpoint is None or not (checkpoint / STATE_FILE).is_file():
        where = checkpoint or f"{search.experiment_dir}/results.json"
        return Overlays(b"", best.trial_id, message=f"no checkpoint of trial {best.trial_id} at {where} "
                                                    "(the search has not finished, or its storage was cleaned)")
    job = Job.model_validate(search.job)
    if job.dataset.dims is not None:
        return _case_overlays(search, job, checkpoint, best.trial_id, count)
    data, _ = load_dataset(job.dataset)
    rows = pick_slices(np.asarray(data.val_y), np.asarray(data.val_case), count)
    x, truth = np.asarray(data.val_x[rows]), np.asarray(data.val_y[rows])
    prediction = _predict(checkpoint, search.data_info, x)
    names = data.class_names
    slices = []
    for i, row in enumerate(rows):
        case = int(data.val_case[row])
        dice = compute_dice(prediction[i], truth[i], len(names))
        slices.append({"case": data.info["val_cases"][case], "slice": int(row - np.argmax(data.val_case == case)),
                       "dice": {name: float(d) for name, d in zip(names[1:], dice[1:])}})
    png = _draw(x[..., 0], truth, prediction, names, slices, best.trial_id)
    return Overlays(png, best.trial_id, slices)


def _case_overlays(search: Search, job, checkpoint: Path, trial_id: str, count: int) -> Overlays:
    """Patch mode: whole validation scans segmented as ``hpsearch predict`` would, one slice
    each (the fullest along the slice axis), in the scan's own geometry."""
    from hpsearch.data import load_case, read_index
    from hpsearch.segment import keras_logits, segment_scan

    info = search.data_info
    index = read_index(job.dataset.path)
    by_id = {case.case_id: case for case in index.cases}
    model = _model(checkpoint, info)
    axis = info["plan"].get("slice_axis")
    axis = job.dataset.slice_axis if axis is None else axis
    names, images, truths, predictions, slices = list(info["class_names"]), [], [], [], []
    for case_id in info["val_cases"][:count]:
        volumes = load_case(index, by_id[case_id])
        predicted = segment_scan(volumes.image, volumes.spacing, keras_logits(model), info)
        dice = compute_dice(predicted, volumes.label, len(names))
        truth = np.moveaxis(volumes.label, axis, 0)
        row = int(np.argmax((truth > 0).reshape(len(truth), -1).sum(axis=1)))
        images.append(np.moveaxis(volumes.image[..., 0], axis, 0)[row])
        truths.append(truth[row])
        predictions.append(np.moveaxis(predicted, axis, 0)[row])
        slices.append({"case": case_id, "slice": row, "dice": {n: float(d) for n, d in zip(names[1:], dice[1:])}})
    png = _draw(images, truths, predictions, names, slices, trial_id)
    return Overlays(png, trial_id, slices)


def pick_slices(labels: np.ndarray, cases: np.ndarray, count: int) -> list[int]:
    """Indices of up to ``count`` slices with the most foreground, one per case first.

    Args:
        labels: ``(N, H, W)`` class indices of the validation slices.
        cases: ``(N,)`` case of each slice.
        count: How many slices at most.

    Example:
        >>> y = np.zeros((4, 2, 2), int); y[1, 0, 0] = y[2] = 1
        >>> pick_slices(y, np.array([0, 0, 1, 1]), 2)
        [2, 1]
    """
    foreground = (labels > 0).reshape(len(labels), -1).sum(axis=1)
    order = [int(i) for i in np.argsort(-foreground, kind="stable") if foreground[i] > 0]
    first, rest, seen = [], [], set()
    for index in order:  # the fullest slice of each case, then the next fullest of any case
        (rest if int(cases[index]) in seen else first).append(index)
        seen.add(int(cases[index]))
    return (first + rest)[:count]


def _model(checkpoint: Path, data_info: dict):
    from hpsearch.export import model_from_checkpoint
    from hpsearch.trainer import STATE_FILE

    state = json.loads((checkpoint / STATE_FILE).read_text())
    return model_from_checkpoint(checkpoint, state, data_info)[0]


def _predict(checkpoint: Path, data_info: dict, x: np.ndarray) -> np.ndarray:
    model = _model(checkpoint, data_info)
    # A direct call, not predict(): a handful of slices, no tf.function tracing to pay.
    return np.argmax(np.asarray(model(x, training=False)), axis=-1).astype(np.uint8)


def _draw(images, truth, prediction, names, slices, trial_id: str) -> bytes:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from hpsearch.dashboard.static import png_bytes, pyplot

    plt = pyplot()
    colors = ListedColormap(["none", *CLASS_COLORS[: len(names) - 1]])
    fig, axes = plt.subplots(len(slices), 3, figsize=(9, 3.1 * len(slices) + 0.6), squeeze=False)
    for row, (image, true, pred, info) in enumerate(zip(images, truth, prediction, slices)):
        dice = ", ".join(f"{name} {d:.3f}" for name, d in info["dice"].items())
        titles = (f"{info['case']}, slice {info['slice']}", "ground truth", f"prediction: Dice {dice}")
        for col, (title, mask) in enumerate(zip(titles, (None, true, pred))):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", interpolation="nearest")
            if mask is not None:
                ax.imshow(np.ma.masked_equal(mask, 0), cmap=colors, vmin=0, vmax=len(names) - 1, alpha=0.5,
                          interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    handles = [Patch(color=CLASS_COLORS[i], alpha=0.6, label=name) for i, name in enumerate(names[1:])]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Best trial {trial_id}: predictions on validation slices", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    return png_bytes(fig)
