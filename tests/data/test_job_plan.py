"""Patch mode's job settings: validation of the new dataset keys, and the plan resolved
from NIfTI headers (auto, explicit and native spacing; auto and explicit patches)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import yaml
from physical_cases import GRIDS, write_dataset

from hpsearch.data import DatasetConfig, check_dataset, header_fingerprint, make_plan, read_index, resolve_plan
from hpsearch.data.plan import poolings
from hpsearch.errors import HpsearchError
from hpsearch.spec import load_job

GIB = 2**30
SHAPES = np.array([g[0] for g in GRIDS], float)
SPACINGS = np.array([g[1] for g in GRIDS], float)


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ct")


def _job(tmp_path: Path, dataset: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "model": "unet", "dataset": {"path": "d", **dataset}}))
    return path


@pytest.mark.parametrize("dataset, key, words", [
    ({"spacing": [1, 1, 3]}, "dataset.spacing", "set dataset.dims"),
    ({"spacing": "none"}, "dataset.spacing", "set dataset.dims"),
    ({"patch_size": [32, 32]}, "dataset.patch_size", "set dataset.dims"),
    ({"foreground_fraction": 0.5}, "dataset.foreground_fraction", "set dataset.dims"),
    ({"samples_per_epoch": 64}, "dataset.samples_per_epoch", "set dataset.dims"),
    ({"normalize": "ct"}, "dataset.dims", "normalize: ct is only available in patch mode"),
    ({"dims": 3, "patch_size": [32, 32]}, "dataset.patch_size", "needs 3 sizes for dims 3"),
    ({"dims": 2, "patch_size": [32, 32, 8]}, "dataset.patch_size", "needs 2 sizes for dims 2"),
    ({"dims": 3, "spacing": [1, -1, 3]}, "dataset.spacing", "positive"),
    ({"dims": 3, "spacing": "native"}, "dataset.spacing", "must be auto, none or [sx, sy, sz]"),
    ({"dims": 3, "spacing": [1, 1]}, "dataset.spacing", "must be auto, none or [sx, sy, sz]"),
    ({"dims": 3, "patch_size": [32.5, 32, 8]}, "dataset.patch_size", "must be auto or a list of sizes"),
    ({"dims": 4}, "dataset.dims", "2 or 3"),
    ({"dims": 3, "foreground_fraction": 1.5}, "dataset.foreground_fraction", "less than or equal to 1"),
    ({"dims": 3, "samples_per_epoch": 0}, "dataset.samples_per_epoch", "greater than or equal to 1"),
])
def test_bad_patch_settings_are_one_line_naming_the_key(tmp_path, dataset, key, words):
    path = _job(tmp_path, dataset)
    with pytest.raises(HpsearchError) as info:
        load_job(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: {key}: ") and words in message, message


def test_existing_job_files_load_and_switch_to_patch_mode_with_one_override():
    for name in ("demo", "brats", "fcn-lv"):  # the slice-mode jobs stay in slice mode
        job_file = Path("jobs") / f"{name}.yaml"
        assert load_job(job_file).dataset.dims is None
        dims = 2 if name == "fcn-lv" else 3  # the FCN has no 3D variant
        job = load_job(job_file, overrides=[f"dataset.dims={dims}", "dataset.spacing=[1.0, 1.0, 2.5]"])
        assert job.dataset.dims == dims and job.dataset.spacing == (1.0, 1.0, 2.5)
    default = DatasetConfig(path="d", dims=2)
    assert (default.spacing, default.patch_size, default.foreground_fraction, default.samples_per_epoch) == (
        "auto", "auto", 0.33, 256)


def test_header_fingerprint_matches_the_full_read_without_reading_voxels(ct_data, tmp_path):
    index = read_index(ct_data)
    full = check_dataset(ct_data).fingerprint
    fast = header_fingerprint(index)
    assert fast.shapes == full.shapes
    np.testing.assert_allclose(fast.spacings, full.spacings)
    assert [c.name for c in fast.channels] == ["CT"] and fast.label_values == [0, 1, 2]
    # Voxels are not read: a case whose data is cut off after its header still plans.
    import shutil
    copy = Path(shutil.copytree(ct_data, tmp_path / "cut"))
    image = copy / "imagesTr" / "case_000.nii.gz"
    raw = gzip.decompress(image.read_bytes())
    image.write_bytes(gzip.compress(raw[:400]))
    assert header_fingerprint(read_index(copy)).shapes == fast.shapes
    assert not check_dataset(copy).ok


def test_auto_spacing_and_patch_are_the_plans(ct_data):
    index = read_index(ct_data)
    plan = resolve_plan(index, DatasetConfig(path=ct_data, dims=3), GIB)
    assert plan == make_plan(check_dataset(ct_data).fingerprint, 3, GIB)
    assert plan.spacing_source == "plan" and plan.patch_source == "plan" and plan.resample
    volume = DatasetConfig(path=ct_data, dims=3).volume_config(plan)
    assert volume.target_spacing == plan.target_spacing and volume.slice_axis is None


def test_explicit_spacing_recomputes_the_median_shape(ct_data):
    target = (0.5, 0.5, 2.0)
    plan = resolve_plan(read_index(ct_data), DatasetConfig(path=ct_data, dims=3, spacing=target), GIB)
    assert plan.target_spacing == target and plan.spacing_source == "explicit"
    expected = np.round(np.median(np.round(SHAPES * SPACINGS / target), axis=0)).astype(int)
    assert plan.median_shape == tuple(expected)
    assert plan.patch_size[0] > 37, "a finer grid holds more voxels, so a larger patch"


def test_spacing_none_keeps_native_grids(ct_data):
    config = DatasetConfig(path=ct_data, dims=3, spacing="none")
    plan = resolve_plan(read_index(ct_data), config, GIB)
    assert not plan.resample and plan.spacing_source == "none"
    assert plan.median_shape == tuple(np.median(SHAPES, axis=0).round().astype(int))
    assert config.volume_config(plan).target_spacing is None
    assert "not resampled" in plan.format()


def test_2d_keeps_the_raw_shape_along_the_slice_axis(ct_data):
    config = DatasetConfig(path=ct_data, dims=2, spacing=(1.0, 1.0, 1.0))
    plan = resolve_plan(read_index(ct_data), config, GIB)
    assert plan.slice_axis == 2 and plan.axes == (0, 1)
    assert plan.median_shape[2] == int(np.median(SHAPES[:, 2]))  # not 3x as many 1 mm slices
    assert config.volume_config(plan).slice_axis == 2


def test_explicit_patch_gets_its_own_poolings(ct_data):
    config = DatasetConfig(path=ct_data, dims=3, spacing=(1.0, 1.0, 3.0), patch_size=(48, 32, 8))
    plan = resolve_plan(read_index(ct_data), config, GIB)
    assert plan.patch_size == (48, 32, 8) and plan.patch_source == "explicit"
    assert plan.poolings == tuple(poolings([1.0, 1.0, 3.0], [48, 32, 8]))
    assert len(plan.filters) == max(plan.poolings) + 1 and plan.batch_size >= 2


@pytest.mark.parametrize("patch, budget, words", [
    ((4, 4, 4), GIB, "too small to pool even once"),
    ((37, 29, 11), GIB, "not a multiple of 2**poolings"),
    ((256, 256, 64), GIB // 8, "over the budget"),
])
def test_unusable_patch_is_refused_in_one_line(ct_data, patch, budget, words):
    config = DatasetConfig(path=ct_data, dims=3, patch_size=patch)
    with pytest.raises(HpsearchError) as info:
        resolve_plan(read_index(ct_data), config, budget)
    message = str(info.value)
    assert message.startswith("dataset.patch_size: ") and words in message and "\n" not in message, message
