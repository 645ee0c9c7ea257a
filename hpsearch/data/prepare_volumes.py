"""A dataset into :class:`~hpsearch.data.volume_data.VolumeData`: patch mode's preprocessing.

Every case goes through :func:`~hpsearch.data.physical.preprocess_case` (normalised,
resampled to the target spacing, channels first). Training labels are resampled alike
(one-hot masks, no invented classes) and come with a sample of each foreground class's
voxel positions, so the loader can centre patches on foreground without scanning the
case. Validation labels stay in the scan's own geometry, where Dice is computed.

Only one case is in memory at a time: with ``directory`` every array is written as
soon as it is made (the cache builds entries this way); without it the cases are kept
in memory (small datasets, tests). For ``normalize: ct`` the training cases are read
twice: once for the foreground statistics every case is then normalised with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.data.check import FingerprintBuilder
from hpsearch.data.config import VolumeConfig
from hpsearch.data.layouts import DatasetIndex
from hpsearch.data.physical import case_target, ct_statistics, foreground_intensities, preprocess_case
from hpsearch.data.plan import Plan
from hpsearch.data.preprocess import dataset_info, fold_cases
from hpsearch.data.splits import Fold
from hpsearch.data.resample import resample_labels
from hpsearch.data.volume_data import CASE_ARRAYS, VolumeData, load_volume_data, save_case_array, save_info
from hpsearch.data.volumes import load_case, refuse_defects

# nnU-Net's sample_foreground_locations: up to 10,000 voxels per class, but at least 1%
# of the class's voxels, drawn without replacement with a fixed seed.
LOCATIONS_PER_CLASS = 10_000
MIN_LOCATION_COVERAGE = 0.01
LOCATIONS_SEED = 1234


def foreground_locations(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, 4)`` int32 rows ``(class, x, y, z)``: a seeded sample of the voxels of each
    foreground class (1 .. ``num_classes`` - 1) present in ``labels``."""
    rng = np.random.default_rng(LOCATIONS_SEED)
    rows = [np.zeros((0, 4), np.int32)]
    for cls in range(1, num_classes):
        where = np.argwhere(labels == cls)
        if len(where) == 0:
            continue
        take = max(min(LOCATIONS_PER_CLASS, len(where)), int(np.ceil(len(where) * MIN_LOCATION_COVERAGE)))
        chosen = where[np.sort(rng.choice(len(where), take, replace=False))]
        rows.append(np.column_stack([np.full(take, cls), chosen]).astype(np.int32))
    return np.concatenate(rows)


def prepare_volumes(
    index: DatasetIndex,
    config: VolumeConfig,
    *,
    digest: str = "",
    plan: Plan | None = None,
    directory: Path | None = None,
    fold: Fold | None = None,
) -> VolumeData:
    """Load, check and preprocess every case of a dataset for patch training.

    Args:
        index: The dataset.
        config: The resolved settings (:meth:`DatasetConfig.volume_config`).
        digest: The dataset's content digest, recorded in ``info``.
        plan: Recorded as ``info["plan"]`` when given. The cache does not key on it (its
            patch and batch size follow a machine's memory budget) and replaces it on
            every open with the caller's.
        directory: A new folder to write the entry into case by case; the result is then
            opened from it memory-mapped.
        fold: The cases to train and validate on (see :func:`~hpsearch.data.preprocess.fold_cases`).

    Raises:
        HpsearchError: A case is unreadable or inconsistent, a defect of the declaration,
            or ``ct`` normalisation without foreground in the training cases.
    """
    refuse_defects(index, index.defects)
    by_id = {case.case_id: case for case in index.cases}
    split = fold_cases(index, config.val_fraction, config.split_seed, fold)
    train_ids, val_ids = list(split.train), list(split.val)
    intensity: dict[str, Any] = {}
    if config.normalize == "ct":  # statistics of the training cases only, before any is normalised
        samples = []
        for case_id in train_ids:
            volumes = load_case(index, by_id[case_id])
            samples.append(foreground_intensities(volumes.image, volumes.label))
        intensity = ct_statistics(samples)

    if directory is not None:
        Path(directory).mkdir(parents=True)
    parts: dict[str, list[Any]] = {name: [] for name in CASE_ARRAYS}

    def keep(name: str, array: np.ndarray) -> None:
        if directory is None:
            parts[name].append(array)
        else:  # on disk now; only the file name stays in memory
            parts[name].append(save_case_array(directory, name, len(parts[name]), array))

    fingerprint = FingerprintBuilder(index)
    num_classes = len(index.label_values)
    spacings: dict[str, list[float]] = {}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        for case_id in ids:
            volumes = load_case(index, by_id[case_id])
            fingerprint.add(volumes)
            spacing = [float(s) for s in volumes.spacing]
            spacings[case_id] = spacing
            keep(f"{split}_images", preprocess_case(volumes.image, spacing, config, intensity))
            if split == "val":
                keep("val_labels", volumes.label)  # the scan's own grid: Dice is computed there
                continue
            target = case_target(spacing, config)
            labels = volumes.label if target is None else resample_labels(volumes.label, spacing, target)
            keep("train_labels", labels)
            keep("train_foreground", foreground_locations(labels, num_classes))

    info = {
        **dataset_info(index, digest, train_ids, val_ids),
        "volume_config": config.model_dump(mode="json"),
        "plan": plan.to_dict() if plan is not None else None,
        "intensity": intensity,
        "case_spacings": spacings,
        "val_spacings": [spacings[case_id] for case_id in val_ids],
        "fingerprint": fingerprint.fingerprint().to_dict(),
    }
    if directory is None:
        return VolumeData(**parts, info=info)
    save_info(directory, info, {name: len(parts[name]) for name in CASE_ARRAYS})
    return load_volume_data(directory)
