"""Resampling a case to a target voxel spacing and back, the way nnU-Net does it.

The rules follow nnU-Net's ``nnunetv2/preprocessing/resampling/default_resampling.py``
(``compute_new_shape``, ``determine_do_sep_z_and_axis``, ``resample_data_or_seg``),
rewritten on SciPy: nnU-Net calls scikit-image's ``resize(mode="edge",
anti_aliasing=False)``, which is ``scipy.ndimage.zoom(grid_mode=True, mode="nearest")``
underneath, so the voxel grids line up the same way (voxel centres, "align_corners=False").

* Output shape: ``round(shape * spacing / target)`` per axis.
* Images: cubic spline (order 3), clipped to each channel's input range (scikit-image's
  ``clip=True`` default, which nnU-Net keeps) so the spline's overshoot cannot create
  intensities the scan never had.
* Strongly anisotropic 3D data (one axis's spacing more than 3x the finest, in the input
  or the target): that axis is resampled separately, in-plane first with the spline and
  then along the coarse axis with order 0 (nnU-Net's ``separate_z``), because
  interpolating across 5 mm slices blurs structures into slices that never showed them.
* Labels: each class's one-hot mask is resampled with linear interpolation (order 0
  along a separately resampled axis) and each voxel takes the class of the largest
  value. nnU-Net thresholds the masks at 0.5 one class after another instead; the argmax
  gives the same boundaries where two classes meet and leaves no holes where three do.
  Either way only classes present in the input can come out.
* Going back to the scan's geometry: ``resample_*_to_shape`` with the original shape, so
  rounding in ``resampled_shape`` cannot make the result a voxel too big or too small.
  nnU-Net resamples the predicted logits or probabilities back (order 1) and takes the
  argmax afterwards; :func:`resample_image_to_shape` with ``order=1`` does that.

Images are channels-last: a volume with one axis more than ``spacing`` has entries has
its last axis as channels, each resampled alike.

Example:
    >>> image = np.random.default_rng(0).random((40, 40, 8, 2), np.float32)
    >>> resample_image(image, (1.0, 1.0, 5.0), (1.5, 1.5, 2.5)).shape
    (27, 27, 16, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from hpsearch.data.plan import ANISOTROPY_THRESHOLD
from hpsearch.errors import HpsearchError

IMAGE_ORDER = 3  # nnU-Net's resampling_fn_data_kwargs: order 3 ...
LABEL_ORDER = 1  # ... and resampling_fn_seg_kwargs: order 1 on one-hot masks
ORDER_Z = 0  # both: order 0 along a separately resampled (coarse) axis


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """The shape of a ``shape`` volume of voxel size ``spacing`` at voxel size ``target``.

    ``round(shape * spacing / target)`` per axis, at least 1 (nnU-Net's ``compute_new_shape``).

    Raises:
        HpsearchError: Lengths differ or a spacing is not positive.
    """
    spacing, target = _spacings(spacing, target, len(shape))
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def separate_axis(
    spacing: Sequence[float], target: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD
) -> int | None:
    """The axis to resample on its own with order 0, or ``None`` (nnU-Net's ``separate_z``).

    The input spacing is asked first, then the target: when its coarsest spacing exceeds
    ``threshold`` times its finest and exactly one axis is that coarse, it is that axis.
    Two equally coarse axes (e.g. 0.24 x 1.25 x 1.25 mm) or 2D data: ``None``, as nnU-Net.
    """
    spacing, target = _spacings(spacing, target, len(spacing))
    if len(spacing) != 3:
        return None
    for candidate in (spacing, target):
        if candidate.max() / candidate.min() > threshold:
            coarse = np.flatnonzero(candidate == candidate.max())
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


def resample_image(
    volume: np.ndarray,
    spacing: Sequence[float],
    target: Sequence[float],
    *,
    order: int = IMAGE_ORDER,
    order_z: int = ORDER_Z,
) -> np.ndarray:
    """An image ``(spatial...[, C])`` of voxel size ``spacing`` resampled to ``target``.

    Returns float32 of shape ``resampled_shape(...)`` (and the same channels).
    """
    return _to_spacing(resample_image_to_shape, volume, spacing, target, order=order, order_z=order_z)


def resample_image_to_shape(
    volume: np.ndarray,
    shape: Sequence[int],
    *,
    order: int = IMAGE_ORDER,
    order_z: int = ORDER_Z,
    axis: int | None = None,
) -> np.ndarray:
    """An image ``(spatial...[, C])`` resampled to exactly ``shape`` spatially, float32.

    Args:
        volume: Spatial axes first; one more axis than ``shape`` means channels-last.
        shape: The spatial shape wanted (e.g. the scan's original shape).
        order: Spline order within the plane (all axes when ``axis`` is ``None``).
        order_z: Order along ``axis``.
        axis: The axis resampled separately (:func:`separate_axis` of the spacings the
            volume went between), or ``None``.
    """
    spatial = _spatial_shape(volume, len(shape))
    channels = volume.reshape(*spatial, -1).astype(np.float32, copy=False)
    out = np.empty((*shape, channels.shape[-1]), np.float32)
    for c in range(channels.shape[-1]):
        data = channels[..., c]
        resampled = _zoom(data, shape, order, order_z, axis)
        if order > 1:  # scikit-image's clip=True: no overshoot beyond the input's range
            np.clip(resampled, data.min(), data.max(), out=resampled)
        out[..., c] = resampled
    return out if volume.ndim > len(shape) else out[..., 0]


def resample_labels(
    labels: np.ndarray,
    spacing: Sequence[float],
    target: Sequence[float],
    *,
    order: int = LABEL_ORDER,
    order_z: int = ORDER_Z,
) -> np.ndarray:
    """Class indices ``(spatial...)`` of voxel size ``spacing`` resampled to ``target``.

    Only classes present in ``labels`` appear in the result, which keeps its dtype.
    """
    return _to_spacing(resample_labels_to_shape, labels, spacing, target, order=order, order_z=order_z)


def resample_labels_to_shape(
    labels: np.ndarray,
    shape: Sequence[int],
    *,
    order: int = LABEL_ORDER,
    order_z: int = ORDER_Z,
    axis: int | None = None,
) -> np.ndarray:
    """Class indices resampled to exactly ``shape``: argmax of the resampled one-hot masks.

    ``order`` 0 is plain nearest neighbour; the default 1 gives smoother boundaries.
    Arguments as :func:`resample_image_to_shape`.
    """
    if len(shape) != labels.ndim:
        raise HpsearchError(
            f"labels of shape {labels.shape} cannot be resampled to the {len(shape)}-axis shape {tuple(shape)}"
        )
    classes = np.unique(labels)
    if tuple(shape) == labels.shape or len(classes) == 1:
        return np.full(shape, classes[0], labels.dtype) if len(classes) == 1 else labels.copy()
    if order == 0 and (axis is None or order_z == 0):
        return _zoom(labels, shape, 0, 0, None)
    best = np.full(shape, -np.inf, np.float32)
    out = np.empty(shape, labels.dtype)
    for cls in classes:  # one mask at a time: memory of two volumes, not one per class
        score = _zoom((labels == cls).astype(np.float32), shape, order, order_z, axis)
        wins = score > best  # ties keep the smaller class index, as np.argmax would
        best[wins] = score[wins]
        out[wins] = cls
    return out


def _to_spacing(to_shape, array, spacing, target, **kwargs) -> np.ndarray:
    """``to_shape`` at the shape and separate axis that ``spacing`` -> ``target`` implies."""
    shape = resampled_shape(_spatial_shape(array, len(spacing)), spacing, target)
    return to_shape(array, shape, axis=separate_axis(spacing, target), **kwargs)


def _zoom(data: np.ndarray, shape: Sequence[int], order: int, order_z: int, axis: int | None):
    """``data`` resampled to ``shape`` on voxel centres; ``axis`` separately with ``order_z``."""
    if axis is None or shape[axis] == data.shape[axis]:
        return _zoom_axes(data, shape, order)
    in_plane = list(shape)
    in_plane[axis] = data.shape[axis]  # factor 1 along axis: every slice on its own
    return _zoom_axes(_zoom_axes(data, in_plane, order), shape, order_z)


def _zoom_axes(data: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    if tuple(shape) == data.shape:
        return data
    factors = [n / m for n, m in zip(shape, data.shape)]
    # grid_mode=True maps voxel centres to voxel centres (scikit-image's resize, which
    # nnU-Net uses); zoom's output shape is round(m * n / m) == n exactly.
    return ndimage.zoom(data, factors, order=order, mode="nearest", grid_mode=True)


def _spatial_shape(volume: np.ndarray, dims: int) -> tuple[int, ...]:
    if volume.ndim not in (dims, dims + 1):
        raise HpsearchError(
            f"a volume of shape {volume.shape} does not have {dims} spatial axes (and optional channels last)"
        )
    return volume.shape[:dims]


def _spacings(spacing, target, dims: int) -> tuple[np.ndarray, np.ndarray]:
    spacing = np.asarray(spacing, float)
    target = np.asarray(target, float)
    if spacing.shape != (dims,) or target.shape != (dims,):
        raise HpsearchError(
            f"spacing {tuple(spacing)} and target spacing {tuple(target)} must have one value per axis ({dims})"
        )
    if not (np.all(spacing > 0) and np.all(target > 0)):
        raise HpsearchError(
            f"spacing {tuple(spacing)} and target spacing {tuple(target)} must be positive (mm)"
        )
    return spacing, target
