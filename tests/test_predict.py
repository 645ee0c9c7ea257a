"""Prediction with exported models: real training, real Keras, real NIfTI files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import AFFINE, predict, snapshot, write_nifti

from hpsearch.data import (
    DatasetConfig,
    PreprocessConfig,
    load_dataset,
    preprocess_volume,
)
from hpsearch.errors import HpsearchError
from hpsearch.export import export_model
from hpsearch.predict import ExportedModel, predict_path, to_label_values
from hpsearch.trainer import Trainer

LV_PARAMS = {"depth": 2, "base_filters": 8, "epochs": 7, "batch_size": 4, "learning_rate": 3e-3, "decay_steps": 20}


def _train_and_export(dataset, params, root, variants=None):
    """Train for real, then export; variants export the same weights with other preprocessing."""
    data, _ = load_dataset(DatasetConfig(path=dataset, image_size=(32, 32), val_fraction=0.25))
    trainer = Trainer(data, "unet", params)
    trainer.fit()
    checkpoint = trainer.save(root / "ckpt")
    models = {"default": export_model(checkpoint, root / "default", data_info=data.info)}
    for name, preprocess in (variants or {}).items():
        info = {**data.info, "preprocess": {**data.info["preprocess"], **preprocess}}
        models[name] = export_model(checkpoint, root / name, data_info=info)
    return models


@pytest.fixture(scope="module")
def lv_models(lv_small, tmp_path_factory):
    variants = {"pad_crop": {"resize": "pad_crop"}, "pad_crop_axis0": {"resize": "pad_crop", "slice_axis": 0}}
    return _train_and_export(lv_small, LV_PARAMS, tmp_path_factory.mktemp("lv-models"), variants)


@pytest.fixture(scope="module")
def brats_model(brats_small, tmp_path_factory):
    params = {"depth": 2, "base_filters": 4, "epochs": 1, "batch_size": 8}
    return _train_and_export(brats_small, params, tmp_path_factory.mktemp("brats-models"))["default"]


@pytest.fixture(scope="module")
def lv_model(lv_models):
    return ExportedModel.load(lv_models["default"])


def _lv_case(lv_small, i=0):
    image = nib.load(lv_small / "imagesTr" / f"lv_{i:03d}.nii.gz")
    label = np.asarray(nib.load(lv_small / "labelsTr" / f"lv_{i:03d}.nii.gz").dataobj)
    return np.asarray(image.dataobj, np.float32), label


def _direct(exported, image):
    """Class indices of the model on preprocessed slices, without predict.py's mapping back."""
    config = PreprocessConfig(**exported.meta["preprocess"])
    slices = preprocess_volume(image[..., None] if image.ndim == 3 else image, config)
    return np.argmax(predict(exported.model, slices), axis=-1)


def test_label_values_mapping():
    assert to_label_values(np.array([[0, 1], [2, 3]]), [0, 1, 2, 4]).tolist() == [[0, 1], [2, 4]]
    assert to_label_values(np.array([3]), [0, 1, 2, 4]).dtype == np.uint8
    wide = to_label_values(np.array([0, 1]), [0, 300])
    assert wide.tolist() == [0, 300] and wide.dtype == np.int16


def test_identity_geometry_equals_the_direct_model_output(lv_small, lv_model):
    image, label = _lv_case(lv_small)
    labels = lv_model.predict_volume(image)
    assert labels.shape == image.shape == (32, 32, 6) and labels.dtype == np.uint8
    # image_size equals the scan's in-plane size: the mapping back is the identity.
    np.testing.assert_array_equal(labels, np.moveaxis(_direct(lv_model, image), 0, 2))
    dice = 2 * np.sum((labels == 1) & (label == 1)) / (np.sum(labels == 1) + np.sum(label == 1))
    assert dice > 0.3, dice


@pytest.mark.parametrize("variant, axis", [("pad_crop", 2), ("pad_crop_axis0", 0)])
def test_pad_crop_maps_back_exactly(lv_small, lv_models, variant, axis):
    exported = ExportedModel.load(lv_models[variant])
    image, _ = _lv_case(lv_small, 1)
    # 37 x 29 in-plane: padded by 2+3 on one axis, cropped by 1+2 on the other.
    odd = np.pad(image, ((2, 3), (0, 0), (0, 0)))[:, 1:30, :3]
    odd = np.moveaxis(odd, 2, axis)
    labels = exported.predict_volume(odd)
    assert labels.shape == odd.shape
    classes = _direct(exported, odd)  # (3, 32, 32): the 37 x 29 plane centre-cropped/padded
    expected = np.zeros((3, 37, 29), np.uint8)
    expected[:, 2:34, :] = classes[:, :, 1:30]  # the inverse pad/crop, written out by hand
    np.testing.assert_array_equal(labels, np.moveaxis(expected, 0, axis))
    assert labels.any()  # the comparison is not vacuous: the LV is found


def test_odd_sizes_come_back_at_their_size(lv_model):
    rng = np.random.default_rng(0)
    for shape in [(37, 29, 3), (50, 20, 1)]:
        labels = lv_model.predict_volume(rng.normal(100, 20, shape))
        assert labels.shape == shape and set(np.unique(labels)) <= {0, 1}


def test_predict_file_keeps_geometry(lv_small, lv_models, tmp_path):
    before = snapshot(lv_small)
    source = lv_small / "imagesTr" / "lv_002.nii.gz"
    [out] = predict_path(lv_models["default"], source, tmp_path / "seg" / "lv_002.nii.gz")
    assert out == tmp_path / "seg" / "lv_002.nii.gz"
    written, scan = nib.load(out), nib.load(source)
    assert written.shape == scan.shape and np.allclose(written.affine, scan.affine)
    assert written.get_data_dtype() == np.uint8 and (written.dataobj.slope, written.dataobj.inter) == (1, 0)
    expected = ExportedModel.load(lv_models["default"]).predict_volume(np.asarray(scan.dataobj))
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    assert [p.name for p in tmp_path.rglob("*")] == ["seg", "lv_002.nii.gz"]  # no temporary file left
    assert snapshot(lv_small) == before


def test_brats_4d_input_gives_original_label_values(brats_small, brats_model, tmp_path):
    source = brats_small / "imagesTr" / "brats_000.nii.gz"
    [out] = predict_path(brats_model, source, tmp_path / "seg.nii")
    written = nib.load(out)
    assert written.shape == nib.load(source).shape[:3] == (32, 32, 8)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
    # A model whose last layer always favours class 3 must write label 4 everywhere.
    exported = ExportedModel.load(brats_model)
    layer = exported.model.get_layer("logits")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.array([0, 0, 0, 50], bias.dtype)])
    labels = exported.predict_volume(np.asarray(nib.load(source).dataobj))
    assert labels.dtype == np.uint8 and np.all(labels == 4)


def test_folder_with_mixed_endings(lv_small, lv_models, tmp_path):
    scans = tmp_path / "scans"
    for name, case in (("a.nii", 0), ("b.nii.gz", 1)):
        write_nifti(scans / name, _lv_case(lv_small, case)[0])
    (scans / "notes.txt").write_text("not a scan")
    before = snapshot(scans)
    written = predict_path(lv_models["default"], scans, tmp_path / "out")
    assert written == [tmp_path / "out" / "a.nii.gz", tmp_path / "out" / "b.nii.gz"]
    exported = ExportedModel.load(lv_models["default"])
    for path, case in zip(written, (0, 1)):
        image = nib.load(path)
        np.testing.assert_array_equal(np.asarray(image.dataobj), exported.predict_volume(_lv_case(lv_small, case)[0]))
        assert np.allclose(image.affine, AFFINE)
    assert snapshot(scans) == before


def test_nnunet_channel_files_form_one_case(brats_small, brats_model, tmp_path):
    volume = np.asarray(nib.load(brats_small / "imagesTr" / "brats_001.nii.gz").dataobj, np.float32)
    scans = tmp_path / "scans"
    for c in range(4):
        write_nifti(scans / f"pat7_{c:04d}.nii.gz", volume[..., c])
    write_nifti(scans / "whole.nii.gz", volume)
    written = predict_path(brats_model, scans, tmp_path / "out")
    assert [p.name for p in written] == ["pat7.nii.gz", "whole.nii.gz"]
    grouped, whole = (np.asarray(nib.load(p).dataobj) for p in written)
    np.testing.assert_array_equal(grouped, whole)

    (scans / "pat7_0003.nii.gz").unlink()
    with pytest.raises(HpsearchError, match=r"case pat7 has channel files .*pat7_0000 to pat7_0003"):
        predict_path(brats_model, scans, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_wrong_channel_count_names_the_channels(lv_small, brats_model, tmp_path):
    source = lv_small / "imagesTr" / "lv_000.nii.gz"
    with pytest.raises(HpsearchError, match=f"{source}: shape .*4 channel.*T1, T1ce, T2, FLAIR"):
        predict_path(brats_model, source, tmp_path / "seg.nii.gz")
    with pytest.raises(HpsearchError, match="T1, T1ce, T2, FLAIR"):
        ExportedModel.load(brats_model).predict_volume(np.zeros((32, 32, 8, 3)))
    assert list(tmp_path.iterdir()) == []


def test_never_writes_into_the_input_folder(lv_small, lv_models):
    images = lv_small / "imagesTr"
    before = snapshot(lv_small)
    for out in (images, images / "predictions", lv_small / "imagesTr" / ".." / "imagesTr" / "x"):
        with pytest.raises(HpsearchError, match="is inside the input folder"):
            predict_path(lv_models["default"], images, out)
    assert snapshot(lv_small) == before


def test_refuses_to_overwrite(lv_small, lv_models, tmp_path):
    source = lv_small / "imagesTr" / "lv_000.nii.gz"
    target = tmp_path / "seg.nii.gz"
    predict_path(lv_models["default"], source, target)
    first = snapshot(tmp_path)
    with pytest.raises(HpsearchError, match=f"{target}: already exists; choose another output"):
        predict_path(lv_models["default"], source, target)
    # In a folder every output is checked before the first prediction: nothing is written.
    (tmp_path / "out").mkdir()
    shutil.copy(target, tmp_path / "out" / "lv_005.nii.gz")
    with pytest.raises(HpsearchError, match="lv_005.nii.gz: already exists"):
        predict_path(lv_models["default"], lv_small / "imagesTr", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lv_005.nii.gz"]
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out")} == first


def test_unreadable_files_are_named(lv_small, lv_models, tmp_path):
    scans = tmp_path / "scans"
    write_nifti(scans / "good.nii.gz", _lv_case(lv_small)[0])
    truncated = scans / "truncated.nii.gz"
    shutil.copy(scans / "good.nii.gz", truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    before = snapshot(scans)
    with pytest.raises(HpsearchError, match=f"{truncated}: unreadable or truncated NIfTI"):
        predict_path(lv_models["default"], scans, tmp_path / "out")
    (scans / "garbage.nii").write_text("not a NIfTI file")
    before = snapshot(scans)
    with pytest.raises(HpsearchError, match=f"{scans / 'garbage.nii'}: not a readable NIfTI"):
        predict_path(lv_models["default"], scans, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # headers are checked before anything is written
    assert snapshot(scans) == before
    with pytest.raises(HpsearchError, match="no such file or folder"):
        predict_path(lv_models["default"], scans / "missing.nii.gz", tmp_path / "x.nii.gz")


def test_model_folder_errors(lv_models, tmp_path):
    with pytest.raises(HpsearchError, match="hpsearch-model.json: missing"):
        ExportedModel.load(tmp_path)
    copy = shutil.copytree(lv_models["default"], tmp_path / "model")
    meta = json.loads((copy / "hpsearch-model.json").read_text())
    (copy / "hpsearch-model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(HpsearchError, match="export format 99"):
        ExportedModel.load(copy)


def test_never_writes_into_the_dataset_folder_it_was_trained_on(lv_small, lv_models, tmp_path):
    source = lv_small / "imagesTr" / "lv_000.nii.gz"
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(source, scans)
    (tmp_path / "link").symlink_to(lv_small)
    # Exports written before "dataset" was recorded still name it as the fingerprint's root.
    older = shutil.copytree(lv_models["default"], tmp_path / "older-model")
    meta = json.loads((older / "hpsearch-model.json").read_text())
    recorded = meta.pop("dataset", None)
    (older / "hpsearch-model.json").write_text(json.dumps({**meta, "fingerprint": {"root": str(lv_small)}}))
    before = snapshot(lv_small)
    for model in (older, lv_models["default"]):
        for scan, out in [
            (source, lv_small / "lv_000-seg.nii.gz"),
            (source, lv_small / "predictions" / "lv_000.nii.gz"),
            (source, tmp_path / "link" / "lv_000-seg.nii.gz"),  # the dataset through a symlink
            (scans, lv_small / "predictions"),
            (scans, tmp_path / "link" / "predictions"),
        ]:
            with pytest.raises(HpsearchError) as info:
                predict_path(model, scan, out)
            assert str(info.value) == (
                f"output {out}: inside the dataset folder {lv_small}; "
                "hpsearch never writes there, choose another folder"
            )
    assert snapshot(lv_small) == before
    assert recorded == str(lv_small)
    assert predict_path(older, source, tmp_path / "seg.nii.gz") == [tmp_path / "seg.nii.gz"]


def test_cli_missing_input_is_one_line_on_stderr(brats_model, tmp_path):
    # Inputs are checked before Keras loads: no TensorFlow start-up lines before the error.
    result = subprocess.run([sys.executable, "-m", "hpsearch", "predict", str(brats_model), "missing.nii.gz",
                             "seg.nii.gz"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == "hpsearch: error: missing.nii.gz: no such file or folder\n"
    assert list(tmp_path.iterdir()) == []
