"""Physical-space preprocessing: the round trip to the target spacing and back, CT
normalisation with training-foreground statistics, and the per-case target."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from physical_cases import GRIDS, phantom, write_dataset

from hpsearch.data import (
    VolumeConfig,
    case_target,
    ct_statistics,
    foreground_intensities,
    normalize_case,
    prepare_volumes,
    preprocess_case,
    read_index,
    split_cases,
    to_original_geometry,
)
from hpsearch.data.resample import resample_labels, resampled_shape
from hpsearch.errors import HpsearchError


def _config(target, dims=3, normalize="zscore", slice_axis=None):
    return VolumeConfig(dims=dims, slice_axis=slice_axis, target_spacing=target, normalize=normalize,
                        val_fraction=0.34, split_seed=0)


def _dice(a, b, cls):
    return 2 * np.sum((a == cls) & (b == cls)) / (np.sum(a == cls) + np.sum(b == cls))


# Coarser than 4 mm along Z a 3-slice lesion is lost for good: that is the data, not the code.
@pytest.mark.parametrize("target", [(1.0, 1.0, 3.0), (0.5, 0.6, 2.0), (1.2, 1.1, 3.0), (1.0, 1.0, 4.0)])
def test_labels_to_target_spacing_and_back_keep_classes_and_geometry(target):
    shape, spacing = (37, 29, 11), (0.7, 0.9, 3.0)
    _, label = phantom(shape, spacing, np.random.default_rng(0))
    resampled = resample_labels(label, spacing, target)
    assert resampled.shape == resampled_shape(shape, spacing, target)
    assert set(np.unique(resampled)) == {0, 1, 2}  # no class invented, none lost
    one_hot = np.eye(3, dtype=np.float32)[resampled]  # (X', Y', Z', K): what a network would output
    back = to_original_geometry(one_hot, shape, spacing, target)
    assert back.shape == (*shape, 3) and back.dtype == np.float32
    restored = back.argmax(-1)
    for cls in (0, 1, 2):
        assert _dice(restored, label, cls) > 0.85, (cls, _dice(restored, label, cls))


def test_to_original_geometry_without_resampling_is_the_identity():
    scores = np.random.default_rng(0).random((37, 29, 11, 2)).astype(np.float32)
    np.testing.assert_array_equal(to_original_geometry(scores, (37, 29, 11), (0.7, 0.9, 3.0), None), scores)
    with pytest.raises(HpsearchError, match="not on the case's grid"):
        to_original_geometry(scores, (36, 29, 11), (0.7, 0.9, 3.0), None)


def test_preprocess_case_is_channels_first_at_the_target_and_deterministic():
    image = np.random.default_rng(0).normal(100, 20, (37, 29, 11, 2)).astype(np.float32)
    config = _config((1.0, 1.0, 3.0))
    out = preprocess_case(image, (0.7, 0.9, 3.0), config)
    assert out.shape == (2, 26, 26, 11) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, preprocess_case(image, (0.7, 0.9, 3.0), config))
    # Same spacing, or no target: only normalised, not resampled.
    same = preprocess_case(image, (1.0, 1.0, 3.0), config)
    np.testing.assert_array_equal(same, np.moveaxis(normalize_case(image, "zscore"), -1, 0))
    assert preprocess_case(image, (0.7, 0.9, 3.0), _config(None)).shape == (2, 37, 29, 11)


def test_2d_keeps_each_cases_own_spacing_along_the_slice_axis():
    config = _config((1.0, 1.0, 3.0), dims=2, slice_axis=2)
    assert case_target((0.7, 0.9, 2.5), config) == (1.0, 1.0, 2.5)
    assert case_target((1.0, 1.0, 5.0), config) is None  # in-plane already at the target
    image = np.ones((35, 31, 12, 1), np.float32)
    assert preprocess_case(image, (0.75, 0.85, 2.5), config).shape == (1, 26, 26, 12)
    assert case_target((0.7, 0.9, 2.5), _config((1.0, 1.0, 3.0))) == (1.0, 1.0, 3.0)


def test_ct_scheme_clips_to_foreground_percentiles_then_z_scores():
    rng = np.random.default_rng(0)
    image = rng.normal(50, 10, (20, 20, 5, 1)).astype(np.float32)
    label = np.zeros((20, 20, 5), np.uint8)
    label[5:15, 5:15] = 1
    image[0, 0, 0, 0], image[1, 0, 0, 0] = 5000.0, -5000.0  # outliers outside the foreground
    stats = ct_statistics([foreground_intensities(image, label)])
    foreground = image[label > 0][:, 0]
    assert abs(stats["mean"][0] - foreground.mean()) < 0.05 * foreground.std()
    assert abs(stats["std"][0] - foreground.std()) < 0.05 * foreground.std()
    low, high = stats["percentile_00_5"][0], stats["percentile_99_5"][0]
    assert foreground.min() <= low < high <= foreground.max()
    out = normalize_case(image, "ct", stats)
    expected = (np.clip(image, low, high) - stats["mean"][0]) / stats["std"][0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out[0, 0, 0, 0] == pytest.approx((high - stats["mean"][0]) / stats["std"][0], rel=1e-5)
    with pytest.raises(HpsearchError, match="needs the training set's CT statistics"):
        normalize_case(image, "ct", {})
    with pytest.raises(HpsearchError, match="needs foreground voxels"):
        ct_statistics([foreground_intensities(image, np.zeros_like(label))])


def test_ct_statistics_come_from_the_training_cases_only(tmp_path):
    ids = [f"case_{i:03d}" for i in range(len(GRIDS))]
    _, val_ids = split_cases(ids, 0.34, 0)
    bright = {ids.index(v) for v in val_ids}
    root = write_dataset(tmp_path / "ct", bright=bright)  # validation foreground 3000 HU brighter
    data = prepare_volumes(read_index(root), _config((1.0, 1.0, 3.0), normalize="ct"))
    stats = data.info["intensity"]
    assert stats["scheme"] == "ct" and data.info["val_cases"] == val_ids
    assert 20 < stats["mean"][0] < 150 and stats["percentile_99_5"][0] < 500, stats
    # Training foreground, read back from the files, agrees with the sampled statistics.
    values = []
    for case_id in data.info["train_cases"]:
        image = np.asarray(nib.load(root / "imagesTr" / f"{case_id}.nii.gz").dataobj)
        label = np.asarray(nib.load(root / "labelsTr" / f"{case_id}.nii.gz").dataobj)
        values.append(image[label > 0])
    values = np.concatenate(values)
    assert abs(stats["mean"][0] - values.mean()) < 0.05 * values.std()
    # The bright validation case is clipped at the training foreground's 99.5th percentile.
    ceiling = (stats["percentile_99_5"][0] - stats["mean"][0]) / stats["std"][0]
    assert float(np.max(data.val_images[0])) == pytest.approx(ceiling, rel=1e-4)
