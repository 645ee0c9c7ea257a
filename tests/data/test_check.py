"""`data check`: fingerprint of good datasets, one line per defect of broken ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import AFFINE, snapshot, write_msd, write_nifti, write_nnunet

from hpsearch.data import DatasetConfig, check_dataset, load_dataset
from hpsearch.errors import HpsearchError


def _good(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(n):
        label = np.zeros((16, 16, 4), np.uint8)
        label[4:10, 5:12, 1:3] = 1
        cases.append((rng.uniform(10, 100, (16, 16, 4)), label))
    return write_msd(root, cases, {0: "background", 1: "LV"})


def test_fingerprint_of_brats_like_set(brats_small):
    before = snapshot(brats_small)
    report = check_dataset(brats_small)
    assert report.ok, report.defects
    fp = report.fingerprint
    assert fp.num_cases == 4 and fp.layout == "msd"
    assert [c.name for c in fp.channels] == ["T1", "T1ce", "T2", "FLAIR"]
    assert fp.label_values == [0, 1, 2, 4] and set(fp.label_voxels) == {0, 1, 2, 4}
    assert sum(fp.label_voxels.values()) == 4 * 32 * 32 * 8
    assert fp.shapes == [[32, 32, 8]] * 4
    assert fp.spacing_min[2] > fp.spacing_min[0]  # anisotropic voxels
    text = report.format()
    for needle in ("cases       4", "T1ce", "4=enhancing tumour", "spacing mm"):
        assert needle in text
    assert snapshot(brats_small) == before


def test_intensity_statistics_are_exact_for_mean_and_range(tmp_path):
    root = _good(tmp_path / "d")
    report = check_dataset(root)
    voxels = np.concatenate([np.asarray(nib.load(p).dataobj).ravel() for p in sorted((root / "imagesTr").iterdir())])
    stats = report.fingerprint.channels[0]
    assert stats.mean == pytest.approx(voxels.mean(), rel=1e-6)
    assert stats.min == pytest.approx(voxels.min()) and stats.max == pytest.approx(voxels.max())
    assert report.fingerprint.label_voxels[1] == 3 * 6 * 7 * 2


def _missing_label(root):
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    return "labelsTr/case_001.nii.gz", "file is missing"


def _shape_mismatch(root):
    write_nifti(root / "labelsTr" / "case_000.nii.gz", np.zeros((16, 16, 3), np.uint8))
    return "labelsTr/case_000.nii.gz", "differs from image shape"


def _affine_mismatch(root):
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    write_nifti(root / "labelsTr" / "case_002.nii.gz", np.zeros((16, 16, 4), np.uint8), shifted)
    return "labelsTr/case_002.nii.gz", "affine differs"


def _undeclared_label(root):
    label = np.zeros((16, 16, 4), np.uint8)
    label[0, 0, 0] = 3
    write_nifti(root / "labelsTr" / "case_001.nii.gz", label)
    return "labelsTr/case_001.nii.gz", "label values [3] are not declared"


def _nan_intensity(root):
    image = np.ones((16, 16, 4), np.float32)
    image[1, 2, 3] = np.nan
    image[2, 2, 2] = np.inf
    write_nifti(root / "imagesTr" / "case_000.nii.gz", image)
    return "imagesTr/case_000.nii.gz", "2 voxels are NaN or infinite"


def _truncated(root):
    path = root / "imagesTr" / "case_002.nii.gz"
    path.write_bytes(path.read_bytes()[:400])
    return "imagesTr/case_002.nii.gz", "unreadable or truncated"


def _not_gzip(root):
    (root / "imagesTr" / "case_001.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
    return "imagesTr/case_001.nii.gz", "unreadable or truncated"


def _empty(root):
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["training"] = []
    (root / "dataset.json").write_text(json.dumps(manifest))
    return "dataset.json", "lists no training cases"


def _wrong_channels(root):
    write_nifti(root / "imagesTr" / "case_000.nii.gz", np.ones((16, 16, 4, 2), np.float32))
    return "imagesTr/case_000.nii.gz", "declared channel"


def _fractional_label(root):
    write_nifti(root / "labelsTr" / "case_000.nii.gz", np.full((16, 16, 4), 0.5, np.float32))
    return "labelsTr/case_000.nii.gz", "non-integer"


def _edit_training(root, edit):
    manifest = json.loads((root / "dataset.json").read_text())
    edit(manifest["training"])
    (root / "dataset.json").write_text(json.dumps(manifest))


def _scan_elsewhere(root) -> Path:
    """A valid scan outside the dataset folder: read, it would pass every other check."""
    outside = root.parent / "elsewhere" / "case_001.nii.gz"
    outside.parent.mkdir(exist_ok=True)
    outside.write_bytes((root / "imagesTr" / "case_001.nii.gz").read_bytes())
    return Path(os.path.realpath(outside))  # as the defect names it, symlinks followed


def _outside_relative(root):
    outside = _scan_elsewhere(root)
    _edit_training(root, lambda training: training[1].update(image="../elsewhere/case_001.nii.gz"))
    return "dataset.json", f"training[1].image: '../elsewhere/case_001.nii.gz' resolves to {outside}, outside"


def _outside_absolute(root):
    outside = _scan_elsewhere(root)
    _edit_training(root, lambda training: training[1].update(image=str(outside)))
    return "dataset.json", f"training[1].image: '{outside}' resolves to {outside}, outside"


def _outside_by_symlink(root):
    outside = _scan_elsewhere(root)
    (root / "imagesTr" / "case_001.nii.gz").unlink()
    (root / "imagesTr" / "case_001.nii.gz").symlink_to(outside)
    return "dataset.json", f"training[1].image: './imagesTr/case_001.nii.gz' resolves to {outside}, outside"


def _label_outside(root):
    _edit_training(root, lambda training: training[2].update(label="/nonexistent/x.nii.gz"))
    return "dataset.json", "training[2].label: '/nonexistent/x.nii.gz' resolves to /nonexistent/x.nii.gz, outside"


def _listed_twice(root):
    _edit_training(root, lambda training: training.append(dict(training[0])))
    return "dataset.json", "training[3]: case case_000 is listed twice (also training[0])"


def _single_case(root):
    _edit_training(root, lambda training: training.__delitem__(slice(1, None)))
    return "dataset.json", "1 usable case; a train/validation split by case needs at least 2"


def _symlink_loop(root):
    path = root / "imagesTr" / "case_002.nii.gz"
    path.unlink()
    path.symlink_to(path)
    return "imagesTr/case_002.nii.gz", "is a symlink loop"


def _folder_for_a_file(root):
    path = root / "labelsTr" / "case_000.nii.gz"
    path.unlink()
    path.mkdir()
    return "labelsTr/case_000.nii.gz", "is a folder, not a file"


DECLARATION_DEFECTS = [_outside_relative, _outside_absolute, _outside_by_symlink, _label_outside, _listed_twice,
                       _single_case]


@pytest.mark.parametrize(
    "breakage",
    [_missing_label, _shape_mismatch, _affine_mismatch, _undeclared_label, _nan_intensity,
     _truncated, _not_gzip, _empty, _wrong_channels, _fractional_label, *DECLARATION_DEFECTS,
     _symlink_loop, _folder_for_a_file],
)
def test_each_defect_is_one_line_naming_file_and_problem(tmp_path, breakage):
    root = _good(tmp_path / "broken")
    file_part, problem = breakage(root)
    before = snapshot(root)
    report = check_dataset(root)
    assert snapshot(root) == before, "check wrote into the dataset folder"
    assert len(report.defects) == 1, [str(d) for d in report.defects]
    line = str(report.defects[0])
    assert "\n" not in line
    assert file_part in line and problem in line, line


@pytest.mark.parametrize("breakage", DECLARATION_DEFECTS)
def test_training_refuses_what_check_reports_before_reading_a_case(tmp_path, breakage):
    root = _good(tmp_path / "broken")
    file_part, problem = breakage(root)
    config = DatasetConfig(path=root, image_size=(16, 16), cache_dir=tmp_path / "cache")
    with pytest.raises(HpsearchError) as info:
        load_dataset(config)
    assert str(info.value) == str(check_dataset(root).defects[0])
    assert file_part in str(info.value) and problem in str(info.value) and "\n" not in str(info.value)
    assert not list((tmp_path / "cache").glob("prepared-*")), "nothing may be prepared from such a dataset"


def test_nnunet_file_linked_from_outside_is_a_defect(tmp_path):
    rng = np.random.default_rng(0)
    cases = [(rng.normal(size=(8, 8, 2, 1)), (rng.random((8, 8, 2)) > 0.5).astype(np.uint8)) for _ in range(3)]
    root = write_nnunet(tmp_path / "Dataset001_X", cases, {"background": 0, "a": 1}, ["CT"])
    outside = tmp_path / "elsewhere.nii.gz"
    (root / "labelsTr" / "pat001.nii.gz").rename(outside)
    (root / "labelsTr" / "pat001.nii.gz").symlink_to(outside)
    [defect] = check_dataset(root).defects
    real = os.path.realpath(outside)
    assert str(defect).startswith(f"{root / 'labelsTr' / 'pat001.nii.gz'}: resolves to {real}, outside the dataset")


def test_all_defects_are_reported_in_one_pass(tmp_path):
    root = _good(tmp_path / "broken")
    _missing_label(root)
    _nan_intensity(root)
    report = check_dataset(root)
    assert len(report.defects) == 2


@pytest.mark.parametrize("target", ["loop", "gone"])
def test_a_broken_symlink_as_synthetic_dataset_path_is_named_not_generated_into(tmp_path, target):
    path = tmp_path / "loop"
    path.symlink_to(tmp_path / target)
    config = DatasetConfig(path=path, synthetic="lv", synthetic_cases=2, cache_dir=tmp_path / "cache")
    with pytest.raises(HpsearchError, match=f"^{path}: is a symlink (loop|to {tmp_path / 'gone'})"):
        load_dataset(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]
