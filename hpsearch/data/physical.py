"""One case into and out of physical space: normalisation, resampling and the way back.

Patch mode (``dataset.dims`` 2 or 3) trains on whole cases normalised and resampled to
the plan's target spacing. The functions here are the *only* path a case takes, both
when the training cache is built (:mod:`hpsearch.data.prepare_volumes`) and when
``hpsearch predict`` reads a new scan, and the only way back from a prediction at the
target spacing to the scan's own grid: so validation Dice, computed after
:func:`to_original_geometry`, is what ``predict`` would score. They are deterministic
(SciPy splines, no randomness) and hold no state beyond their arguments.

Order and rules follow nnU-Net's ``DefaultPreprocessor``: normalise first (per case for
MRI; with dataset statistics for CT), then resample (:mod:`hpsearch.data.resample`).
nnU-Net also crops each case to its non-zero bounding box first; hpsearch does not, so
a case's geometry stays the scan's and the way back needs no bounding box.

CT statistics (:func:`ct_statistics`) are nnU-Net's ``CTNormalization`` inputs: per
channel, the mean, std and 0.5/99.5 percentiles of foreground intensities, sampled
(10,000 per case, with replacement, seeded) from the *training* cases only.

Example:
    >>> image = np.random.default_rng(0).random((37, 29, 11, 1), np.float32)
    >>> config = VolumeConfig(dims=3, slice_axis=None, target_spacing=(1.0, 1.0, 3.0),
    ...                       normalize="zscore", val_fraction=0.2, split_seed=0)
    >>> preprocess_case(image, (0.7, 0.9, 3.0), config).shape
    (1, 26, 26, 11)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hpsearch.data.config import VolumeConfig
from hpsearch.data.preprocess import normalize_intensities
from hpsearch.data.resample import resample_image, resample_image_to_shape, separate_axis
from hpsearch.errors import HpsearchError

# nnU-Net's collect_foreground_intensities: num_samples=10000, seed=1234.
FOREGROUND_SAMPLES = 10_000
FOREGROUND_SEED = 1234
# Probabilities go back to the scan's grid linearly (nnU-Net's
# resampling_fn_probabilities_kwargs: order 1, order_z 0).
SCORES_ORDER = 1
SCORES_ORDER_Z = 0


def foreground_intensities(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``(FOREGROUND_SAMPLES, C)`` intensities at random foreground voxels (label > 0) of
    one case, drawn with replacement as nnU-Net does; ``(0, C)`` without foreground."""
    values = image[label > 0]  # (N, C)
    if len(values) == 0:
        return values.astype(np.float64)
    rng = np.random.default_rng(FOREGROUND_SEED)
    return values[rng.integers(0, len(values), FOREGROUND_SAMPLES)].astype(np.float64)


def ct_statistics(samples: Sequence[np.ndarray]) -> dict[str, Any]:
    """The CT scheme's per-channel statistics from :func:`foreground_intensities` of the
    training cases: JSON-friendly, kept in the cache entry and the export.

    Raises:
        HpsearchError: No training case has a foreground voxel.
    """
    values = np.concatenate(samples) if samples else np.zeros((0, 1))
    if len(values) == 0:
        raise HpsearchError(
            "dataset.normalize: ct needs foreground voxels (label > 0) in the training cases to compute "
            "its statistics, and there are none; use zscore"
        )
    p_low, p_high = np.percentile(values, [0.5, 99.5], axis=0)
    return {
        "scheme": "ct",
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "percentile_00_5": p_low.tolist(),
        "percentile_99_5": p_high.tolist(),
    }


def normalize_case(image: np.ndarray, scheme: str, intensity: dict[str, Any] | None = None) -> np.ndarray:
    """One case's ``(X, Y, Z, C)`` intensities normalised, float32.

    Args:
        image: The case as read (:func:`~hpsearch.data.volumes.load_case`).
        scheme: ``zscore_nonzero``, ``zscore`` or ``none`` (per case, as slice mode:
            :func:`~hpsearch.data.preprocess.normalize_intensities`), or ``ct``.
        intensity: For ``ct``, :func:`ct_statistics`' result.
    """
    if scheme != "ct":
        return normalize_intensities(image, scheme)
    if not intensity or intensity.get("scheme") != "ct":
        raise HpsearchError("normalize: ct needs the training set's CT statistics, and none were given")
    channels = image.shape[-1]
    if len(intensity["mean"]) != channels:
        raise HpsearchError(
            f"normalize: ct statistics are for {len(intensity['mean'])} channel(s), the case has {channels}"
        )
    out = np.empty(image.shape, np.float32)
    for c in range(channels):
        clipped = np.clip(image[..., c], intensity["percentile_00_5"][c], intensity["percentile_99_5"][c])
        out[..., c] = (clipped - intensity["mean"][c]) / max(intensity["std"][c], 1e-8)
    return out


def case_target(spacing: Sequence[float], config: VolumeConfig) -> tuple[float, float, float] | None:
    """The spacing one case is resampled to, or ``None`` when it stays on its own grid.

    ``None`` when the config keeps native grids or the target equals the case's spacing.
    For ``dims`` 2 the case keeps its own spacing along the slice axis.
    """
    if config.target_spacing is None:
        return None
    target = [float(t) for t in config.target_spacing]
    if config.dims == 2 and config.slice_axis is not None:
        target[config.slice_axis] = float(spacing[config.slice_axis])
    if np.allclose(target, spacing, rtol=1e-5, atol=0.0):
        return None
    return (target[0], target[1], target[2])


def preprocess_case(
    image: np.ndarray,
    spacing: Sequence[float],
    config: VolumeConfig,
    intensity: dict[str, Any] | None = None,
) -> np.ndarray:
    """One case's ``(X, Y, Z, C)`` image as the network sees it: ``(C, X', Y', Z')`` float32,
    normalised, then resampled (cubic spline, nnU-Net's rules) to :func:`case_target`.

    Args:
        image: The case as read, float32.
        spacing: Its voxel size in mm along X, Y, Z.
        config: The resolved patch-mode settings.
        intensity: :func:`ct_statistics`' result for ``normalize: ct``, else ignored.
    """
    normalised = normalize_case(image, config.normalize, intensity)
    target = case_target(spacing, config)
    if target is not None:
        normalised = resample_image(normalised, spacing, target)
    return np.ascontiguousarray(np.moveaxis(normalised, -1, 0), dtype=np.float32)


def to_original_geometry(
    scores: np.ndarray,
    original_shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float] | None,
) -> np.ndarray:
    """Per-class scores ``(X', Y', Z', K)`` at the target spacing back on the scan's grid
    ``(X, Y, Z, K)``, float32, by linear interpolation (nearest along a coarse axis).

    Take the argmax afterwards, as nnU-Net does with its probabilities: interpolating
    scores, not labels, keeps boundaries smooth and invents no class.

    Args:
        scores: Logits or probabilities, channels last.
        original_shape: The scan's ``(X, Y, Z)``.
        spacing: The scan's voxel size in mm.
        target: :func:`case_target` of the case (``None``: it was not resampled).
    """
    original_shape = tuple(int(n) for n in original_shape)
    if target is None or tuple(scores.shape[:3]) == original_shape:
        if tuple(scores.shape[:3]) != original_shape:
            raise HpsearchError(
                f"scores of shape {scores.shape[:3]} are not on the case's grid {original_shape}, "
                "and no target spacing was given to map them back"
            )
        return scores.astype(np.float32, copy=False)
    # From the target grid back to the scan's: the target is the "current" spacing,
    # asked first, as nnU-Net's determine_do_sep_z_and_axis does.
    axis = separate_axis(target, spacing)
    return resample_image_to_shape(
        scores, original_shape, order=SCORES_ORDER, order_z=SCORES_ORDER_Z, axis=axis
    )
