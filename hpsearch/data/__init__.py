"""Datasets: NIfTI layouts, checks, plans, preprocessing into slices, and the on-disk cache.

The front door is :func:`load_dataset`: a job's ``dataset:`` section in, preprocessed
:class:`PreparedData` out (generated first when synthetic and missing; cached).

Example:
    >>> from hpsearch.data import DatasetConfig, load_dataset
    >>> config = DatasetConfig(path="data/demo-lv", synthetic="lv", image_size=(64, 64))
    >>> data, from_cache = load_dataset(config)          # doctest: +SKIP
    >>> data.train_x.shape, data.class_names             # doctest: +SKIP
    ((190, 64, 64, 1), ['background', 'LV'])
"""

from __future__ import annotations

from hpsearch.data.cache import dataset_digest, default_cache_dir, prepare_cached
from hpsearch.data.check import CheckReport, Fingerprint, check_dataset
from hpsearch.data.config import DatasetConfig, PreprocessConfig
from hpsearch.data.layouts import CaseFiles, DatasetIndex, read_index
from hpsearch.data.plan import Plan, make_plan
from hpsearch.data.preprocess import (
    PreparedData,
    fit_in_plane,
    normalize_intensities,
    preprocess_label,
    preprocess_volume,
    split_cases,
)
from hpsearch.data.synth import synthesize
from hpsearch.data.volumes import CaseVolumes, Defect, load_case, read_case

__all__ = [
    "CaseFiles",
    "CaseVolumes",
    "CheckReport",
    "DatasetConfig",
    "DatasetIndex",
    "Defect",
    "Fingerprint",
    "Plan",
    "PreparedData",
    "PreprocessConfig",
    "check_dataset",
    "dataset_digest",
    "default_cache_dir",
    "fit_in_plane",
    "load_case",
    "load_dataset",
    "make_plan",
    "normalize_intensities",
    "prepare_cached",
    "preprocess_label",
    "preprocess_volume",
    "read_case",
    "read_index",
    "split_cases",
    "synthesize",
]


def load_dataset(config: DatasetConfig) -> tuple[PreparedData, bool]:
    """Preprocessed slices for a job's dataset section.

    A synthetic dataset is generated at ``config.path`` when nothing is there yet; an
    existing folder is never written to, and a broken symlink is reported, not replaced.

    Returns:
        The data and whether it came from the cache.
    """
    if config.synthetic and not config.path.exists() and not config.path.is_symlink():
        synthesize(config.synthetic, config.path, config.synthetic_cases, config.synthetic_seed)
    index = read_index(config.path)
    return prepare_cached(index, config.preprocess(), config.cache_dir)
