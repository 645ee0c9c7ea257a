"""Tests for the ``brain`` synthetic kind (hpsearch.data.synth_brain): real NIfTI files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from hpsearch.data import read_index
from hpsearch.data.synth import synthesize


def _cases(root: Path) -> list[tuple[nib.Nifti1Image, np.ndarray, np.ndarray]]:
    manifest = json.loads((root / "dataset.json").read_text())
    out = []
    for entry in manifest["training"]:
        img, lab = nib.load(root / entry["image"]), nib.load(root / entry["label"])
        out.append((img, np.asarray(img.dataobj), np.asarray(lab.dataobj)))
    return out


@pytest.fixture(scope="module")
def brain_root(tmp_path_factory) -> Path:
    return synthesize("brain", tmp_path_factory.mktemp("synth") / "brain", cases=2, seed=5)


def test_layout_shape_spacing_and_labels(brain_root):
    manifest = json.loads((brain_root / "dataset.json").read_text())
    assert manifest["labels"] == {"0": "background", "1": "grey matter", "2": "white matter"}
    assert manifest["modality"] == {"0": "T1"} and manifest["tensorImageSize"] == "3D"
    assert manifest["training"][1] == {"image": "./imagesTr/brain_001.nii.gz", "label": "./labelsTr/brain_001.nii.gz"}
    assert len(read_index(brain_root).cases) == 2  # the project's own reader accepts it
    for img, image, label in _cases(brain_root):
        assert image.shape == label.shape == (197, 233, 40)  # odd in-plane sizes, as registered T1 scans
        assert image.dtype == np.float32 and label.dtype == np.uint8
        np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 3.0))
        assert set(np.unique(label)) == {0, 1, 2}
        # Skull-stripped: exactly zero at the field of view's edge, tissue is positive.
        assert (image[0] == 0).all() and (image[:, 0] == 0).all()
        assert (image[label > 0] > 0).all()


def test_grey_matter_is_a_thin_ribbon(brain_root):
    for img, _, label in _cases(brain_root):
        spacing = img.header.get_zooms()
        grey, white = label == 1, label == 2
        # Twice the distance to the nearest non-grey voxel at the ribbon's medial ridge
        # (local maxima of the distance map) is its thickness.
        dist = ndimage.distance_transform_edt(grey, sampling=spacing)
        ridge = grey & (dist == ndimage.maximum_filter(dist, size=3))
        thickness = 2 * dist[ridge].mean()
        assert 1.5 < thickness < 3.5, thickness
        # Folded, not a shell: grey matter reaches deep below the brain's outer surface.
        brain = ndimage.binary_fill_holes(label > 0)
        depth = ndimage.distance_transform_edt(brain, sampling=spacing)
        assert np.percentile(depth[grey], 90) > 8.0
        # White matter is the bulk, much thicker than the ribbon.
        white_dist = ndimage.distance_transform_edt(white, sampling=spacing)
        assert white_dist.max() > 4 * thickness


def test_t1_contrast(brain_root):
    for _, image, label in _cases(brain_root):
        brain = image > 0
        white, grey = image[label == 2].mean(), image[label == 1].mean()
        csf = image[brain & (label == 0)].mean()
        assert white > 1.2 * grey and grey > 1.2 * csf
        # Noisy and biased, not a piecewise constant.
        assert image[label == 2].std() > 0.03 * white


def test_deterministic_for_a_seed(tmp_path):
    shape = (48, 56, 10)
    a = _cases(synthesize("brain", tmp_path / "a", cases=2, seed=7, shape=shape))
    b = _cases(synthesize("brain", tmp_path / "b", cases=2, seed=7, shape=shape))
    c = _cases(synthesize("brain", tmp_path / "c", cases=1, seed=8, shape=shape))
    assert a[0][1].shape == shape
    for (_, ia, la), (_, ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a[0][2], c[0][2])  # another seed, another subject
    assert not np.array_equal(a[0][2], a[1][2])  # cases differ within a dataset
