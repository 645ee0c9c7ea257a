"""Datasets: NIfTI layouts, checks, plans, preprocessing into slices, and the on-disk cache.

The front door is :func:`load_dataset`: a job's ``dataset:`` section in, preprocessed
data out (generated first when synthetic and missing; cached): :class:`PreparedData`
slices in slice mode (``dims`` unset), whole :class:`VolumeData` cases in physical
space in patch mode (``dims`` 2 or 3, with the resolved plan in ``info["plan"]``).

Example:
    >>> from hpsearch.data import DatasetConfig, load_dataset
    >>> config = DatasetConfig(path="data/demo-lv", synthetic="lv", image_size=(64, 64))
    >>> data, from_cache = load_dataset(config)          # doctest: +SKIP
    >>> data.train_x.shape, data.class_names             # doctest: +SKIP
    ((190, 64, 64, 1), ['background', 'LV'])
"""

from __future__ import annotations

from hpsearch.data.cache import dataset_digest, default_cache_dir, prepare_cached, prepare_volumes_cached
from hpsearch.data.check import CheckReport, Fingerprint, check_dataset, header_fingerprint
from hpsearch.data.config import DatasetConfig, PreprocessConfig, VolumeConfig
from hpsearch.data.groups import case_groups
from hpsearch.data.job_plan import resolve_plan
from hpsearch.data.layouts import CaseFiles, DatasetIndex, read_index
from hpsearch.data.physical import (
    case_target,
    ct_statistics,
    foreground_intensities,
    normalize_case,
    preprocess_case,
    to_original_geometry,
)
from hpsearch.data.plan import DEFAULT_BASE_FILTERS, Plan, default_memory_budget, make_plan
from hpsearch.data.prepare_volumes import foreground_locations, prepare_volumes
from hpsearch.data.preprocess import (
    PreparedData,
    fit_in_plane,
    normalize_intensities,
    preprocess_label,
    preprocess_volume,
    split_cases,
)
from hpsearch.data.splits import (
    Fold,
    Splits,
    check_regions,
    make_splits,
    read_nnunet_splits,
    write_nnunet_splits,
)
from hpsearch.data.synth import synthesize
from hpsearch.data.volume_data import VolumeData, load_volume_data
from hpsearch.data.volumes import CaseVolumes, Defect, load_case, read_case, refuse_defects

__all__ = [
    "CaseFiles",
    "CaseVolumes",
    "CheckReport",
    "DatasetConfig",
    "DatasetIndex",
    "Defect",
    "Fingerprint",
    "Fold",
    "Plan",
    "PreparedData",
    "PreprocessConfig",
    "Splits",
    "VolumeConfig",
    "VolumeData",
    "case_groups",
    "case_target",
    "check_regions",
    "check_dataset",
    "ct_statistics",
    "dataset_digest",
    "default_cache_dir",
    "default_memory_budget",
    "fit_in_plane",
    "foreground_intensities",
    "foreground_locations",
    "header_fingerprint",
    "load_case",
    "load_dataset",
    "load_volume_data",
    "make_plan",
    "make_splits",
    "normalize_case",
    "normalize_intensities",
    "prepare_cached",
    "prepare_volumes",
    "prepare_volumes_cached",
    "preprocess_case",
    "preprocess_label",
    "preprocess_volume",
    "read_case",
    "read_index",
    "read_nnunet_splits",
    "resolve_plan",
    "split_cases",
    "split_dataset",
    "synthesize",
    "to_original_geometry",
    "write_nnunet_splits",
]


def split_dataset(config: DatasetConfig) -> tuple[DatasetIndex, Splits]:
    """The dataset's index restricted to the cases a search may read (its *pool*: every
    case but the locked test split), and the splits (:func:`make_splits`).

    Everything a search computes from the data (content digest, plan, preprocessing) goes
    through this index, so no test case is opened before the final evaluation. A synthetic
    dataset is generated at ``config.path`` first when nothing is there yet; an existing
    folder is never written to, and a broken symlink is reported, not replaced.
    """
    if config.synthetic and not config.path.exists() and not config.path.is_symlink():
        synthesize(config.synthetic, config.path, config.synthetic_cases, config.synthetic_seed)
    index = read_index(config.path)
    refuse_defects(index, index.defects)  # the declaration's own problems first, as `data check` names them
    splits = make_splits(index, config)
    return index.restricted(splits.pool), splits


def load_dataset(
    config: DatasetConfig,
    memory_budget_bytes: int | None = None,
    *,
    base_filters: int = DEFAULT_BASE_FILTERS,
    plan: Plan | None = None,
    fold: int = 0,
) -> tuple[PreparedData | VolumeData, bool]:
    """Preprocessed data of one fold for a job's dataset section (see :func:`split_dataset`).

    Args:
        config: The job's dataset section.
        memory_budget_bytes: Patch mode: the training memory the plan's patch and batch
            size must fit (default :func:`default_memory_budget`). Unused in slice mode.
        base_filters: Patch mode: the U-Net's first-level filters, for the same estimate.
        plan: Patch mode: use this plan instead of planning (a resumed search keeps the
            plan its checkpoints were trained with, whatever this machine's memory).
        fold: Which fold's train/validation split (0 for a single split).

    Returns:
        :class:`PreparedData` (slice mode) or :class:`VolumeData` (patch mode, with
        ``info["plan"]`` and ``info["sampling"]``: patches per epoch and foreground
        fraction), and whether it came from the cache. ``info["splits"]`` records every
        fold and the test cases (:meth:`Splits.to_dict`), ``info["fold"]`` this one.
    """
    index, splits = split_dataset(config)
    if config.dims is None:
        data, hit = prepare_cached(index, config.preprocess(), config.cache_dir, fold=splits.folds[fold])
    else:
        if plan is None:
            budget = default_memory_budget() if memory_budget_bytes is None else memory_budget_bytes
            plan = resolve_plan(index, config, budget, base_filters=base_filters)
        data, hit = prepare_volumes_cached(index, config.volume_config(plan), plan, config.cache_dir,
                                           fold=splits.folds[fold])
        # How training samples, recorded with the data so the trainer and the search state see it.
        data.info["sampling"] = {"samples_per_epoch": config.samples_per_epoch,
                                 "foreground_fraction": config.foreground_fraction}
    data.info.update(splits=splits.to_dict(), fold=fold, regions=dict(config.regions))
    return data, hit
