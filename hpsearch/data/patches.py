"""Cutting training patches out of whole cases (pure numpy; no augmentation here).

A case is ``image (C, X, Y, Z)``, ``label (X, Y, Z)`` and ``foreground (K, 4)`` rows
``(class, x, y, z)`` (:class:`~hpsearch.data.volume_data.VolumeData`). A *patch* is the
network's input: ``dims`` 3 cuts a ``(d, h, w)`` box on axes X, Y, Z; ``dims`` 2 takes
one slice along ``slice_axis`` and an ``(h, w)`` box on the two other axes, in their
order. A *box* is the possibly larger region cut around the patch for augmentation
(:func:`hpsearch.data.augment.sample_size`); the patch is its exact centre.

Where a patch goes:

* random: uniformly, entirely inside the case on each axis where the case is at least
  as large as the patch; on an axis where the case is smaller the case sits in the
  middle of the patch (zero padding split evenly, the extra voxel after);
* foreground: first a class present in the case (uniformly among the classes in its
  ``foreground`` rows), then one of that class's voxels; the patch's centre voxel
  (index ``size // 2`` on each axis) *is* that voxel, padding where it leaves the case.
  A case without foreground falls back to random.

Foreground oversampling (nnU-Net's ``oversample_foreground_percent``, made exact):
batch ``k`` of an epoch has ``ceil((k+1)·B·f) - ceil(k·B·f)`` forced-foreground samples,
its *last* ones (:func:`forced_foreground`). So the first ``k`` batches hold exactly
``ceil(k·B·f)`` of them: the configured fraction, never fewer, whatever ``B`` is
(nnU-Net's per-batch ``round(B·f)`` gives 1 of 4 = 25% at ``f`` = 0.33).

Everything random comes from the ``np.random.Generator`` passed in, so a batch is a
pure function of its seed.

Example:
    >>> image, label = np.ones((1, 3, 4, 5), np.float32), np.ones((3, 4, 5), np.uint8)
    >>> img, lab = cut_box(image, label, start=(-1, 0, 0), size=(5, 4, 5))
    >>> img.shape, int(lab[0].sum()), int(lab[1].sum())
    ((1, 5, 4, 5), 0, 20)
    >>> forced_foreground(batch_size=4, fraction=0.33, batch_index=0)
    [False, False, True, True]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def forced_foreground(batch_size: int, fraction: float, batch_index: int) -> list[bool]:
    """Which samples of batch ``batch_index`` must be centred on foreground (see the module docstring)."""
    def upto(k: int) -> int:  # forced samples in the first k batches; epsilon absorbs 0.1*3 = 0.30000000000000004
        return math.ceil(k * batch_size * fraction - 1e-9)

    count = upto(batch_index + 1) - upto(batch_index)
    return [i >= batch_size - count for i in range(batch_size)]


def cut_box(
    image: np.ndarray, label: np.ndarray, *, start: Sequence[int], size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``image[:, start:start+size]`` and ``label[start:start+size]`` on every axis, zero outside the case.

    ``start`` may be negative and ``start + size`` beyond the case: the parts outside
    are zeros (image) and class 0 (label). Works on memory-mapped arrays (reads only the box).
    """
    shape = label.shape
    out_img = np.zeros((image.shape[0], *size), np.float32)
    out_lab = np.zeros(tuple(size), np.uint8)
    src, dst = [], []
    for lo, n, extent in zip(start, size, shape):
        a, b = max(lo, 0), min(lo + n, extent)
        if b <= a:  # the box misses the case on this axis: all padding
            return out_img, out_lab
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out_img[(slice(None), *dst)] = image[(slice(None), *src)]
    out_lab[tuple(dst)] = label[tuple(src)]
    return out_img, out_lab


def random_start(extent: int, patch: int, rng: np.random.Generator) -> int:
    """Start of a patch on one axis: uniform inside the case, or centred (padded) if the case is smaller."""
    if extent >= patch:
        return int(rng.integers(0, extent - patch + 1))
    return -((patch - extent) // 2)


def pick_foreground(foreground: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A voxel ``(x, y, z)`` of a uniformly chosen class present in ``foreground`` rows; None if there are none."""
    if len(foreground) == 0:
        return None
    classes = np.unique(foreground[:, 0])
    cls = classes[rng.integers(len(classes))]
    rows = np.flatnonzero(foreground[:, 0] == cls)
    return np.asarray(foreground[rows[rng.integers(len(rows))], 1:], dtype=np.int64)


def sample_patch(
    image: np.ndarray,
    label: np.ndarray,
    foreground: np.ndarray,
    *,
    patch_size: Sequence[int],
    box_size: Sequence[int] | None = None,
    slice_axis: int = 2,
    force_foreground: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one box around a random or foreground-centred patch of a case.

    Args:
        image: ``(C, X, Y, Z)``; label: ``(X, Y, Z)``; foreground: ``(K, 4)`` rows ``(class, x, y, z)``.
        patch_size: ``(d, h, w)`` (3D, on axes X, Y, Z) or ``(h, w)`` (2D, on the axes other than ``slice_axis``).
        box_size: The box to return, centred on the patch (each ``box - patch`` even); default the patch.
        slice_axis: 2D only: the axis the slice is taken along.
        force_foreground: Centre the patch on a foreground voxel (random if the case has none).
        rng: The only source of randomness.

    Returns:
        ``(C, *box_size)`` float32 and ``(*box_size)`` uint8.
    """
    patch = [int(p) for p in patch_size]
    box = [int(b) for b in (box_size or patch)]
    if any((b - p) % 2 or b < p for b, p in zip(box, patch)):
        raise ValueError(f"box_size {box} must be >= patch_size {patch} with an even difference per axis")
    dims = len(patch)
    shape = label.shape
    axes = [0, 1, 2] if dims == 3 else [a for a in range(3) if a != slice_axis]
    voxel = pick_foreground(foreground, rng) if force_foreground else None
    if voxel is not None:
        starts = [int(voxel[a]) - p // 2 for a, p in zip(axes, patch)]
        slice_index = int(voxel[slice_axis])
    else:
        starts = [random_start(shape[a], p, rng) for a, p in zip(axes, patch)]
        slice_index = int(rng.integers(shape[slice_axis])) if dims == 2 else 0
    box_starts = [s - (b - p) // 2 for s, b, p in zip(starts, box, patch)]
    if dims == 3:
        return cut_box(image, label, start=box_starts, size=box)
    # 2D: a one-voxel-thick 3D box along slice_axis, then drop that axis.
    start3, size3 = [0, 0, 0], [1, 1, 1]
    start3[slice_axis] = slice_index
    for a, s, b in zip(axes, box_starts, box):
        start3[a], size3[a] = s, b
    img, lab = cut_box(image, label, start=start3, size=size3)
    return np.squeeze(img, axis=1 + slice_axis), np.squeeze(lab, axis=slice_axis)


def sample_batch(
    cases: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    batch_size: int,
    batch_index: int,
    foreground_fraction: float,
    patch_size: Sequence[int],
    box_size: Sequence[int] | None = None,
    slice_axis: int = 2,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` boxes from uniformly chosen ``(image, label, foreground)`` cases.

    Returns:
        ``(B, C, *box)`` float32 and ``(B, *box)`` uint8.
    """
    forced = forced_foreground(batch_size, foreground_fraction, batch_index)
    images, labels = [], []
    for force in forced:
        image, label, foreground = cases[int(rng.integers(len(cases)))]
        img, lab = sample_patch(image, label, foreground, patch_size=patch_size, box_size=box_size,
                                slice_axis=slice_axis, force_foreground=force, rng=rng)
        images.append(img)
        labels.append(lab)
    return np.stack(images), np.stack(labels)
