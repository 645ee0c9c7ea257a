"""Sliding-window inference over a whole 2D or 3D case, the way nnU-Net predicts.

A network trained on patches sees a case through overlapping windows of the patch size;
the rules follow nnU-Net's ``nnunetv2/inference/sliding_window_prediction.py`` and
``predict_from_raw_data.py`` (``compute_steps_for_sliding_window``, ``compute_gaussian``,
``predict_sliding_window_return_logits``, ``_internal_maybe_mirror_and_predict``):

* Tiles: along each axis as many as needed for steps of at most ``patch * (1 - overlap)``,
  spread evenly from the first voxel to the last, so every voxel is covered and no tile
  hangs over the edge.
* Weighting: each window's output is multiplied by a Gaussian (sigma = patch / 8, peak 1,
  never 0) before it is added up, and the sum is divided by the summed weights. Voxels
  near a patch's border, where the network saw little context, count less.
* What is averaged: whatever ``predict_batch`` returns, as is. nnU-Net averages logits and
  applies softmax/argmax afterwards; pass a logits model to do the same (the argmax of
  averaged logits and of averaged probabilities can differ where windows disagree).
* Test-time mirroring: with ``mirror_axes``, every combination of flips along those axes
  (2**n predictions, the unflipped one included) is predicted, flipped back and averaged.
* A case smaller than the patch along an axis is zero-padded (centred, as nnU-Net's
  ``pad_nd_image``) and the result is cropped back.

Nothing here imports Keras: ``predict_batch`` can wrap ``model.predict_on_batch``.

Example:
    >>> volume = np.random.default_rng(0).random((13, 17, 19, 1), np.float32)
    >>> out = sliding_window_predict(volume, lambda x: x, (8, 8, 8), num_classes=1)
    >>> bool(np.allclose(out, volume, atol=1e-6))
    True
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from hpsearch.errors import HpsearchError

SIGMA_SCALE = 1 / 8  # nnU-Net's compute_gaussian: sigma is an eighth of the patch


def sliding_window_tiles(
    shape: Sequence[int], patch: Sequence[int], overlap: float = 0.5
) -> list[tuple[int, ...]]:
    """Start corners of the windows covering ``shape`` (nnU-Net's step rule).

    Along an axis of length ``n`` and patch ``p``: ``ceil((n - p) / (p * (1 - overlap))) + 1``
    starts, evenly spaced from 0 to ``n - p`` and rounded. An axis shorter than the patch
    gets the one start 0 (the caller pads it to the patch first).

    Raises:
        HpsearchError: ``overlap`` outside [0, 1) or lengths that differ.
    """
    if not 0 <= overlap < 1:
        raise HpsearchError(f"sliding-window overlap {overlap} must be in [0, 1), e.g. 0.5")
    if len(shape) != len(patch) or min(patch) < 1:
        raise HpsearchError(f"patch size {tuple(patch)} does not fit a {len(shape)}-axis case")
    per_axis = []
    for n, p in zip(shape, patch):
        steps = int(np.ceil((n - p) / (p * (1 - overlap)))) + 1 if n > p else 1
        stride = (n - p) / (steps - 1) if steps > 1 else 0
        # Unique: a one-voxel patch axis (2D networks on volumes) would repeat every start.
        per_axis.append(sorted({int(round(stride * i)) for i in range(steps)}))
    return list(itertools.product(*per_axis))


@functools.lru_cache(maxsize=4)
def gaussian_importance(patch: tuple[int, ...], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """nnU-Net's importance map: a Gaussian centred on the patch, peak 1, no zeros (float32)."""
    impulse = np.zeros(patch, np.float64)
    impulse[tuple(p // 2 for p in patch)] = 1
    weights = ndimage.gaussian_filter(impulse, [p * sigma_scale for p in patch], mode="constant")
    weights = (weights / weights.max()).astype(np.float32)
    # A zero weight would divide by zero where only that corner covers a voxel.
    positive = weights[weights > 0]
    weights[weights <= 0] = positive.min()
    weights.flags.writeable = False  # cached and shared between calls
    return weights


def sliding_window_predict(
    volume: np.ndarray,
    predict_batch: Callable[[np.ndarray], np.ndarray],
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    mirror_axes: Sequence[int] = (),
) -> np.ndarray:
    """Gaussian-weighted average of ``predict_batch`` over windows covering ``volume``.

    Args:
        volume: ``(spatial..., C)`` with 2 or 3 spatial axes.
        predict_batch: ``(N, *patch_size, C)`` float32 to ``(N, *patch_size, num_classes)``,
            e.g. a Keras model's logits.
        patch_size: Window size along the spatial axes.
        num_classes: Channels of ``predict_batch``'s output.
        overlap: Fraction of the patch consecutive windows share (nnU-Net: 0.5).
        batch_size: Windows per ``predict_batch`` call (the last call may have fewer).
        mirror_axes: Spatial axes (0-based) to mirror for test-time augmentation.

    Returns:
        ``(spatial..., num_classes)`` float32: the averaged outputs (logits in, logits out).
    """
    patch = tuple(int(p) for p in patch_size)
    spatial = volume.shape[:-1]
    if volume.ndim < 3 or len(patch) != len(spatial):
        raise HpsearchError(
            f"a case of shape {volume.shape} needs {len(patch)} spatial axes and channels last for a {patch} patch"
        )
    if any(not 0 <= a < len(patch) for a in mirror_axes):
        raise HpsearchError(f"mirror axes {tuple(mirror_axes)} must be spatial axes 0..{len(patch) - 1}")
    padded, crop = _pad_to(volume.astype(np.float32, copy=False), patch)
    weights = gaussian_importance(patch)
    total = np.zeros((*padded.shape[:-1], num_classes), np.float32)
    weight_sum = np.zeros(padded.shape[:-1], np.float32)
    for starts in _chunks(sliding_window_tiles(padded.shape[:-1], patch, overlap), batch_size):
        windows = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in starts]
        batch = np.stack([padded[w] for w in windows])
        outputs = _mirrored_predict(predict_batch, batch, mirror_axes, num_classes)
        for w, out in zip(windows, outputs):
            total[w] += out * weights[..., None]
            weight_sum[w] += weights
    return total[crop] / weight_sum[crop][..., None]


def predict_case(
    image: np.ndarray,
    predict_batch: Callable[[np.ndarray], np.ndarray],
    patch_size: Sequence[int],
    num_classes: int,
    *,
    slice_axis: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 8,
    mirror: bool = False,
) -> np.ndarray:
    """Logits of a whole preprocessed case from a 2D or 3D patch network.

    Args:
        image: ``(C, X, Y, Z)``, channels first, as :mod:`hpsearch.data.volume_data` keeps cases.
        predict_batch: ``(N, *patch_size, C)`` to ``(N, *patch_size, num_classes)``.
        patch_size: 3 sizes for a 3D network; 2 for a 2D one, which then sees the case
            slice by slice along ``slice_axis``.
        num_classes: Output channels.
        slice_axis: For a 2D network, the voxel axis its slices are taken along.
        overlap, batch_size: As :func:`sliding_window_predict`.
        mirror: Test-time mirroring along every axis the network sees.

    Returns:
        ``(X, Y, Z, num_classes)`` float32 logits, on the case's grid.

    A 2D network runs as a 3D sliding window with a one-slice patch: every slice is
    predicted once, with the same tiles, weights and batching as in 3D.

    Example:
        >>> case = np.random.default_rng(0).random((1, 9, 7, 5), np.float32)
        >>> out = predict_case(case, lambda x: x, (4, 4), 1, slice_axis=2)
        >>> out.shape, bool(np.allclose(out[..., 0], case[0], atol=1e-6))
        ((9, 7, 5, 1), True)
    """
    patch = tuple(int(p) for p in patch_size)
    volume = np.moveaxis(np.asarray(image, np.float32), 0, -1)  # (X, Y, Z, C)
    if len(patch) == 3:
        axes = (0, 1, 2) if mirror else ()
        return sliding_window_predict(volume, predict_batch, patch, num_classes, overlap, batch_size, axes)
    if len(patch) != 2 or slice_axis not in (0, 1, 2):
        raise HpsearchError(f"a 2D patch {patch} needs a slice axis 0, 1 or 2, got {slice_axis!r}")
    stacked = np.moveaxis(volume, slice_axis, 0)  # slices first; the two other axes keep their order

    def per_slice(batch: np.ndarray) -> np.ndarray:  # (N, 1, h, w, C) <-> (N, h, w, K)
        return np.asarray(predict_batch(batch[:, 0]))[:, None]

    logits = sliding_window_predict(stacked, per_slice, (1, *patch), num_classes, overlap, batch_size,
                                    (1, 2) if mirror else ())
    return np.moveaxis(logits, 0, slice_axis)


def _mirrored_predict(predict_batch, batch, mirror_axes, num_classes) -> np.ndarray:
    """The mean over every flip combination of ``mirror_axes``, each flipped back."""
    flips = [
        tuple(a + 1 for a in combo)  # + 1: the batch axis comes first
        for r in range(len(mirror_axes) + 1)
        for combo in itertools.combinations(sorted(set(mirror_axes)), r)
    ]
    mean = np.zeros((*batch.shape[:-1], num_classes), np.float32)
    for axes in flips:
        out = np.asarray(predict_batch(np.flip(batch, axes) if axes else batch))
        if out.shape != mean.shape:
            raise HpsearchError(
                f"the model returned shape {out.shape} for a batch of {batch.shape}; expected {mean.shape} "
                f"(a segmentation model with {num_classes} output channels and 'same' padding)"
            )
        mean += np.flip(out, axes) if axes else out
    return mean / len(flips)


def _pad_to(volume: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the spatial axes to at least ``patch``, centred; the slices that undo it."""
    before = [max(p - n, 0) // 2 for n, p in zip(volume.shape, patch)]
    after = [max(p - n, 0) - b for n, p, b in zip(volume.shape, patch, before)]
    if not any(before) and not any(after):
        return volume, tuple(slice(None) for _ in patch)
    padded = np.pad(volume, [*zip(before, after), (0, 0)])
    return padded, tuple(slice(b, b + n) for b, n in zip(before, volume.shape))


def _chunks(items: list, size: int) -> Iterator[list]:
    size = max(1, int(size))
    for i in range(0, len(items), size):
        yield items[i : i + size]
