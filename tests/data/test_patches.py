"""Patch sampling: padding when the patch is larger than the case, foreground oversampling, 2D slices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpsearch.data.patches import cut_box, forced_foreground, sample_batch, sample_patch


def _case(shape, seed=0):
    """A case whose image channels are (label, x coordinate + 1): alignment and position are readable."""
    rng = np.random.default_rng(seed)
    label = (rng.random(shape) < 0.3).astype(np.uint8) * rng.integers(1, 3, shape).astype(np.uint8)
    xs = np.broadcast_to(np.arange(1, shape[0] + 1, dtype=np.float32)[:, None, None], shape)
    image = np.stack([label.astype(np.float32), xs])
    return image, label


def _foreground(label: np.ndarray) -> np.ndarray:
    voxels = np.argwhere(label > 0)
    return np.c_[label[tuple(voxels.T)], voxels].astype(np.int32)


@pytest.mark.parametrize("dims, shape, patch, slice_axis", [
    (3, (5, 7, 3), (9, 8, 6), 2),      # larger on every axis, odd and even differences
    (3, (5, 20, 3), (4, 8, 7), 2),     # larger on some axes only
    (2, (6, 5, 4), (10, 9), 2),        # 2D slices along Z, patch on X, Y
    (2, (6, 5, 4), (8, 9), 0),         # 2D slices along X, patch on Y, Z
])
def test_patch_larger_than_the_case_pads_around_it_with_labels_aligned(dims, shape, patch, slice_axis):
    image, label = _case(shape)
    rng = np.random.default_rng(1)
    for force in (False, True):
        img, lab = sample_patch(image, label, _foreground(label), patch_size=patch, slice_axis=slice_axis,
                                force_foreground=force, rng=rng)
        assert img.shape == (2, *patch) and lab.shape == patch
        assert (img[0] == lab).all()  # channel 0 is the label: image and label cut from the same place
        inside = img[1] > 0  # channel 1 is x + 1 >= 1 inside the case, 0 in the padding
        assert (lab[~inside] == 0).all()
    # A random patch larger than the case on an axis holds the whole case there, centred.
    img, lab = sample_patch(image, label, _foreground(label), patch_size=patch, slice_axis=slice_axis,
                            force_foreground=False, rng=rng)
    axes = [0, 1, 2] if dims == 3 else [a for a in range(3) if a != slice_axis]
    for i, (a, p) in enumerate(zip(axes, patch)):
        if p > shape[a]:
            covered = np.flatnonzero((img[1] > 0).any(axis=tuple(j for j in range(dims) if j != i)))
            pad = (p - shape[a]) // 2
            assert covered.tolist() == list(range(pad, pad + shape[a]))


def test_cut_box_outside_the_case_is_all_padding():
    image, label = _case((4, 4, 4))
    img, lab = cut_box(image, label, start=(10, 0, 0), size=(3, 3, 3))
    assert not img.any() and not lab.any()


def test_box_is_centred_on_the_patch():
    image, label = _case((30, 30, 30))
    fg = _foreground(label)
    patch, box = (8, 10, 6), (14, 12, 10)
    a = sample_patch(image, label, fg, patch_size=patch, box_size=box, force_foreground=True,
                     rng=np.random.default_rng(4))
    b = sample_patch(image, label, fg, patch_size=patch, force_foreground=True, rng=np.random.default_rng(4))
    centre = tuple(slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(box, patch))
    assert (a[0][(slice(None), *centre)] == b[0]).all() and (a[1][centre] == b[1]).all()
    with pytest.raises(ValueError, match="even difference"):
        sample_patch(image, label, fg, patch_size=patch, box_size=(9, 10, 6), force_foreground=True,
                     rng=np.random.default_rng(0))


@pytest.mark.parametrize("batch_size, fraction, first_batches", [
    (2, 0.33, [[False, True], [False, True], [False, False]]),  # ceil(0.66), ceil(1.32), ceil(1.98): 1, 2, 2
    (4, 0.33, [[False, False, True, True], [False, False, False, True], [False, False, False, True]]),
    (3, 1 / 3, [[False, False, True]] * 3),
    (5, 0.0, [[False] * 5] * 3),
    (3, 1.0, [[True] * 3] * 3),
])
def test_forced_foreground_rule(batch_size, fraction, first_batches):
    assert [forced_foreground(batch_size, fraction, k) for k in range(3)] == first_batches


@pytest.mark.parametrize("batch_size", range(1, 9))
@pytest.mark.parametrize("fraction", [0.1, 0.33, 0.5, 0.9])
def test_forced_foreground_reaches_the_fraction_whatever_the_batch_size(batch_size, fraction):
    for batches in (1, 7, 50):
        forced = sum(sum(forced_foreground(batch_size, fraction, k)) for k in range(batches))
        assert forced == math.ceil(batches * batch_size * fraction - 1e-9)


@pytest.mark.parametrize("dims, patch, batch_size", [(3, (8, 8, 8), 4), (2, (12, 12), 3)])
def test_the_configured_fraction_of_patches_is_centred_on_foreground(dims, patch, batch_size):
    """An almost empty case (5 foreground voxels in 40x40x40): random patches hardly ever centre on
    foreground, so the share that does is the oversampling."""
    label = np.zeros((40, 40, 40), np.uint8)
    label[3, 4, 5] = 1
    label[30:32, 20, 36:38] = 2
    image = label[None].astype(np.float32)
    cases = [(image, label, _foreground(label))]
    centre = tuple(p // 2 for p in patch)
    counts = {}
    for fraction in (0.0, 0.33):
        on_foreground, total = 0, 0
        for k in range(math.ceil(1000 / batch_size)):
            _, labels = sample_batch(cases, batch_size=batch_size, batch_index=k, foreground_fraction=fraction,
                                     patch_size=patch, rng=np.random.default_rng([7, k]))
            on_foreground += int((labels[(slice(None), *centre)] > 0).sum())
            total += batch_size
        counts[fraction] = on_foreground / total
    assert counts[0.33] >= 0.33
    assert counts[0.0] < 0.01


def test_foreground_class_is_chosen_uniformly_not_by_voxel_count():
    label = np.zeros((30, 30, 30), np.uint8)
    label[2:28, 2:28, 2:15] = 1  # thousands of voxels
    label[20, 20, 25] = 2  # one voxel
    image = label[None].astype(np.float32)
    rng = np.random.default_rng(0)
    hits = [sample_patch(image, label, _foreground(label), patch_size=(5, 5, 5), force_foreground=True,
                         rng=rng)[1][2, 2, 2] for _ in range(400)]
    assert 0.4 < np.mean(np.array(hits) == 2) < 0.6


def test_a_case_without_foreground_falls_back_to_random_patches():
    image, label = np.ones((1, 10, 10, 10), np.float32), np.zeros((10, 10, 10), np.uint8)
    img, lab = sample_patch(image, label, np.zeros((0, 4), np.int32), patch_size=(4, 4, 4),
                            force_foreground=True, rng=np.random.default_rng(0))
    assert img.shape == (1, 4, 4, 4) and (img == 1).all()
