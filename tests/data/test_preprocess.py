"""Preprocessing on real arrays: normalisation, in-plane sizing, split by case."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tissue_case, write_msd

from hpsearch.data import (
    PreprocessConfig,
    fit_in_plane,
    normalize_intensities,
    read_index,
    split_cases,
)
from hpsearch.data.preprocess import prepare
from hpsearch.errors import HpsearchError


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("zscore_nonzero", [0.0, -1.0, 1.0, 0.0]),
        ("zscore", [-0.8164966, 0.0, 1.6329932, -0.8164966]),
        ("none", [0.0, 1.0, 3.0, 0.0]),
    ],
)
def test_normalize_modes(mode, expected):
    image = np.array([0.0, 1.0, 3.0, 0.0])[:, None]
    np.testing.assert_allclose(normalize_intensities(image, mode)[:, 0], expected, rtol=1e-6)


def test_normalize_is_per_channel_and_constant_safe():
    image = np.stack([np.arange(1, 9.0), np.full(8, 5.0)], axis=-1)
    out = normalize_intensities(image, "zscore_nonzero")
    assert out[:, 0].mean() == pytest.approx(0, abs=1e-6) and out[:, 0].std() == pytest.approx(1, rel=1e-5)
    assert np.all(out[:, 1] == 0)  # constant channel: zeros, not inf


@pytest.mark.parametrize("mode", ["interpolate", "pad_crop"])
@pytest.mark.parametrize("size", [(64, 64), (200, 240), (128, 96)])
def test_fit_odd_sizes_keeps_label_values(mode, size):
    rng = np.random.default_rng(0)
    image, label = tissue_case(rng, (197, 233, 3))
    slices = np.moveaxis(image, 2, 0)[..., None]
    labels = np.moveaxis(label, 2, 0)
    x = fit_in_plane(slices, size, mode)
    y = fit_in_plane(labels, size, mode, is_label=True)
    assert x.shape == (3, *size, 1) and y.shape == (3, *size)
    assert set(np.unique(y)) <= {0, 1, 2, 3}
    assert 3 in y[:, size[0] // 2, size[1] // 2]  # the centre stays the centre


def test_pad_crop_is_exact_and_invertible():
    slices = np.arange(2 * 5 * 7).reshape(2, 5, 7).astype(np.float32)
    padded = fit_in_plane(slices, (9, 9), "pad_crop")
    assert padded.shape == (2, 9, 9) and padded.sum() == slices.sum()
    np.testing.assert_array_equal(fit_in_plane(padded, (5, 7), "pad_crop"), slices)


def test_split_is_by_case_seeded_and_disjoint():
    ids = [f"p{i}" for i in range(10)]
    train, val = split_cases(ids, 0.3, seed=4)
    assert len(val) == 3 and not set(train) & set(val) and sorted(train + val) == sorted(ids)
    assert split_cases(ids, 0.3, seed=4) == (train, val)
    assert split_cases(ids, 0.3, seed=5) != (train, val)
    with pytest.raises(HpsearchError, match="at least 2"):
        split_cases(["only"], 0.2, 0)


def test_prepare_keeps_every_validation_slice_and_some_empty_training_slices(lv_small):
    index = read_index(lv_small)
    full = prepare(index, PreprocessConfig(image_size=(32, 32), keep_empty_fraction=1.0, val_fraction=0.25))
    none = prepare(index, PreprocessConfig(image_size=(32, 32), keep_empty_fraction=0.0, val_fraction=0.25))
    assert len(full.info["val_cases"]) == 2 and len(full.info["train_cases"]) == 6
    assert len(full.val_x) == 2 * 6  # every slice of both validation cases
    assert len(full.train_x) == 6 * 6
    assert len(none.train_x) < len(full.train_x)
    assert none.train_y.reshape(len(none.train_y), -1).any(axis=1).all()  # only slices with LV
    np.testing.assert_array_equal(none.val_y, full.val_y)  # validation untouched by the filter
    assert full.val_case.tolist() == [0] * 6 + [1] * 6
    assert full.train_case.tolist() == [case for case in range(6) for _ in range(6)]  # each slice's case
    assert len(none.train_case) == len(none.train_x) and set(none.train_case) <= set(range(6))
    assert full.train_x.dtype == np.float32 and full.train_y.dtype == np.uint8


def test_prepare_brats_along_another_axis(brats_small):
    data = prepare(read_index(brats_small), PreprocessConfig(slice_axis=0, image_size=(24, 40), val_fraction=0.25))
    assert data.input_shape == (24, 40, 4)
    assert data.num_classes == 4
    assert set(np.unique(data.train_y)) == {0, 1, 2, 3}


def test_prepare_odd_size_brain_slabs(tmp_path):
    rng = np.random.default_rng(3)
    root = write_msd(tmp_path / "brain", [tissue_case(rng) for _ in range(3)], {0: "bg", 1: "csf", 2: "gm", 3: "wm"})
    data = prepare(read_index(root), PreprocessConfig(image_size=(64, 64)))
    assert data.input_shape == (64, 64, 1) and data.class_names == ["bg", "csf", "gm", "wm"]
