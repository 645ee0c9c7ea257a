"""`data check`: fingerprint of good datasets, one line per defect of broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import AFFINE, snapshot, write_msd, write_nifti

from hpsearch.data import check_dataset


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


@pytest.mark.parametrize(
    "breakage",
    [_missing_label, _shape_mismatch, _affine_mismatch, _undeclared_label, _nan_intensity,
     _truncated, _not_gzip, _empty, _wrong_channels, _fractional_label],
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


def test_all_defects_are_reported_in_one_pass(tmp_path):
    root = _good(tmp_path / "broken")
    _missing_label(root)
    _nan_intensity(root)
    report = check_dataset(root)
    assert len(report.defects) == 2
