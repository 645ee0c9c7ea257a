"""The ``dataset:`` section of a job file, grouped by concern.

Two modes. *Slice mode* (``dims`` unset, as every job file before patch training):
:class:`PreprocessConfig` holds every setting that changes the preprocessed slices; it
alone (with the dataset's content) keys the cache. *Patch mode* (``dims`` 2 or 3): the
``auto`` settings are first resolved against the dataset
(:func:`hpsearch.data.job_plan.resolve_plan`), and :class:`VolumeConfig`, the resolved
settings that change the preprocessed cases, keys the cache. :class:`DatasetConfig`
adds where the data is and how to make it when it is synthetic.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from hpsearch.data.plan import Plan

Normalize = Literal["zscore_nonzero", "zscore", "none", "ct"]


class PreprocessConfig(BaseModel):
    """How volumes become 2D training slices.

    Attributes:
        slice_axis: Voxel axis the 2D slices are taken along (2: axial for most
            scans, short-axis slices for cardiac cine).
        image_size: In-plane size ``[height, width]`` every slice is brought to.
        resize: ``interpolate`` (linear for images, nearest for labels) or
            ``pad_crop`` (centre pad with zeros or centre crop, no resampling).
        normalize: Per case and channel: ``zscore_nonzero`` (over non-zero voxels,
            zero outside: skull-stripped MRI), ``zscore`` (all voxels), ``none``; or
            ``ct`` (patch mode only): clip to the training foreground's 0.5 and 99.5
            percentiles, then z-score with its mean and std (nnU-Net's CT scheme).
        keep_empty_fraction: Fraction of background-only slices kept in the
            *training* cases (validation keeps every slice so Dice is per volume).
        val_fraction: Fraction of cases held out for validation (split by case).
        split_seed: Seed of the case split and of the empty-slice subsampling.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    slice_axis: Literal[0, 1, 2] = 2
    image_size: tuple[int, int] = (128, 128)
    resize: Literal["interpolate", "pad_crop"] = "interpolate"
    normalize: Normalize = "zscore_nonzero"
    keep_empty_fraction: float = Field(0.25, ge=0.0, le=1.0)
    val_fraction: float = Field(0.2, gt=0.0, le=0.9)
    split_seed: int = 0

    @field_validator("image_size")
    @classmethod
    def _plausible_size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if not all(4 <= side <= 4096 for side in size):
            raise ValueError(f"each side must be in 4..4096, got {list(size)}")
        return size


class VolumeConfig(BaseModel):
    """The resolved patch-mode settings that change the preprocessed cases: the cache key.

    Attributes:
        dims: 2 or 3.
        slice_axis: For ``dims`` 2 the axis 2D patches are cut across; ``None`` for 3D.
        target_spacing: Voxel size in mm (X, Y, Z) the cases are resampled to, or
            ``None`` to keep every case on its own grid (``spacing: none``). For ``dims``
            2 the value along ``slice_axis`` is not used: each case keeps its own
            spacing there, as nnU-Net's 2D configuration does (slices are never
            interpolated between).
        normalize, val_fraction, split_seed: As in :class:`PreprocessConfig`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dims: Literal[2, 3]
    slice_axis: Literal[0, 1, 2] | None
    target_spacing: tuple[float, float, float] | None
    normalize: Normalize
    val_fraction: float = Field(gt=0.0, le=0.9)
    split_seed: int


# A region's name becomes part of metric names (MLflow, Ray): keep it plain.
_REGION_NAME = re.compile(r"[A-Za-z0-9_]+")

# Keys that only patch mode reads; given without ``dims`` they would be silently ignored.
_PATCH_KEYS = ("spacing", "patch_size", "foreground_fraction", "samples_per_epoch")


class DatasetConfig(PreprocessConfig):
    """Where the dataset is, plus how to preprocess it.

    In patch mode ``image_size``, ``resize`` and ``keep_empty_fraction`` are not used
    (they are slice-mode settings with defaults, so a slice-mode job file switched to
    patches with ``--set dataset.dims=2`` still loads).

    Attributes:
        dims: Leave unset for slice mode; 2 or 3 to train on 2D or 3D patches of
            whole cases preprocessed in physical space.
        spacing: Patch mode: ``auto`` (the plan's target spacing), ``none`` (every case
            keeps its own voxel grid) or ``[sx, sy, sz]`` in mm.
        patch_size: Patch mode: ``auto`` (the plan's) or ``[h, w]`` (dims 2, the two
            axes other than ``slice_axis``) / ``[x, y, z]`` (dims 3), in voxels at the
            target spacing.
        foreground_fraction: Patch mode: fraction of training patches centred on a
            voxel of a random foreground class (nnU-Net: one third).
        samples_per_epoch: Patch mode: training patches per epoch, so an epoch's compute
            does not depend on the batch size.
        path: Folder in MSD or nnU-Net v2 layout, relative to the working directory.
        synthetic: ``lv``, ``brats`` or ``brain``: generate the dataset at ``path`` first when
            the folder does not exist (demo and tests).
        synthetic_cases: Cases to generate.
        synthetic_seed: Seed of the generator.
        cache_dir: Where preprocessed arrays are kept; default
            ``$HPSEARCH_CACHE_DIR`` or ``~/.cache/hpsearch``. Never the dataset folder.
        folds: Cross-validation folds (2..20) over the cases left after the test split,
            grouped by patient; ``None``: one train/validation split by ``val_fraction``.
        splits: An nnU-Net ``splits_final.json`` whose folds to use (relative to the working
            directory); it decides the folds, ``folds`` if also given must match its count.
        test_fraction: Fraction (0..0.5] of the patients held out as a locked test split,
            seeded by ``split_seed``; used only when the dataset has no labelled
            ``imagesTs``/``labelsTs``. ``None``: no test split.
        group_pattern: A regular expression searched in each case id; its first capture
            group (or the whole match) is the patient id, so a patient's cases stay on one
            side of every split. Every case id must match.
        groups_file: Instead of ``group_pattern``: a JSON object ``{case_id: patient_id}`` or
            a CSV with columns ``case,group`` listing every case (labelled test cases
            included), relative to the working directory.
        regions: Evaluation regions, ``{name: [label values]}``: a region is the union of
            its label values (BraTS' whole tumour ``[1, 2, 4]``); names are letters, digits
            and ``_``, values declared foreground labels of the dataset.

    None of the split and region keys changes the preprocessed data's cache key
    (:meth:`preprocess`, :meth:`volume_config`): the cases are preprocessed one by one.
    """

    # Declared first so that the validators of the keys below can see it.
    dims: Literal[2, 3] | None = Field(None, validate_default=True)
    spacing: Literal["auto", "none"] | tuple[float, float, float] = "auto"
    patch_size: Literal["auto"] | tuple[int, ...] = "auto"
    foreground_fraction: float = Field(0.33, ge=0.0, le=1.0)
    samples_per_epoch: int = Field(256, ge=1)
    path: Path
    synthetic: Literal["lv", "brats", "brain"] | None = None
    synthetic_cases: int = Field(24, ge=2, le=10_000)
    synthetic_seed: int = 0
    cache_dir: Path | None = None
    folds: int | None = Field(None, ge=2, le=20)
    splits: Path | None = None
    test_fraction: float | None = Field(None, gt=0.0, le=0.5)
    group_pattern: str | None = None
    groups_file: Path | None = None
    regions: dict[str, list[int]] = Field(default_factory=dict)

    @field_validator("dims")
    @classmethod
    def _ct_needs_patches(cls, dims: int | None, info: ValidationInfo) -> int | None:
        if dims is None and info.data.get("normalize") == "ct":
            raise ValueError("normalize: ct is only available in patch mode; set dataset.dims to 2 or 3")
        return dims

    @field_validator(*_PATCH_KEYS)
    @classmethod
    def _only_with_dims(cls, value, info: ValidationInfo):
        # Runs only for keys the job gives (validate_default is off). A value equal to the
        # default is fine too: a search's state stores the whole job, defaults included.
        default = cls.model_fields[info.field_name].default
        if "dims" in info.data and info.data["dims"] is None and value != default:  # "dims" absent: own error
            raise ValueError(f"{info.field_name} is a patch-mode setting; set dataset.dims to 2 or 3")
        return value

    @field_validator("spacing", "patch_size", mode="before")
    @classmethod
    def _one_of_the_forms(cls, value, info: ValidationInfo):
        # One line for a wrong form, instead of pydantic's one per member of the union.
        words, forms = ("auto", "none"), "auto, none or [sx, sy, sz] in mm"
        if info.field_name == "patch_size":
            words, forms = ("auto",), "auto or a list of sizes in voxels, [h, w] or [x, y, z]"
        kinds = int if info.field_name == "patch_size" else (int, float)
        numbers = isinstance(value, (list, tuple)) and all(
            isinstance(v, kinds) and not isinstance(v, bool) for v in value
        )
        if value in words or (numbers and (info.field_name == "patch_size" or len(value) == 3)):
            return value
        raise ValueError(f"must be {forms}")

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, spacing):
        if isinstance(spacing, tuple) and not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"each spacing must be a positive number of mm, got {list(spacing)}")
        return spacing

    @field_validator("patch_size")
    @classmethod
    def _patch_matches_dims(cls, patch, info: ValidationInfo):
        if isinstance(patch, tuple):
            dims = info.data.get("dims")
            if dims is not None and len(patch) != dims:
                raise ValueError(f"needs {dims} sizes for dims {dims}, got {list(patch)}")
            if not all(1 <= side <= 4096 for side in patch):
                raise ValueError(f"each size must be in 1..4096 voxels, got {list(patch)}")
        return patch

    @field_validator("group_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return pattern

    @field_validator("groups_file")
    @classmethod
    def _one_grouping(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("group_pattern") is not None:
            raise ValueError("give either group_pattern or groups_file, not both")
        return path

    @field_validator("regions")
    @classmethod
    def _plausible_regions(cls, regions: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, values in regions.items():
            if not _REGION_NAME.fullmatch(name):
                raise ValueError(f"region name {name!r}: use letters, digits and _ only (it names metrics)")
            if not values:
                raise ValueError(f"region {name}: list at least one label value")
            if min(values) < 1:
                raise ValueError(f"region {name}: label values must be foreground values (>= 1), got {values}")
        # Sorted and once each: a region is a set of values.
        return {name: sorted(set(values)) for name, values in regions.items()}

    def preprocess(self) -> PreprocessConfig:
        """Slice mode: only the settings that change the arrays (the cache key)."""
        return PreprocessConfig(**self.model_dump(include=set(PreprocessConfig.model_fields)))

    def volume_config(self, plan: Plan) -> VolumeConfig:
        """Patch mode: the settings that change the preprocessed cases, with ``plan``'s
        (from :func:`~hpsearch.data.job_plan.resolve_plan`) spacing and slice axis."""
        if self.dims is None:
            raise ValueError("volume_config() is for patch mode (dataset.dims 2 or 3)")
        return VolumeConfig(
            dims=self.dims,
            slice_axis=plan.slice_axis if self.dims == 2 else None,
            target_spacing=plan.target_spacing if plan.resample else None,
            normalize=self.normalize,
            val_fraction=self.val_fraction,
            split_seed=self.split_seed,
        )
