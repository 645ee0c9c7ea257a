"""Sliding-window inference: tiles cover the case, the Gaussian weighting, padding, mirroring."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from hpsearch.errors import HpsearchError
from hpsearch.inference import gaussian_importance, predict_case, sliding_window_predict, sliding_window_tiles


@pytest.mark.parametrize("shape, patch, overlap, starts", [
    ((110,), (64,), 0.5, [0, 23, 46]),            # nnU-Net's own example
    ((64,), (64,), 0.5, [0]),
    ((20,), (32,), 0.5, [0]),                     # smaller than the patch: padded by the caller
    ((19,), (8,), 0.5, [0, 4, 7, 11]),            # ceil(11 / 4) + 1 = 4 steps over 0..11
    ((19,), (8,), 0.0, [0, 6, 11]),
])
def test_tile_starts_per_axis(shape, patch, overlap, starts):
    assert [t[0] for t in sliding_window_tiles(shape, patch, overlap)] == starts


@pytest.mark.parametrize("shape, patch", [((13, 17, 19), (8, 8, 8)), ((37, 41), (16, 12)), ((5, 64), (8, 32))])
def test_tiles_cover_every_voxel_and_stay_inside(shape, patch):
    padded = [max(n, p) for n, p in zip(shape, patch)]
    covered = np.zeros(padded, int)
    for start in sliding_window_tiles(padded, patch):
        assert all(0 <= s and s + p <= n for s, p, n in zip(start, patch, padded))
        covered[tuple(slice(s, s + p) for s, p in zip(start, patch))] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize("patch", [(8, 8, 8), (9, 16), (5, 12, 7)])
def test_gaussian_is_positive_and_peaks_at_the_centre(patch):
    weights = gaussian_importance(patch)
    assert weights.shape == patch and weights.min() > 0
    centre = tuple(p // 2 for p in patch)
    assert weights[centre] == weights.max() == 1.0
    assert weights.min() < 0.05  # corners count far less than the centre


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch


@pytest.mark.parametrize("shape, patch", [
    ((13, 17, 19), (8, 8, 8)),   # odd shapes, 3D
    ((37, 41), (16, 16)),        # 2D
    ((5, 6, 7), (8, 8, 8)),      # smaller than the patch on every axis
    ((5, 40), (16, 16)),         # smaller on one axis only
])
def test_identity_model_reproduces_its_input(shape, patch):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, shape)
    volume = np.eye(3, dtype=np.float32)[labels]  # one-hot input, read back as "logits"
    out = sliding_window_predict(volume, _identity, patch, num_classes=3, batch_size=3)
    assert out.shape == volume.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, volume, atol=1e-6)
    np.testing.assert_array_equal(out.argmax(-1), labels)


def _smooth(batch: np.ndarray) -> np.ndarray:
    """A flip-equivariant 'model': a symmetric box filter over each patch's spatial axes."""
    size = [1] + [3] * (batch.ndim - 2) + [1]
    return ndimage.uniform_filter(batch, size, mode="reflect")


def test_mirroring_an_equivariant_model_changes_nothing():
    volume = np.random.default_rng(1).random((13, 17, 19, 2)).astype(np.float32)
    plain = sliding_window_predict(volume, _smooth, (8, 8, 8), 2)
    mirrored = sliding_window_predict(volume, _smooth, (8, 8, 8), 2, mirror_axes=(0, 1, 2))
    np.testing.assert_allclose(mirrored, plain, atol=1e-5)


def test_mirroring_flips_back_what_it_flipped():
    # A model that is not equivariant (it adds the position along axis 0): every flipped
    # prediction, flipped back, carries the reversed ramp, so the mean is the ramp's mean.
    ramp = np.arange(8, dtype=np.float32)[None, :, None, None, None]
    volume = np.zeros((8, 6, 4, 1), np.float32)
    out = sliding_window_predict(volume, lambda b: b + ramp, (8, 6, 4), 1, mirror_axes=(0, 1))
    np.testing.assert_allclose(out[..., 0], np.full((8, 6, 4), 3.5), atol=1e-6)


def test_all_mirror_combinations_are_predicted():
    seen = []

    def record(batch):
        seen.append(batch[0, :, :, 0].copy())
        return batch

    volume = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    sliding_window_predict(volume, record, (4, 4), 1, mirror_axes=(0, 1))
    expected = [np.flip(volume[..., 0], axes) for r in range(3) for axes in itertools.combinations((0, 1), r)]
    assert len(seen) == 4 and all(np.array_equal(a, b) for a, b in zip(seen, expected))


@pytest.mark.parametrize("kwargs, match", [
    ({"patch_size": (8, 8)}, "spatial axes"),
    ({"patch_size": (8, 8, 8), "mirror_axes": (3,)}, "mirror axes"),
    ({"patch_size": (8, 8, 8), "num_classes": 2}, "expected"),
    ({"patch_size": (8, 8, 8), "overlap": 1.0}, "overlap"),
])
def test_bad_arguments_are_one_clear_error(kwargs, match):
    args = {"num_classes": 1, **kwargs}
    with pytest.raises(HpsearchError, match=match):
        sliding_window_predict(np.zeros((9, 9, 9, 1), np.float32), _identity, **args)


def test_a_one_voxel_patch_axis_visits_each_slice_once():
    assert sliding_window_tiles((5, 8), (1, 8)) == [(i, 0) for i in range(5)]


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_predict_case_2d_keeps_the_case_grid(slice_axis):
    case = np.random.default_rng(1).random((2, 9, 7, 6), np.float32)
    patch = [4, 4, 4]
    del patch[slice_axis]
    seen = []

    def model(batch):
        seen.append(batch.shape)
        return batch[..., :1] * 2

    out = predict_case(case, model, patch, 1, slice_axis=slice_axis, mirror=True)
    assert out.shape == (9, 7, 6, 1)
    np.testing.assert_allclose(out[..., 0], case[0] * 2, atol=1e-5)
    assert all(s[1:] == (4, 4, 2) for s in seen)


def test_predict_case_3d_matches_the_sliding_window():
    case = np.random.default_rng(2).random((1, 10, 9, 8), np.float32)
    out = predict_case(case, lambda x: x, (4, 4, 4), 1)
    np.testing.assert_allclose(out[..., 0], case[0], atol=1e-5)
