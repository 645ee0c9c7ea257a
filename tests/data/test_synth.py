"""Tests for hpsearch.data.synth: real NIfTI files written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from hpsearch.data.synth import synthesize
from hpsearch.errors import HpsearchError


def _load_cases(root: Path) -> list[tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    manifest = json.loads((root / "dataset.json").read_text())
    return [
        (nib.load(root / e["image"]), nib.load(root / e["label"]))
        for e in manifest["training"]
    ]


def _arrays(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(img.dataobj), np.asarray(lab.dataobj)) for img, lab in _load_cases(root)]


@pytest.fixture(scope="module")
def lv_root(tmp_path_factory) -> Path:
    return synthesize("lv", tmp_path_factory.mktemp("synth") / "lv", cases=4, seed=3)


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory) -> Path:
    return synthesize("brats", tmp_path_factory.mktemp("synth") / "brats", cases=3, seed=3)


def test_lv_manifest(lv_root):
    manifest = json.loads((lv_root / "dataset.json").read_text())
    assert set(manifest) >= {"name", "description", "tensorImageSize", "modality", "labels",
                             "numTraining", "numTest", "training", "test"}
    assert manifest["tensorImageSize"] == "3D"
    assert manifest["modality"] == {"0": "MRI"}
    assert manifest["labels"] == {"0": "background", "1": "LV"}
    assert manifest["numTraining"] == 4 and manifest["numTest"] == 0 and manifest["test"] == []
    first = {"image": "./imagesTr/lv_000.nii.gz", "label": "./labelsTr/lv_000.nii.gz"}
    assert manifest["training"][0] == first
    for entry in manifest["training"]:
        assert (lv_root / entry["image"]).is_file() and (lv_root / entry["label"]).is_file()


def test_lv_volumes(lv_root):
    has_lv = no_lv = 0
    for img, lab in _load_cases(lv_root):
        assert img.shape == lab.shape == (96, 96, 12)
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(img.affine, lab.affine)
        assert not np.allclose(img.affine, np.eye(4))
        zooms = np.array(img.header.get_zooms())
        np.testing.assert_allclose(zooms, np.abs(np.diag(img.affine)[:3]), rtol=1e-5)
        assert 1.2 < zooms[0] < 1.6 and zooms[0] == zooms[1] and 6.5 < zooms[2] < 9.5
        assert img.header.get_xyzt_units()[0] == "mm"
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        image, label = np.asarray(img.dataobj), np.asarray(lab.dataobj)
        assert set(np.unique(label)) <= {0, 1}
        per_slice = label.any(axis=(0, 1))
        has_lv += per_slice.sum()
        no_lv += (~per_slice).sum()
        assert per_slice[-1] == 0  # the apex runs out before the last slice
        # Background is dark but noisy, not a constant.
        corner = image[:8, :8]
        assert corner.mean() < 100 and corner.std() > 0
    assert has_lv > 0 and no_lv > 0


def test_lv_blood_pool_brighter_than_myocardium(lv_root):
    ring_struct = np.ones((5, 5, 1), dtype=bool)  # in-plane only: slices are 8 mm apart
    for image, label in _arrays(lv_root):
        lv = label == 1
        ring = ndimage.binary_dilation(lv, ring_struct) & ~lv
        assert image[lv].mean() > 1.5 * image[ring].mean()


def test_brats_volumes(brats_root):
    manifest = json.loads((brats_root / "dataset.json").read_text())
    assert manifest["tensorImageSize"] == "4D"
    assert manifest["modality"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert manifest["labels"] == {
        "0": "background", "1": "necrotic core", "2": "edema", "4": "enhancing tumour"
    }
    assert manifest["training"][2]["image"] == "./imagesTr/brats_002.nii.gz"
    for img, lab in _load_cases(brats_root):
        assert img.shape == (64, 64, 24, 4) and lab.shape == (64, 64, 24)
        np.testing.assert_array_equal(img.affine, lab.affine)
        np.testing.assert_allclose(img.header.get_zooms()[:3], (1.0, 1.0, 2.5))
        image, label = np.asarray(img.dataobj), np.asarray(lab.dataobj)
        assert image.dtype == np.float32
        assert set(np.unique(label)) == {0, 1, 2, 4}
        # Skull-stripped: exactly zero outside the head, positive inside.
        assert (image[0, 0, :] == 0).all() and (image[32, 32, 12] > 0).all()


def test_brats_regions_nest_and_contrast(brats_root):
    for image, label in _arrays(brats_root):
        necrosis_grown = ndimage.binary_dilation(label == 1)
        assert np.isin(label[necrosis_grown], [1, 4]).all()
        assert np.isin(label[ndimage.binary_dilation(label == 1, iterations=2)], [1, 2, 4]).all()
        assert np.isin(label[ndimage.binary_dilation((label == 1) | (label == 4))], [1, 2, 4]).all()
        t1, t1ce, t2, flair = np.moveaxis(image, -1, 0)
        assert t1ce[label == 4].mean() > 1.5 * t1ce[label == 1].mean()
        assert flair[label == 2].mean() > flair[label == 0][flair[label == 0] > 0].mean()
        assert t2[label == 2].mean() > t1[label == 2].mean()
        tumour_slices = (label > 0).any(axis=(0, 1))
        assert tumour_slices.any() and not tumour_slices.all()


@pytest.mark.parametrize("kind", ["lv", "brats"])
def test_deterministic_for_a_seed(tmp_path, kind):
    shape = (40, 40, 8) if kind == "lv" else (32, 32, 10)
    a = _arrays(synthesize(kind, tmp_path / "a", cases=2, seed=7, shape=shape))
    b = _arrays(synthesize(kind, tmp_path / "b", cases=2, seed=7, shape=shape))
    c = _arrays(synthesize(kind, tmp_path / "c", cases=2, seed=8, shape=shape))
    assert a[0][0].shape[:3] == shape
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a[0][0], c[0][0])
    assert not np.array_equal(a[0][0], a[1][0])  # cases differ within a dataset too


def test_empty_existing_out_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    root = synthesize("lv", tmp_path / "out", cases=1, shape=(32, 32, 4))
    assert root == tmp_path / "out" and (root / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "prostate", "cases": 1}, "lv, brats"),
        ({"kind": "lv", "cases": 0}, "cases"),
        ({"kind": "lv", "cases": 1}, "already exists and is not empty"),
        ({"kind": "brats", "cases": 1, "shape": (8, 8, 8)}, "shape"),
    ],
)
def test_errors_leave_existing_folder_untouched(tmp_path, kwargs, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    if "already" not in message:
        out = tmp_path / "fresh"
    with pytest.raises(HpsearchError, match=message) as info:
        synthesize(out=out, **kwargs)
    assert "\n" not in str(info.value)
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir, no partial output


def test_negative_seed_is_rejected(tmp_path):
    with pytest.raises(HpsearchError, match="seed"):
        synthesize("lv", tmp_path / "out", cases=1, seed=-1)
    assert list(tmp_path.iterdir()) == []
