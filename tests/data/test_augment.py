"""Augmentation with batchgenerators: validated settings, determinism, labels aligned with images."""

from __future__ import annotations

import random

import numpy as np
import pydantic
import pytest
from scipy import ndimage

from hpsearch.data.augment import AugmentConfig, augment_batch, build_transforms, sample_size

SPATIAL_ONLY = dict(rotation=30, rotation_p=1, scale_p=1, elastic_p=1, noise_p=0, blur_p=0, brightness_p=0,
                    contrast_p=0, lowres_p=0, gamma_p=0)


def _blobs(shape) -> np.ndarray:
    """Labels 0/1/2/4 (BraTS values): nested ellipsoids and a slab, centred in ``shape``."""
    grid = np.indices(shape).astype(float)
    centre = [n / 2 for n in shape]
    r = sum(((g - c) / (0.3 * n)) ** 2 for g, c, n in zip(grid, centre, shape))
    labels = np.zeros(shape, np.uint8)
    labels[r < 1] = 1
    labels[r < 0.4] = 2
    labels[(r < 1) & (grid[0] > centre[0] + 2)] = 4
    return labels


def _near_boundary(labels: np.ndarray, reach: int) -> np.ndarray:
    """Voxels with a different label in the cube of ``reach`` voxels around them, per sample of a (B, ...) batch.

    Voxels within ``reach`` of the patch's border count as near: their neighbourhood is partly outside.
    """
    size = (1, *[2 * reach + 1] * (labels.ndim - 1))
    near = ndimage.maximum_filter(labels, size) != ndimage.minimum_filter(labels, size)
    inner = (slice(None), *[slice(reach, n - reach) for n in labels.shape[1:]])
    edge = np.ones(labels.shape, bool)
    edge[inner] = False
    return near | edge


@pytest.mark.parametrize("bad, message", [
    ({"rotation_p": 1.5}, "rotation_p is a probability"),
    ({"elastic_p": -0.1}, "elastic_p is a probability"),
    ({"scale": (1.3, 0.9)}, "low 1.3 is above high 0.9"),
    ({"gamma": (0, 1.5)}, "gamma must be positive"),
    ({"rotation": 200}, "less than or equal to 180"),
    ({"mirorr": False}, "Extra inputs are not permitted"),
])
def test_bad_settings_are_refused_with_the_reason(bad, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        AugmentConfig(**bad)


def test_config_is_frozen_and_accepts_lists_from_job_files():
    config = AugmentConfig(scale=[0.9, 1.1])
    assert config.scale == (0.9, 1.1)
    with pytest.raises(pydantic.ValidationError):
        config.mirror = False


@pytest.mark.parametrize("config, patch, box", [
    (AugmentConfig.none(), (33, 40), (33, 40)),
    (AugmentConfig(rotation=0, scale=(1, 1), elastic_p=0), (33, 40), (33, 40)),
    # 33x40 rotated by 15 degrees: 33 cos + 40 sin = 42.2, 40 cos + 33 sin = 47.2; times 1.25; same parity.
    (AugmentConfig(), (33, 40), (53, 60)),
    (AugmentConfig(rotation=90, scale=(1, 1)), (30, 40), (50, 50)),  # the diagonal
    (AugmentConfig(rotation=0, elastic_p=0), (16, 24, 20), (20, 30, 26)),
    # Anisotropic 3D patch: rotated only in the plane of axes 1 and 2, so axis 0 keeps its size.
    (AugmentConfig(scale=(1, 1)), (10, 64, 48), (10, 76, 64)),
])
def test_sample_size_covers_rotation_and_zoom_out(config, patch, box):
    assert sample_size(config, patch) == box


def test_an_anisotropic_3d_patch_is_rotated_in_plane_only():
    """Labels constant along axis 0 stay constant along it under rotation (no tilt into the coarse axis)."""
    config = AugmentConfig(**{**SPATIAL_ONLY, "elastic_p": 0, "scale": (1, 1)})
    patch = (6, 40, 36)
    box = sample_size(config, patch)
    labels = np.repeat(np.repeat(_blobs(box[1:])[None], box[0], axis=0)[None], 4, axis=0)
    _, y = augment_batch(build_transforms(config, patch), labels[:, None].astype(np.float32), labels, seed=1)
    assert (y == y[:, :1]).all()
    centre = tuple(slice((b - p) // 2, (b - p) // 2 + p) for b, p in zip(box, patch))
    assert (y != labels[(slice(None), *centre)]).mean() > 0.05  # but rotated it was


@pytest.mark.parametrize("patch", [(40, 48), (20, 24, 22)])
def test_augmentation_is_deterministic_for_a_seed(patch):
    config = AugmentConfig(rotation_p=0.5, scale_p=0.5, elastic_p=0.5, noise_p=0.5, blur_p=0.5, lowres_p=0.5)
    box = sample_size(config, patch)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 2, *box)).astype(np.float32)
    labels = np.repeat(_blobs(box)[None], 4, axis=0)
    transforms = build_transforms(config, patch)
    runs = [augment_batch(transforms, images.copy(), labels.copy(), seed=s) for s in (11, 11, 12)]
    assert runs[0][0].tobytes() == runs[1][0].tobytes() and runs[0][1].tobytes() == runs[1][1].tobytes()
    assert runs[0][0].tobytes() != runs[2][0].tobytes()
    assert runs[0][0].shape == (4, 2, *patch) and runs[0][1].shape == (4, *patch)


def test_augment_batch_leaves_the_callers_random_state_alone():
    np.random.seed(1)
    random.seed(1)
    expected = np.random.uniform(), random.random()
    np.random.seed(1)
    random.seed(1)
    config = AugmentConfig(**{**SPATIAL_ONLY, "noise_p": 1})
    box = sample_size(config, (16, 16))
    augment_batch(build_transforms(config, (16, 16)), np.zeros((2, 1, *box), np.float32),
                  np.zeros((2, *box), np.uint8), seed=3)
    assert (np.random.uniform(), random.random()) == expected


@pytest.mark.parametrize("patch", [(40, 48), (24, 32, 28)])
@pytest.mark.parametrize("elastic_p, reach, at_most", [(0, 2, 0.07), (1, 3, 0.1)])
def test_labels_stay_aligned_with_images(patch, elastic_p, reach, at_most):
    """An image equal to its label map, transformed spatially: the rounded image is the transformed label.

    The image is read back as the nearest class value. Cubic interpolation of the image and
    nearest of the label differ only at class boundaries (the spline overshoots by up to
    ~0.7 a voxel or two from a 0|4 edge): with rotation, scaling and mirroring every
    disagreement lies within 2 voxels of one; a strong elastic deformation (alpha up to
    900) folds space, so there the allowance is 3 voxels. No new class may appear.
    """
    config = AugmentConfig(**{**SPATIAL_ONLY, "elastic_p": elastic_p})
    box = sample_size(config, patch)
    labels = np.repeat(_blobs(box)[None], 4, axis=0)
    images = labels[:, None].astype(np.float32)
    x, y = augment_batch(build_transforms(config, patch), images, labels, seed=5)
    centre = tuple(slice((b - p) // 2, (b - p) // 2 + p) for b, p in zip(box, patch))
    assert np.mean(y != labels[(slice(None), *centre)]) > 0.1  # the transforms really moved things
    classes = np.array([0, 1, 2, 4])
    disagree = classes[np.abs(x[:, 0, ..., None] - classes).argmin(-1)] != y
    assert disagree.mean() < at_most
    assert not (disagree & ~_near_boundary(y, reach)).any()
    assert set(np.unique(y)) <= {0, 1, 2, 4}


@pytest.mark.parametrize("patch", [(40, 48), (24, 32, 28)])
def test_mirroring_alone_flips_images_and_labels_together(patch):
    config = AugmentConfig(**{**SPATIAL_ONLY, "rotation": 0, "scale": (1, 1), "elastic_p": 0})
    assert sample_size(config, patch) == patch
    labels = np.repeat(_blobs(patch)[None], 8, axis=0)
    x, y = augment_batch(build_transforms(config, patch), labels[:, None].astype(np.float32), labels, seed=2)
    assert (x[:, 0] == y).all()
    assert any((y[i] != labels[i]).any() for i in range(8))


def test_no_augmentation_returns_the_box_unchanged():
    labels = np.repeat(_blobs((20, 24))[None], 2, axis=0)
    images = np.random.default_rng(0).normal(size=(2, 3, 20, 24)).astype(np.float32)
    x, y = augment_batch(build_transforms(AugmentConfig.none(), (20, 24)), images, labels, seed=0)
    assert (x == images).all() and (y == labels).all()
