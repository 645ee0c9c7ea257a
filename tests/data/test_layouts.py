"""MSD and nnU-Net v2 layouts read from real files; label declarations to classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tissue_case, write_msd, write_named_cases, write_nifti, write_nnunet

from hpsearch.data import load_case, read_index
from hpsearch.errors import HpsearchError


def test_msd_brats_labels_map_to_contiguous_classes(brats_small):
    index = read_index(brats_small)
    assert index.layout == "msd"
    assert index.channel_names == ("T1", "T1ce", "T2", "FLAIR")
    assert index.label_values == (0, 1, 2, 4)
    assert index.class_names == ("background", "necrotic core", "edema", "enhancing tumour")
    volumes = load_case(index, index.cases[0])
    assert volumes.image.shape == (32, 32, 8, 4)
    assert set(np.unique(volumes.label)) == {0, 1, 2, 3}  # value 4 is class index 3
    assert volumes.label_counts.keys() == {0, 1, 2, 4}


def test_nnunet_v2_layout_stacks_channel_files(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(2):
        image = rng.normal(size=(12, 10, 3, 2)).astype(np.float32)
        label = rng.choice([0, 1, 3], size=(12, 10, 3)).astype(np.uint8)
        cases.append((image, label))
    root = write_nnunet(tmp_path / "Dataset001_X", cases, {"background": 0, "a": 1, "b": 3}, ["T2", "ADC"])
    index = read_index(root)
    assert index.layout == "nnunetv2"
    assert [c.case_id for c in index.cases] == ["pat000", "pat001"]
    assert index.class_names == ("background", "a", "b") and index.label_values == (0, 1, 3)
    volumes = load_case(index, index.cases[1])
    np.testing.assert_allclose(volumes.image, cases[1][0])
    np.testing.assert_array_equal(volumes.label, np.searchsorted([0, 1, 3], cases[1][1]))


def test_odd_size_float_three_tissues(tmp_path):
    rng = np.random.default_rng(1)
    root = write_msd(tmp_path / "brain", [tissue_case(rng)], {0: "bg", 1: "csf", 2: "gm", 3: "wm"})
    index = read_index(root)
    volumes = load_case(index, index.cases[0])
    assert volumes.image.shape == (197, 233, 5, 1)
    assert volumes.spacing == (1.5, 1.5, 4.0)


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("{not json", "not readable JSON"),
        ("[]", "JSON object"),
        ('{"foo": 1}', "neither MSD"),
        ('{"modality": {"0": "MRI"}, "training": []}', "'labels' is missing"),
        ('{"modality": {"0": "MRI"}, "labels": {"1": "LV"}, "training": []}', "background value 0"),
        ('{"modality": {"0": "MRI"}, "labels": {"0": "bg", "x": "LV"}, "training": []}', "'x' is not"),
        ('{"modality": {"1": "MRI"}, "labels": {"0": "bg", "1": "LV"}, "training": []}', "without gaps"),
        ('{"modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "LV"}, "training": [{"image": "a"}]}',
         "training[0]"),
        ('{"modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "LV"}, "training": [{"image": 5, "label": "a"}]}',
         "training[0].image: must be a file path relative to the dataset folder"),
        ('{"modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "LV"}, "training": [{"image": "a", "label": null}]}',
         "training[0].label: must be a file path"),
        ('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "r": [1, 2]}, "file_ending": ".nii.gz"}',
         "region"),
    ],
)
def test_malformed_manifest_is_one_clear_error(tmp_path, manifest, message):
    (tmp_path / "dataset.json").write_text(manifest)
    with pytest.raises(HpsearchError, match=None) as info:
        read_index(tmp_path)
    assert message in str(info.value)
    assert str(tmp_path / "dataset.json") in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(HpsearchError, match="dataset folder not found"):
        read_index(tmp_path / "nope")
    with pytest.raises(HpsearchError, match="dataset.json: missing"):
        read_index(tmp_path)


def _loop(path):
    path.symlink_to(path)


@pytest.mark.parametrize(
    "make, where, message",
    [
        (lambda p: p.write_text("{}"), "", "is a file, not a folder; the dataset path must name the folder"),
        (_loop, "", "is a symlink loop"),
        (lambda p: p.symlink_to(p.parent / "gone"), "", "is a symlink to"),
        (lambda p: (p.mkdir(), _loop(p / "dataset.json")), "dataset.json", "is a symlink loop"),
        (lambda p: (p.mkdir(), (p / "dataset.json").mkdir()), "dataset.json", "is a folder, not a file"),
    ],
)
def test_unusable_dataset_paths_say_what_they_are(tmp_path, make, where, message):
    root = tmp_path / "ds"
    make(root)
    with pytest.raises(HpsearchError) as info:
        read_index(root)
    assert str(info.value).startswith(f"{root / where if where else root}: {message}"), str(info.value)


def test_msd_paths_without_dot_prefix(tmp_path):
    rng = np.random.default_rng(2)
    root = write_msd(tmp_path / "d", [tissue_case(rng, (8, 8, 2))], {0: "bg", 1: "a", 2: "b", 3: "c"})
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["training"][0] = {k: v.removeprefix("./") for k, v in manifest["training"][0].items()}
    (root / "dataset.json").write_text(json.dumps(manifest))
    index = read_index(root)
    assert load_case(index, index.cases[0]).ok


@pytest.mark.parametrize("layout", ["msd", "nnunetv2"])
def test_labelled_test_cases_are_images_ts_with_labels_ts(tmp_path, layout):
    root = write_named_cases(tmp_path / layout, layout, ["a1", "a2", "a3"], test_ids=["t2", "t1"],
                             unlabelled_test_ids=["u1"])
    # Neither a macOS "._" file nor a label without an image is a test case.
    (root / "imagesTs" / "._t1.nii.gz").write_bytes(b"\0")
    write_nifti(root / "labelsTs" / "orphan.nii.gz", np.zeros((4, 4, 2), np.uint8))
    index = read_index(root)
    assert [c.case_id for c in index.test_cases] == ["t1", "t2"]
    assert [c.case_id for c in index.cases] == ["a1", "a2", "a3"]
    assert index.defects == ()
    t1 = index.test_cases[0]
    assert t1.label == root / "labelsTs" / "t1.nii.gz"
    names = [p.name for p in t1.images]
    assert names == (["t1.nii.gz"] if layout == "msd" else ["t1_0000.nii.gz", "t1_0001.nii.gz"])
    volumes = load_case(index, t1)  # the same reader as training cases
    assert volumes.image.shape == (4, 4, 2, 2)


@pytest.mark.parametrize("layout", ["msd", "nnunetv2"])
def test_no_test_folders_or_no_labels_means_no_test_cases(tmp_path, layout):
    root = write_named_cases(tmp_path / "a", layout, ["a1", "a2"], unlabelled_test_ids=["u1", "u2"])
    assert read_index(root).test_cases == ()
    bare = write_named_cases(tmp_path / "b", layout, ["a1", "a2"])
    assert read_index(bare).test_cases == ()


def test_test_case_leading_out_of_the_dataset_is_a_defect(tmp_path):
    root = write_named_cases(tmp_path / "ds", "msd", ["a1", "a2"], test_ids=["t1", "t2"])
    outside = write_nifti(tmp_path / "elsewhere.nii.gz", np.zeros((4, 4, 2), np.uint8))
    (root / "labelsTs" / "t2.nii.gz").unlink()
    (root / "labelsTs" / "t2.nii.gz").symlink_to(outside)
    index = read_index(root)
    assert [c.case_id for c in index.test_cases] == ["t1"]
    assert len(index.defects) == 1 and "outside the dataset folder" in str(index.defects[0])


def test_test_case_with_a_training_case_id_is_a_defect(tmp_path):
    root = write_named_cases(tmp_path / "ds", "nnunetv2", ["a1", "a2"], test_ids=["a2", "t1"])
    index = read_index(root)
    assert [c.case_id for c in index.test_cases] == ["t1"]
    assert [str(d) for d in index.defects] == [
        f"{root / 'labelsTs' / 'a2.nii.gz'}: test case a2 is also a training case; "
        "rename one of them or remove it from imagesTs/labelsTs"
    ]


def test_restricted_index_keeps_only_those_training_cases(tmp_path):
    root = write_named_cases(tmp_path / "ds", "msd", ["c3", "c1", "c2", "c4"], test_ids=["t1"])
    index = read_index(root)
    small = index.restricted(["c4", "c3"])
    assert [c.case_id for c in small.cases] == ["c3", "c4"]  # index order, not argument order
    assert small.test_cases == index.test_cases
    assert (small.root, small.layout, small.label_values, small.class_names, small.channel_names) == (
        index.root, index.layout, index.label_values, index.class_names, index.channel_names)
    from hpsearch.data import dataset_digest

    assert dataset_digest(small) != dataset_digest(index)
    assert dataset_digest(small) == dataset_digest(index.restricted(["c3", "c4"]))
    with pytest.raises(HpsearchError, match="case.s. t1, x9 are not training cases") as info:
        index.restricted(["c1", "x9", "t1"])
    assert "\n" not in str(info.value)
