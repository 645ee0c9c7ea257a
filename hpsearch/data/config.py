"""The ``dataset:`` section of a job file, grouped by concern.

:class:`PreprocessConfig` holds every setting that changes the preprocessed arrays;
it alone (with the dataset's content) keys the cache. :class:`DatasetConfig` adds
where the data is and how to make it when it is synthetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PreprocessConfig(BaseModel):
    """How volumes become 2D training slices.

    Attributes:
        slice_axis: Voxel axis the 2D slices are taken along (2: axial for most
            scans, short-axis slices for cardiac cine).
        image_size: In-plane size ``[height, width]`` every slice is brought to.
        resize: ``interpolate`` (linear for images, nearest for labels) or
            ``pad_crop`` (centre pad with zeros or centre crop, no resampling).
        normalize: Per case and channel: ``zscore_nonzero`` (over non-zero voxels,
            zero outside: skull-stripped MRI), ``zscore`` (all voxels), ``none``.
        keep_empty_fraction: Fraction of background-only slices kept in the
            *training* cases (validation keeps every slice so Dice is per volume).
        val_fraction: Fraction of cases held out for validation (split by case).
        split_seed: Seed of the case split and of the empty-slice subsampling.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    slice_axis: Literal[0, 1, 2] = 2
    image_size: tuple[int, int] = (128, 128)
    resize: Literal["interpolate", "pad_crop"] = "interpolate"
    normalize: Literal["zscore_nonzero", "zscore", "none"] = "zscore_nonzero"
    keep_empty_fraction: float = Field(0.25, ge=0.0, le=1.0)
    val_fraction: float = Field(0.2, gt=0.0, le=0.9)
    split_seed: int = 0

    @field_validator("image_size")
    @classmethod
    def _plausible_size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if not all(4 <= side <= 4096 for side in size):
            raise ValueError(f"each side must be in 4..4096, got {list(size)}")
        return size


class DatasetConfig(PreprocessConfig):
    """Where the dataset is, plus how to preprocess it.

    Attributes:
        path: Folder in MSD or nnU-Net v2 layout, relative to the working directory.
        synthetic: ``lv``, ``brats`` or ``brain``: generate the dataset at ``path`` first when
            the folder does not exist (demo and tests).
        synthetic_cases: Cases to generate.
        synthetic_seed: Seed of the generator.
        cache_dir: Where preprocessed arrays are kept; default
            ``$HPSEARCH_CACHE_DIR`` or ``~/.cache/hpsearch``. Never the dataset folder.
    """

    path: Path
    synthetic: Literal["lv", "brats", "brain"] | None = None
    synthetic_cases: int = Field(24, ge=2, le=10_000)
    synthetic_seed: int = 0
    cache_dir: Path | None = None

    def preprocess(self) -> PreprocessConfig:
        """Only the settings that change the arrays (the cache key)."""
        return PreprocessConfig(**self.model_dump(include=set(PreprocessConfig.model_fields)))
