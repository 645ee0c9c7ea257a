"""Patch mode's cache entries: built once from real anisotropic NIfTI files, hit, keyed by
the resolved settings, rebuilt when damaged; validation labels in the scan's geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import snapshot
from physical_cases import GRIDS, write_dataset

from hpsearch.data import (
    DatasetConfig,
    PreparedData,
    VolumeData,
    case_target,
    load_dataset,
    load_volume_data,
    read_index,
    resolve_plan,
)
from hpsearch.data.resample import resampled_shape

GIB = 2**30


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ct")


def _config(root: Path, cache: Path, **settings) -> DatasetConfig:
    return DatasetConfig(path=root, cache_dir=cache, val_fraction=0.34, dims=3, **settings)


def test_entry_is_built_once_then_opened_memory_mapped(ct_data, tmp_path):
    before = snapshot(ct_data)
    config = _config(ct_data, tmp_path, spacing=(1.0, 1.0, 3.0))
    first, hit1 = load_dataset(config, GIB)
    second, hit2 = load_dataset(config, GIB)
    assert (hit1, hit2) == (False, True)
    assert isinstance(second, VolumeData) and isinstance(second.train_images[0], np.memmap)
    for name in ("train_images", "train_labels", "train_foreground", "val_images", "val_labels"):
        for a, b in zip(getattr(first, name), getattr(second, name)):
            np.testing.assert_array_equal(a, b)
    assert second.info == first.info
    entry = Path(second.info["entry"])
    assert entry.parent == tmp_path and entry.name.startswith("volumes-")
    assert load_volume_data(entry).info["counts"]["train_images"] == len(second.info["train_cases"])
    assert second.info["plan"] == resolve_plan(read_index(ct_data), config, GIB).to_dict()
    assert snapshot(ct_data) == before, "nothing may be written into the dataset folder"


def test_arrays_are_at_the_target_and_validation_labels_in_the_original_grid(ct_data, tmp_path):
    config = _config(ct_data, tmp_path, spacing=(1.0, 1.0, 3.0))
    data, _ = load_dataset(config, GIB)
    grids = {f"case_{i:03d}": grid for i, grid in enumerate(GRIDS)}
    info = data.info
    assert info["volume_config"]["target_spacing"] == [1.0, 1.0, 3.0] and info["intensity"] == {}
    for case_id, image, labels, found in zip(
        info["train_cases"], data.train_images, data.train_labels, data.train_foreground
    ):
        shape, spacing = grids[case_id]
        target = case_target(spacing, config.volume_config(resolve_plan(read_index(ct_data), config, GIB)))
        assert image.shape == (1, *resampled_shape(shape, spacing, target)) and image.dtype == np.float32
        assert labels.shape == image.shape[1:] and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert found.dtype == np.int32 and found.shape[1] == 4 and {1, 2} <= set(found[:, 0])
        np.testing.assert_array_equal(labels[found[:, 1], found[:, 2], found[:, 3]], found[:, 0])
        assert np.sum(found[:, 0] == 1) == min(10_000, int(np.sum(labels == 1)))
    for case_id, image, labels, spacing in zip(
        info["val_cases"], data.val_images, data.val_labels, info["val_spacings"]
    ):
        shape, written = grids[case_id]
        np.testing.assert_allclose(spacing, written, rtol=1e-6)
        raw = np.asarray(nib.load(ct_data / "labelsTr" / f"{case_id}.nii.gz").dataobj)
        np.testing.assert_array_equal(labels, raw)  # the scan's own grid, class indices = values here
        assert image.shape[1:] == resampled_shape(shape, spacing, (1.0, 1.0, 3.0))
    assert set(info["case_spacings"]) == set(info["train_cases"]) | set(info["val_cases"])


def test_key_follows_the_resolved_spacing(ct_data, tmp_path):
    _, hit = load_dataset(_config(ct_data, tmp_path, spacing=(1.0, 1.0, 3.0)), GIB)
    assert not hit
    other, hit = load_dataset(_config(ct_data, tmp_path, spacing=(0.8, 0.8, 3.0)), GIB)
    assert not hit and other.train_images[0].shape[1] > 30
    # The same settings with a different memory budget share the entry, with their own plan.
    small, hit = load_dataset(_config(ct_data, tmp_path, spacing=(1.0, 1.0, 3.0)), GIB // 64)
    assert hit and small.info["plan"]["memory_budget_bytes"] == GIB // 64
    native, hit = load_dataset(_config(ct_data, tmp_path, spacing="none"), GIB)
    assert not hit and native.info["volume_config"]["target_spacing"] is None
    assert native.val_images[0].shape[1:] == native.val_labels[0].shape
    assert len([p for p in tmp_path.glob("volumes-*") if p.is_dir()]) == 3


def test_2d_entry_keeps_each_cases_slices(ct_data, tmp_path):
    data, _ = load_dataset(_config(ct_data, tmp_path, spacing=(1.0, 1.0, 1.0)).model_copy(update={"dims": 2}), GIB)
    grids = {f"case_{i:03d}": grid for i, grid in enumerate(GRIDS)}
    for case_id, image in zip(data.info["train_cases"], data.train_images):
        assert image.shape[3] == grids[case_id][0][2]  # Z untouched: no interpolation between slices
    assert data.info["plan"]["dims"] == 2 and data.info["volume_config"]["slice_axis"] == 2


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("file, damage, problem", [
    ("train_images_0000.npy", _flip, "train_images_0000.npy differs from the checksum"),
    ("val_labels_0000.npy", lambda p: p.write_bytes(p.read_bytes()[:-7]), "val_labels_0000.npy has"),
    ("train_foreground_0001.npy", lambda p: p.unlink(), "train_foreground_0001.npy is missing"),
    ("info.json", lambda p: p.write_text("{"), "its file list is unreadable"),
])
def test_damaged_patch_entry_is_rebuilt(ct_data, tmp_path, capsys, file, damage, problem):
    config = _config(ct_data, tmp_path, spacing=(1.0, 1.0, 3.0))
    first, _ = load_dataset(config, GIB)
    expected = [np.array(a) for a in first.train_images + first.val_labels]
    entry = Path(first.info["entry"])
    del first
    damage(entry / file)
    capsys.readouterr()
    data, hit = load_dataset(config, GIB)
    assert not hit
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: cache entry {entry}: {problem}") and "\n" not in warning, warning
    for a, b in zip(expected, data.train_images + data.val_labels):
        np.testing.assert_array_equal(a, b)
    _, hit = load_dataset(config, GIB)
    assert hit
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_slice_mode_is_unchanged(ct_data, tmp_path):
    data, hit = load_dataset(DatasetConfig(path=ct_data, cache_dir=tmp_path, image_size=(32, 32)))
    assert isinstance(data, PreparedData) and not hit and data.train_x.shape[1:] == (32, 32, 1)
    assert Path(data.info["entry"]).name.startswith("prepared-")
