"""A training plan derived from a dataset's fingerprint, the way nnU-Net plans.

``hpsearch data plan DIR`` prints it: the target voxel spacing, the median image shape
at that spacing, a 2D or 3D patch size and batch size that fit a memory budget, and how
many times the U-Net can pool along each patch axis. The rules are nnU-Net's
(``nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py`` and
``network_topology.py``), rewritten here for a numpy fingerprint; each rule below names
the one it follows. Only the memory estimate differs: nnU-Net instantiates its network and
scales against reference values measured on a GPU; this module counts feature-map values
analytically (:func:`estimate_training_bytes`), with the same accounting as
:mod:`hpsearch.models.footprint` uses for built Keras models, so it runs without
TensorFlow and in microseconds.

Example:
    >>> report = check_dataset("data/demo-lv")                      # doctest: +SKIP
    >>> plan = make_plan(report.fingerprint, dims=3, memory_budget_bytes=4 * 2**30)  # doctest: +SKIP
    >>> print(plan.format())                                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpsearch.data.check import Fingerprint
from hpsearch.errors import HpsearchError
from hpsearch.models.footprint import BYTES, WEIGHT_COPIES
from hpsearch.models.options import UNet3DOptions

# nnU-Net's ANISO_THRESHOLD: an axis is "coarse" when its spacing exceeds 3x the others'
# and it holds fewer than a third of their voxels.
ANISOTROPY_THRESHOLD = 3.0
# nnU-Net takes the 10th percentile of the coarse axis's spacings: the median would
# resample the finer cases of such datasets (ACDC: 5 to 10 mm) with heavy artefacts.
COARSE_PERCENTILE = 10
# nnU-Net's UNet_featuremap_min_edge_length: no feature map is pooled below 4 voxels.
MIN_FEATURE_MAP = 4
# nnU-Net's UNet_min_batch_size: batch statistics (and instance norm's stability over
# the epoch) want at least two samples.
MIN_BATCH_SIZE = 2
# nnU-Net's max_dataset_covered: one step sees at most 5% of the dataset's voxels, so a
# small dataset does not become a handful of huge, nearly identical batches.
MAX_DATASET_COVERED = 0.05
# nnU-Net's UNet_max_features_2d / _3d: filters stop doubling there; deep levels would
# otherwise dominate the weights while adding little.
# The 3D value and the base are the 3D U-Net's own defaults (one owner: its options).
MAX_FILTERS = {2: 512, 3: UNet3DOptions.model_fields["max_filters"].default}
DEFAULT_BASE_FILTERS = UNet3DOptions.model_fields["base_filters"].default  # nnU-Net's UNet_base_num_features

# Feature-map values a U-Net keeps per voxel and filter of a level for the backward
# pass, counting every layer output as hpsearch.models.footprint does: the encoder's two
# conv blocks (conv, norm, activation each: 6), the decoder's upsampling (1), the
# concatenation with the skip (2) and its two conv blocks (6). The bottleneck has only
# the two conv blocks.
VALUES_PER_LEVEL = 6 + 1 + 2 + 6
VALUES_BOTTLENECK = 6
KERNEL = 3  # every conv is 3 wide along each axis, as in hpsearch's U-Net


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to train on; JSON-friendly through :meth:`to_dict`.

    Attributes:
        dims: 2 (slices) or 3 (volumes).
        target_spacing: Voxel size in mm along the volume axes X, Y, Z to resample to.
        median_spacing: The median spacing over training cases (the default target).
        coarse_axis: The axis given a finer target than its median because the data is
            strongly anisotropic along it, or ``None``.
        median_shape: Median image shape (X, Y, Z) at ``target_spacing``, in voxels.
        axes: The volume axes the patch spans (all three, or the two in-plane axes).
        slice_axis: For ``dims`` 2, the axis slices are taken along; else ``None``.
        patch_size: Patch size along ``axes``, a multiple of ``2**poolings`` on each.
        poolings: How many times the U-Net halves each patch axis.
        filters: Filters of each U-Net level, the bottleneck last.
        batch_size: Patches per training step.
        base_filters: Filters of the first level the estimate assumed.
        memory_budget_bytes: The budget the plan was made to fit.
        estimated_bytes: Estimated peak training memory of this patch and batch.
        resample: ``False`` for ``spacing: none``: every case keeps its own grid and
            ``target_spacing`` is only the median spacing the poolings were planned for.
        spacing_source: ``plan`` (the rule below), ``explicit`` (the job's) or ``none``.
        patch_source: ``plan`` or ``explicit`` (the job's, with poolings computed for it).
    """

    dims: int
    target_spacing: tuple[float, ...]
    median_spacing: tuple[float, ...]
    coarse_axis: int | None
    median_shape: tuple[int, ...]
    axes: tuple[int, ...]
    slice_axis: int | None
    patch_size: tuple[int, ...]
    poolings: tuple[int, ...]
    filters: tuple[int, ...]
    batch_size: int
    base_filters: int
    memory_budget_bytes: int
    estimated_bytes: int
    resample: bool = True
    spacing_source: str = "plan"
    patch_source: str = "plan"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Plan:
        """The plan :meth:`to_dict` wrote (e.g. into a search's state, to resume on the same plan)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def format(self) -> str:
        """The plan as aligned text lines, like ``data check``'s fingerprint."""
        coarse = (
            f"; axis {self.coarse_axis} is coarse: its {COARSE_PERCENTILE}th percentile"
            if self.coarse_axis is not None else ""
        )
        source = {"explicit": ", from the job", "none": "; not resampled: each case keeps its own"}
        kept = f"; axis {self.slice_axis} keeps each case's own" if self.dims == 2 and self.resample else ""
        bottleneck = [p // 2**n for p, n in zip(self.patch_size, self.poolings)]
        where = f"slices along axis {self.slice_axis}, axes" if self.dims == 2 else "axes"
        return "\n".join([
            f"dims        {self.dims}",
            f"spacing mm  {_fmt(self.target_spacing)} (median {_fmt(self.median_spacing)}{coarse}"
            f"{source.get(self.spacing_source, '')}{kept})",
            f"median      {_fmt(self.median_shape)} voxels at that spacing",
            f"patch       {_fmt(self.patch_size)} ({where} {','.join(map(str, self.axes))}"
            f"{', from the job' if self.patch_source == 'explicit' else ''})",
            f"batch       {self.batch_size}",
            f"poolings    {_fmt(self.poolings)} (bottleneck {_fmt(bottleneck)})",
            f"filters     {', '.join(map(str, self.filters))}",
            f"memory      about {self.estimated_bytes / 2**30:.2f} GiB to train, "
            f"budget {self.memory_budget_bytes / 2**30:.2f} GiB",
        ])


def make_plan(
    fingerprint: Fingerprint,
    dims: int,
    memory_budget_bytes: int,
    base_filters: int = DEFAULT_BASE_FILTERS,
    slice_axis: int | None = None,
    *,
    spacing: Sequence[float] | None = None,
    resample: bool = True,
    patch_size: Sequence[int] | None = None,
) -> Plan:
    """The plan for training a ``dims``-D U-Net on this dataset within the budget.

    Args:
        fingerprint: From :func:`~hpsearch.data.check_dataset` or
            :func:`~hpsearch.data.check.header_fingerprint` (needs per-case spacings).
        dims: 2 or 3.
        memory_budget_bytes: Peak training memory allowed (CPU RAM or a GPU's share).
        base_filters: Filters of the U-Net's first level.
        slice_axis: For ``dims`` 2, the axis to slice along; default the coarsest.
        spacing: A target spacing (mm) to use instead of :func:`target_spacing`'s.
        resample: ``False``: cases keep their own grids (``spacing: none``); the median
            shape is that of the raw cases and the poolings follow the median spacing.
        patch_size: A patch (along the plan's ``axes``) to use instead of the planned
            one; its poolings are computed for it, its batch size fitted to the budget.

    For ``dims`` 2 every case keeps its own spacing along ``slice_axis`` (nnU-Net's
    2D configuration does not resample between slices), so the median shape along it
    is that of the raw cases.

    Raises:
        HpsearchError: No readable case, bad arguments, a budget too small for even
            the smallest patch at batch size 2, or a ``patch_size`` that cannot pool,
            is not a multiple of its poolings or does not fit the budget.
    """
    if dims not in (2, 3):
        raise HpsearchError(f"dims: must be 2 or 3, got {dims!r}")
    if not (isinstance(base_filters, int) and base_filters >= 1):
        raise HpsearchError(f"base_filters: must be a positive integer, got {base_filters!r}")
    if not fingerprint.spacings or len(fingerprint.spacings) != len(fingerprint.shapes):
        raise HpsearchError(f"{fingerprint.root}: no readable case to plan from; run `hpsearch data check`")
    spacings = np.asarray(fingerprint.spacings, dtype=np.float64)
    shapes = np.asarray(fingerprint.shapes, dtype=np.float64)
    median_spacing = np.median(spacings, axis=0)
    if not resample:
        target, coarse_axis = median_spacing, None
    elif spacing is not None:
        target, coarse_axis = np.asarray(spacing, dtype=np.float64), None
    else:
        target, coarse_axis = target_spacing(spacings, shapes)

    if dims == 3:
        axes, slice_axis = (0, 1, 2), None
    else:
        if slice_axis is None:
            # The coarsest axis of the median spacing; ties go to the last axis, which is
            # hpsearch's default slice axis (axial for most scans).
            slice_axis = int(2 - np.argmax(median_spacing[::-1]))
        if slice_axis not in (0, 1, 2):
            raise HpsearchError(f"slice_axis: must be 0, 1 or 2, got {slice_axis!r}")
        axes = tuple(a for a in range(3) if a != slice_axis)
    # Per case its shape after resampling (nnU-Net's compute_new_shape), then the median.
    case_targets = np.tile(target, (len(shapes), 1)) if resample else spacings.copy()
    if slice_axis is not None:
        case_targets[:, slice_axis] = spacings[:, slice_axis]
    resampled = np.maximum(np.round(shapes * spacings / case_targets), 1)
    median_shape = np.maximum(np.round(np.median(resampled, axis=0)), 1).astype(int)
    along = [float(target[a]) for a in axes]
    limit = [int(median_shape[a]) for a in axes]
    channels, classes = len(fingerprint.channels), len(fingerprint.label_values)

    def bytes_for(patch, pools, batch):
        return estimate_training_bytes(patch, pools, base_filters, channels, classes, batch)

    if patch_size is not None:
        patch, pools = _explicit_patch(along, patch_size, axes)
        if bytes_for(patch, pools, MIN_BATCH_SIZE) > memory_budget_bytes:
            raise HpsearchError(
                f"dataset.patch_size: {list(patch)} needs about {bytes_for(patch, pools, MIN_BATCH_SIZE) / 2**30:.3g} "
                f"GiB to train at batch size {MIN_BATCH_SIZE}, over the budget of {memory_budget_bytes / 2**30:.3g} "
                "GiB; choose a smaller patch or patch_size: auto"
            )
    else:
        # nnU-Net starts from the median shape (never a patch larger than the data needs)
        # and shrinks the axis that is largest relative to the median shape until a batch
        # of two fits.
        patch, pools = fit_poolings(along, limit)
        while bytes_for(patch, pools, MIN_BATCH_SIZE) > memory_budget_bytes:
            patch, pools = _shrink(along, patch, pools, limit, memory_budget_bytes)

    fixed = bytes_for(patch, pools, 0)
    per_sample = bytes_for(patch, pools, 1) - fixed
    batch = (memory_budget_bytes - fixed) // per_sample
    dataset_voxels = float(np.prod(median_shape)) * len(fingerprint.shapes)  # nnU-Net's approximation
    covered = round(dataset_voxels * MAX_DATASET_COVERED / math.prod(patch))
    batch = int(max(min(batch, covered), MIN_BATCH_SIZE))
    return Plan(
        dims=dims,
        target_spacing=tuple(round(float(s), 6) for s in target),
        median_spacing=tuple(round(float(s), 6) for s in median_spacing),
        coarse_axis=coarse_axis,
        median_shape=tuple(int(s) for s in median_shape),
        axes=axes,
        slice_axis=slice_axis,
        patch_size=tuple(patch),
        poolings=tuple(pools),
        filters=level_filters(base_filters, max(pools) + 1, len(axes)),
        batch_size=batch,
        base_filters=base_filters,
        memory_budget_bytes=int(memory_budget_bytes),
        estimated_bytes=bytes_for(patch, pools, batch),
        resample=resample,
        spacing_source="none" if not resample else "explicit" if spacing is not None else "plan",
        patch_source="explicit" if patch_size is not None else "plan",
    )


def _explicit_patch(spacing: Sequence[float], size: Sequence[int], axes) -> tuple[list[int], list[int]]:
    """A job's patch and its poolings, refused if the U-Net cannot use it as it is."""
    patch = [int(s) for s in size]
    if len(patch) != len(axes):
        raise HpsearchError(f"dataset.patch_size: needs {len(axes)} sizes (axes {list(axes)}), got {patch}")
    pools = poolings(spacing, patch)
    if max(pools) == 0:
        raise HpsearchError(
            f"dataset.patch_size: {patch} is too small to pool even once (an axis needs at least "
            f"{2 * MIN_FEATURE_MAP} voxels); choose a larger patch or patch_size: auto"
        )
    fitted, _ = fit_poolings(spacing, patch)
    if fitted != patch:
        raise HpsearchError(
            f"dataset.patch_size: {patch} is not a multiple of 2**poolings {pools} on each axis, which the "
            f"U-Net's pooling needs; use {fitted} (or patch_size: auto)"
        )
    return patch, pools


def default_memory_budget() -> int:
    """A quarter of this machine's RAM: the CPU training budget when none is given."""
    import psutil

    return int(psutil.virtual_memory().total // 4)


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, int | None]:
    """nnU-Net's rule (``determine_fullres_target_spacing``): the median spacing per axis,
    except that the coarsest axis of strongly anisotropic data takes the 10th percentile
    of its spacings, but never finer than the other axes.

    Args:
        spacings, shapes: One row per case, in mm and voxels.

    Returns:
        The target spacing and the coarse axis if the exception applied, else ``None``.
    """
    target = np.median(spacings, axis=0)
    median_voxels = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    coarse_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[a] for a in others)
    few_voxels = median_voxels[worst] * ANISOTROPY_THRESHOLD < min(median_voxels[a] for a in others)
    if not (coarse_spacing and few_voxels):
        return target, None
    target = target.copy()
    target[worst] = max(np.percentile(spacings[:, worst], COARSE_PERCENTILE), max(target[a] for a in others))
    return target, worst


def poolings(spacing: Sequence[float], size: Sequence[int]) -> list[int]:
    """How often a U-Net can halve each axis of a patch of ``size`` voxels.

    nnU-Net's ``get_pool_and_conv_props``: at each step, every axis whose map is still
    at least 2 x 4 voxels and whose current spacing is within a factor 2 of the finest
    such axis is pooled, which doubles its spacing. So a coarse axis waits until the
    fine axes have caught up with it (anisotropic pooling), and each pooled map keeps at
    least :data:`MIN_FEATURE_MAP` voxels. (nnU-Net's extra condition for the case where
    only one axis is left is not applied.)
    """
    current, sizes = [float(s) for s in spacing], [int(s) for s in size]
    pools = [0] * len(sizes)
    while True:
        able = [a for a in range(len(sizes)) if sizes[a] >= 2 * MIN_FEATURE_MAP]
        if not able:
            return pools
        finest = min(current[a] for a in able)
        for a in able:
            if current[a] < 2 * finest:
                pools[a] += 1
                current[a] *= 2
                sizes[a] //= 2


def fit_poolings(spacing: Sequence[float], size: Sequence[int]) -> tuple[list[int], list[int]]:
    """The largest patch no larger than ``size`` that is a multiple of ``2**poolings`` on
    each axis, and its poolings.

    nnU-Net pads the patch *up* to the multiple and may exceed the median shape (a
    "todo" in its planner); rounding down keeps the patch inside the data. Rounding down
    keeps every pooling of the axis (a size >= 2**(n+2) stays so), so one pass usually
    settles; the loop makes sure.
    """
    patch = [int(s) for s in size]
    while True:
        pools = poolings(spacing, patch)
        rounded = [p // 2**n * 2**n for p, n in zip(patch, pools)]
        if rounded == patch:
            return patch, pools
        patch = rounded


def _shrink(spacing, patch, pools, limit, budget) -> tuple[list[int], list[int]]:
    """One step down along the axis largest relative to the median shape that can still
    shrink (nnU-Net's loop in ``get_plans_for_configuration``)."""
    order = sorted(range(len(patch)), key=lambda a: patch[a] / limit[a], reverse=True)
    for axis in order:
        # Subtracting the axis's own multiple would skip valid sizes (256 - 64 = 192 skips
        # 224 = 7 x 32); nnU-Net subtracts the multiple of the size one step down instead.
        below = list(patch)
        below[axis] -= 2 ** pools[axis]
        step = 2 ** poolings(spacing, below)[axis]
        smaller = list(patch)
        smaller[axis] -= step
        if smaller[axis] >= MIN_FEATURE_MAP:
            return fit_poolings(spacing, smaller)
    raise HpsearchError(
        f"memory budget of {budget / 2**30:.3g} GiB is too small for even a "
        f"{'x'.join(map(str, patch))} patch at batch size {MIN_BATCH_SIZE}; raise --memory-gb or lower base_filters"
    )


def level_filters(base_filters: int, levels: int, dims: int) -> tuple[int, ...]:
    """Filters per U-Net level: doubled each level, capped at nnU-Net's maximum."""
    return tuple(min(base_filters * 2**level, MAX_FILTERS[dims]) for level in range(levels))


def estimate_training_bytes(
    patch: Sequence[int], pools: Sequence[int], base_filters: int, channels: int, classes: int, batch: int,
) -> int:
    """Peak memory of training a U-Net on ``batch`` patches, without building it.

    The accounting of :func:`hpsearch.models.footprint.training_bytes`:

    * weights: every 3-wide conv (two per encoder level, bottleneck and decoder level),
      each transposed 2-wide upsampling conv and the 1-wide head, 4 bytes per weight in
      5 copies (weights, gradients, Adam's two slots, the best epoch's copy);
    * activations: per level, its voxels x filters x :data:`VALUES_PER_LEVEL` values
      (:data:`VALUES_BOTTLENECK` at the bottleneck), plus the input and the softmax
      output, each kept for the backward pass and matched by a gradient: 2 x 4 bytes per
      value and sample. Level ``l`` halves axis ``a`` ``min(l, pools[a])`` times.

    Biases and norm parameters are left out (under 1% of the weights).
    """
    dims = len(patch)
    filters = level_filters(base_filters, max(pools) + 1, dims)
    kernel = KERNEL**dims
    values = math.prod(patch) * (channels + classes)
    weights = filters[0] * classes  # the 1-wide head
    for level, f in enumerate(filters):
        voxels = math.prod(p // 2 ** min(level, n) for p, n in zip(patch, pools))
        f_in = filters[level - 1] if level else channels
        weights += kernel * (f_in * f + f * f)  # this level's (encoder or bottleneck) conv pair
        if level == len(filters) - 1:
            values += voxels * f * VALUES_BOTTLENECK
            continue
        values += voxels * f * VALUES_PER_LEVEL
        f_up = filters[level + 1]
        pooled = sum(1 for n in pools if n > level)  # axes this level's pooling halves
        weights += 2**pooled * f_up * f + kernel * (2 * f * f + f * f)  # upsampling, decoder conv pair
    return int(weights * BYTES * WEIGHT_COPIES + 2 * BYTES * batch * values)


def _fmt(values: Sequence[float]) -> str:
    return "x".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values)
