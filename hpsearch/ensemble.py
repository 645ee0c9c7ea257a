"""The k fold models of one cross-validated configuration, exported as one model.

A cross-validation trial trains the same configuration once per fold; each fold's model
saw different training cases. Averaging their class probabilities usually segments new
scans better than any one of them (nnU-Net's default "ensemble of the 5 folds"). The
export folder holds one ``.keras`` file per fold under ``members/`` and a
``hpsearch-model.json`` like a single export's, with ``format_version`` 2 and::

    "ensemble": {"members": ["fold_0.keras", ...], "combine": "mean of softmax probabilities",
                 "member_val_dice": [0.81, ...], "member_best_epoch": [7, ...]}

(an older hpsearch, which reads format 1 only, then says to use a newer one instead of
failing on the missing ``model.keras``). :class:`hpsearch.predict.ExportedModel` loads
either kind; its ``predict_batch`` returns ``log(mean_i softmax(member_i(x)))`` for an
ensemble, so every later step (softmax, resampling, argmax) sees the mean probabilities.

A trial checkpoint that cross-validated holds ``folds.json``::

    {"num_folds": k, "current": f,
     "done": [{"fold": 0, "best_value": 0.81, "best_epoch": 7, "best_val_dice": 0.81, "dir": "fold_0"}, ...]}

with each finished fold's :meth:`hpsearch.trainer.Trainer.save` folder in ``dir``.

Example:
    >>> members = fold_checkpoints(Path("trial/checkpoint_000012"))     # doctest: +SKIP
    >>> export_ensemble(members, Path("lv-ensemble"), data_info=data.info)  # doctest: +SKIP
    PosixPath('lv-ensemble')
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpsearch.search.folds import FOLDS_FILE
from hpsearch.errors import HpsearchError
from hpsearch.export import (
    META_FILE,
    check_out_dir,
    export_meta,
    merge_extra,
    model_from_checkpoint,
    read_checkpoint_state,
    save_verified,
    shared_settings,
    write_export,
)
from hpsearch.network import input_shape

ENSEMBLE_FORMAT = 2  # format 1 plus "ensemble"; members/ instead of model.keras
MEMBERS_DIR = "members"
COMBINE = "mean of softmax probabilities"

# Settings of how training split and sampled the cases: they differ between folds by design
# and prediction never reads them.
_TRAINING_ONLY = {"sampling", "val_fraction", "split_seed", "keep_empty_fraction"}

# What the message calls a setting the members disagree on.
_WHY = {
    "intensity": "intensity statistics (CT normalisation is fitted on each fold's training cases)",
    "preprocess": "slice preprocessing",
    "plan": "patch plan",
    "volume_config": "resampling settings",
    "hyperparameters": "hyperparameters",
    "model": "model family",
    "channel_names": "channels",
    "class_names": "classes",
    "label_values": "label values",
}


def fold_checkpoints(checkpoint: Path) -> list[Path]:
    """The finished folds' checkpoint folders of a cross-validation trial, fold 0 first.

    Args:
        checkpoint: A trial checkpoint folder holding ``folds.json``.

    Raises:
        HpsearchError: No ``folds.json`` (the search did not cross-validate), a damaged
            one, or fewer finished folds than ``num_folds``.
    """
    checkpoint = Path(checkpoint)
    path = checkpoint / FOLDS_FILE
    if not path.is_file():
        raise HpsearchError(f"{checkpoint}: no {FOLDS_FILE}; this search did not cross-validate; set dataset.folds "
                            "and search.cross_validation to export an ensemble, or export without --ensemble")
    try:
        folds = json.loads(path.read_text())
        total, done = int(folds["num_folds"]), list(folds["done"])
        entries = sorted((int(d["fold"]), str(d["dir"])) for d in done)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise HpsearchError(f"{path}: not a readable folds record ({type(exc).__name__}: {exc}); "
                            "export needs the checkpoint as the search left it") from None
    if len(entries) < total:
        raise HpsearchError(f"{path}: the best trial has {len(entries)} of {total} folds; an ensemble needs all "
                            "(resume the search to finish them, or export without --ensemble)")
    if [fold for fold, _ in entries] != list(range(total)):
        raise HpsearchError(f"{path}: done folds {[fold for fold, _ in entries]}, expected 0 to {total - 1}")
    for _, name in entries:
        # A plain name inside the checkpoint: the record must not point the export elsewhere.
        if Path(name).name != name or name in ("", ".", ".."):
            raise HpsearchError(f"{path}: fold dir {name!r} is not a folder name inside {checkpoint}")
    return [checkpoint / name for _, name in entries]


def member_files(directory: Path, meta: dict) -> list[Path]:
    """The member files an ensemble export's ``hpsearch-model.json`` lists, in order.

    Raises:
        HpsearchError: No members listed, or a name that is not a plain ``.keras`` file
            name (the metadata must not point outside the folder).
    """
    ensemble = meta.get("ensemble")
    names = ensemble.get("members") if isinstance(ensemble, dict) else None
    if not isinstance(names, list) or not names or not all(
            isinstance(n, str) and Path(n).name == n and n.endswith(".keras") for n in names):
        raise HpsearchError(f"{Path(directory) / META_FILE}: ensemble.members must list the member files "
                            f"(fold_0.keras, ...) in {MEMBERS_DIR}/; export again")
    return [Path(directory) / MEMBERS_DIR / name for name in names]


def export_ensemble(
    checkpoint_dirs: Sequence[Path],
    out_dir: Path,
    *,
    data_info: dict | Sequence[dict],
    extra: dict | None = None,
) -> Path:
    """Write the best-Dice weights of several checkpoints as one ensemble export folder.

    Args:
        checkpoint_dirs: :meth:`~hpsearch.trainer.Trainer.save` folders, one per member
            (:func:`fold_checkpoints`); member ``i`` is written as ``members/fold_i.keras``.
        out_dir: The export folder; must not exist or be empty. Written complete or not
            at all.
        data_info: ``PreparedData.info`` of the training data: one for all members, or
            one per member (cross-validation folds may differ in fitted statistics).
        extra: More metadata for the top level of ``hpsearch-model.json``.

    Returns:
        ``out_dir``.

    Raises:
        HpsearchError: No members, an incomplete checkpoint, members of different model
            families or hyperparameters or that need different preprocessing, a
            non-empty ``out_dir``, or a member that does not reload with ``safe_mode``.
    """
    dirs, out_dir = [Path(d) for d in checkpoint_dirs], Path(out_dir)
    if not dirs:
        raise HpsearchError(f"{out_dir}: an ensemble needs at least one member checkpoint")
    infos = [data_info] * len(dirs) if isinstance(data_info, dict) else list(data_info)
    if len(infos) != len(dirs):
        raise ValueError(f"{len(infos)} data_info for {len(dirs)} checkpoints")
    states = [read_checkpoint_state(d, info) for d, info in zip(dirs, infos)]
    _check_alike(dirs, states, infos)
    check_out_dir(out_dir)
    built = [model_from_checkpoint(d, state, info) for d, state, info in zip(dirs, states, infos)]
    names = [f"fold_{i}.keras" for i in range(len(dirs))]
    dice = [state.get("best_val_dice") for state in states]
    meta: dict[str, Any] = {
        **export_meta(states[0], built[0][1], infos[0]),
        "format_version": ENSEMBLE_FORMAT,
        # The cross-validation score: the mean over the folds of each fold's best Dice.
        "best_val_dice": statistics.fmean(dice) if None not in dice else None,
        "best_epoch": None,
        "epochs_trained": None,
        "ensemble": {
            "members": names,
            "combine": COMBINE,
            "member_val_dice": dice,
            "member_best_epoch": [state.get("best_epoch") for state in states],
            "member_dataset_digest": [state.get("data_digest") or info.get("digest") or ""
                                      for state, info in zip(states, infos)],
        },
    }
    meta = merge_extra(meta, extra)
    shape = input_shape(infos[0])

    def save(folder: Path) -> None:
        for (model, _), name in zip(built, names):
            save_verified(model, folder / MEMBERS_DIR / name, shape)

    return write_export(out_dir, meta, save)


def _check_alike(dirs: list[Path], states: list[dict], infos: list[dict]) -> None:
    """Members must be the same network fed the same way: their probabilities are averaged
    voxel by voxel, after one preprocessing of the scan."""
    reference = _fed_as(states[0], infos[0])
    for directory, state, info in zip(dirs[1:], states[1:], infos[1:]):
        member = _fed_as(state, info)
        for key in sorted(set(reference) | set(member)):
            if member.get(key) != reference.get(key):
                raise HpsearchError(
                    f"{directory} and {dirs[0]}: different {_WHY.get(key, key)}; an ensemble averages models "
                    "fed the same input, so export one fold without --ensemble"
                )


def _fed_as(state: dict, info: dict) -> dict[str, Any]:
    """The network and everything prediction does around it; not how training split and
    sampled the cases (folds differ there by design)."""
    settings = {key: value for key, value in shared_settings(info).items() if key not in _TRAINING_ONLY}
    for key in ("preprocess", "volume_config"):
        if key in settings:
            settings[key] = {k: v for k, v in settings[key].items() if k not in _TRAINING_ONLY}
    return {"model": state["model"], "hyperparameters": state.get("params"), **settings}
