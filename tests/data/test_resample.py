"""Resampling to a target spacing and back (nnU-Net's rules): shapes, classes, geometry, channels."""

from __future__ import annotations

import numpy as np
import pytest

from hpsearch.data.resample import (
    resample_image,
    resample_image_to_shape,
    resample_labels,
    resample_labels_to_shape,
    resampled_shape,
    separate_axis,
)
from hpsearch.errors import HpsearchError
from hpsearch.metrics import compute_dice


def _blobs(shape=(24, 29, 27)) -> np.ndarray:
    """Labels 0/1/2/4 (BraTS-style values): an ellipsoid with a smaller one and a slab inside."""
    grid = np.indices(shape).astype(float)
    centre = [(n - 1) / 2 for n in shape]
    radius = lambda r: sum(((g - c) / (r * n / 2)) ** 2 for g, c, n in zip(grid, centre, shape))  # noqa: E731
    labels = np.zeros(shape, np.uint8)
    labels[radius(0.8) < 1] = 1
    labels[radius(0.45) < 1] = 2
    labels[(radius(0.8) < 1) & (grid[0] > centre[0] + 3)] = 4
    return labels


@pytest.mark.parametrize("shape, spacing, target, expected", [
    ((10, 10, 10), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (10, 10, 10)),
    ((197, 233, 5), (1.0, 1.0, 3.0), (1.5, 1.5, 1.0), (131, 155, 15)),   # 131.33, 155.33 round down
    ((13, 17, 19), (0.8, 0.8, 4.0), (1.2, 1.2, 1.5), (9, 11, 51)),       # 8.67 -> 9, 50.67 -> 51
    ((3, 3), (1.0, 1.0), (10.0, 10.0), (1, 1)),                          # never below one voxel
    ((7, 9), (0.5, 2.0), (1.0, 1.0), (4, 18)),                           # 3.5 rounds half to even
])
def test_resampled_shape(shape, spacing, target, expected):
    assert resampled_shape(shape, spacing, target) == expected


@pytest.mark.parametrize("spacing, target, axis", [
    ((1.0, 1.0, 1.0), (2.0, 2.0, 2.0), None),
    ((0.7, 0.7, 5.0), (1.0, 1.0, 1.0), 2),        # the input is anisotropic
    ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), 0),        # the target is
    ((0.24, 1.25, 1.25), (1.0, 1.0, 1.0), None),  # two equally coarse axes: no separate axis
    ((0.5, 4.0), (1.0, 1.0), None),               # 2D
])
def test_separate_axis(spacing, target, axis):
    assert separate_axis(spacing, target) == axis


@pytest.mark.parametrize("spacing, target", [
    ((1.0, 1.0, 1.0), (1.7, 0.6, 2.3)),  # anisotropic target: axis 2 separately
    ((0.8, 0.8, 4.0), (1.2, 1.2, 1.5)),  # anisotropic input, upsampled along the coarse axis
    ((1.0, 1.0, 1.0), (1.6, 1.6, 1.6)),  # isotropic, downsampled: all axes together
])
@pytest.mark.parametrize("order", [1, 0])
def test_label_round_trip_keeps_classes_and_geometry(spacing, target, order):
    labels = _blobs()
    there = resample_labels(labels, spacing, target, order=order)
    assert there.shape == resampled_shape(labels.shape, spacing, target)
    back = resample_labels_to_shape(there, labels.shape, order=order, axis=separate_axis(spacing, target))
    assert back.shape == labels.shape and back.dtype == labels.dtype
    assert set(np.unique(there)) <= {0, 1, 2, 4} and set(np.unique(back)) == {0, 1, 2, 4}
    foreground = compute_dice(back > 0, labels > 0, 2)[1]
    assert foreground > 0.9, foreground


def test_linear_one_hot_labels_do_not_invent_the_class_between_neighbours():
    # 0 next to 4: interpolating the values would give 1, 2 or 3 at the boundary.
    labels = np.zeros((8, 8), np.uint8)
    labels[:, 4:] = 4
    out = resample_labels(labels, (1.0, 1.0), (0.3, 0.3))
    assert set(np.unique(out)) == {0, 4}
    assert out.shape == (27, 27) and (out[:, :13] == 0).all() and (out[:, 14:] == 4).all()


def test_multichannel_image_resamples_each_channel_alike():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.random((16, 18, 6)), 0), 1).astype(np.float32)
    image = np.stack([smooth, 2 * smooth + 1, -smooth], axis=-1)
    out = resample_image(image, (1.0, 1.0, 4.0), (1.3, 1.3, 2.0))
    assert out.shape == (12, 14, 12, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 1], 2 * out[..., 0] + 1, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out[..., 2], -out[..., 0], rtol=1e-5, atol=1e-4)
    # Order 3 is clipped to the input range; order 0 along the coarse axis copies slices.
    assert out[..., 0].min() >= smooth.min() and out[..., 0].max() <= smooth.max()
    np.testing.assert_array_equal(out[:, :, 0, 0], out[:, :, 1, 0])
    back = resample_image_to_shape(out, image.shape[:3], axis=separate_axis((1.0, 1.0, 4.0), (1.3, 1.3, 2.0)))
    assert back.shape == image.shape
    assert np.corrcoef(back[..., 0].ravel(), smooth.ravel())[0, 1] > 0.99


def test_image_without_channels_and_same_spacing_is_unchanged():
    image = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    np.testing.assert_array_equal(resample_image(image, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0)), image)


@pytest.mark.parametrize("shape, spacing, target", [
    ((4, 4, 4), (1.0, 1.0), (1.0, 1.0, 1.0)),
    ((4, 4, 4), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0)),
    ((4, 4, 4), (1.0, 1.0, 1.0), (1.0, -1.0, 1.0)),
])
def test_bad_spacings_are_one_clear_error(shape, spacing, target):
    with pytest.raises(HpsearchError, match="spacing"):
        resample_labels(np.zeros(shape, np.uint8), spacing, target)
