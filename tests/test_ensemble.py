"""Ensembles of fold models: real Trainers saved in the cross-validation checkpoint layout,
exported with real Keras (safe-mode reloads), used by `hpsearch predict` on real NIfTI files.

The expected label maps are computed here from the trainers' own models (not the export):
softmax of each member, mean, argmax.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import keras
import nibabel as nib
import numpy as np
import pytest
from helpers import predict, snapshot, write_nifti

from hpsearch.cli import main
from hpsearch.data import DatasetConfig, PreprocessConfig, load_dataset, preprocess_volume, synthesize
from hpsearch.ensemble import COMBINE, ENSEMBLE_FORMAT, FOLDS_FILE, export_ensemble, fold_checkpoints
from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment, SearchState
from hpsearch.predict import ExportedModel, predict_path, read_export_meta, to_label_values
from hpsearch.search.exporting import export_best
from hpsearch.search.results import TrialSummary
from hpsearch.segment import segment_scan
from hpsearch.tracking.runs import start_search_run
from hpsearch.trainer import Trainer

SLICE_PARAMS = {"depth": 2, "base_filters": 8, "epochs": 6, "batch_size": 4, "learning_rate": 3e-3, "decay_steps": 20}
PATCH_PARAMS = {"depth": 2, "base_filters": 4, "epochs": 1, "batch_size": 2, "learning_rate": 3e-3}


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _mean_probs(models, x):
    return np.mean([_softmax(predict(m, x)) for m in models], axis=0)


def _cv_checkpoint(root, trainers, done=None):
    """The cross-validation layout: fold_i/ per finished fold, the last fold's state on top."""
    entries = []
    for fold, trainer in enumerate(trainers):
        trainer.save(root / f"fold_{fold}")
        entries.append({"fold": fold, "best_value": trainer.best_value, "best_epoch": trainer.best_epoch,
                        "best_val_dice": trainer.best_val_dice, "dir": f"fold_{fold}"})
    trainers[-1].save(root)
    folds = {"num_folds": len(trainers), "current": len(trainers) - 1, "done": entries if done is None else done}
    (root / FOLDS_FILE).write_text(json.dumps(folds))
    return root


def _train(data, params, seed):
    trainer = Trainer(data, "unet", params, seed=seed, workers=0)
    trainer.fit()
    trainer.close()
    trainer.use_best_weights()  # the weights an export holds
    return trainer


@pytest.fixture(scope="module")
def slice_cv(lv_small, tmp_path_factory):
    """Three folds: other validation cases (split_seed) and other initialisations (seed)."""
    datas = [load_dataset(DatasetConfig(path=lv_small, image_size=(32, 32), val_fraction=0.25, split_seed=f))[0]
             for f in range(3)]
    trainers = [_train(data, SLICE_PARAMS, seed=f) for f, data in enumerate(datas)]
    checkpoint = _cv_checkpoint(tmp_path_factory.mktemp("slice-cv") / "checkpoint_000002", trainers)
    out = export_ensemble(fold_checkpoints(checkpoint), tmp_path_factory.mktemp("slice-export") / "ensemble",
                          data_info=[d.info for d in datas], extra={"trial_id": "t7"})
    return datas, trainers, checkpoint, out


@pytest.fixture(scope="module")
def patch_cv(tmp_path_factory):
    """Two 2D-patch members on odd-sized anisotropic BraTS-style cases."""
    root = synthesize("brats", tmp_path_factory.mktemp("data") / "brats", cases=5, seed=5, shape=(25, 27, 9))
    data, _ = load_dataset(DatasetConfig(path=root, dims=2, patch_size=(16, 16), samples_per_epoch=6,
                                         val_fraction=0.4))
    trainers = [_train(data, PATCH_PARAMS, seed=s) for s in (0, 1)]
    checkpoint = _cv_checkpoint(tmp_path_factory.mktemp("patch-cv") / "checkpoint", trainers)
    out = export_ensemble(fold_checkpoints(checkpoint), tmp_path_factory.mktemp("patch-export") / "ensemble",
                          data_info=data.info)
    return root, [data] * len(trainers), trainers, checkpoint, out


def test_the_folder_and_its_metadata(slice_cv):
    datas, trainers, _, out = slice_cv
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "hpsearch-model.json", "members", "members/fold_0.keras", "members/fold_1.keras", "members/fold_2.keras"]
    assert [p.name for p in out.parent.iterdir()] == ["ensemble"]  # no temporary folder left
    meta = read_export_meta(out)
    assert meta["format_version"] == ENSEMBLE_FORMAT and meta["trial_id"] == "t7"
    assert meta["ensemble"]["members"] == ["fold_0.keras", "fold_1.keras", "fold_2.keras"]
    assert meta["ensemble"]["combine"] == COMBINE == "mean of softmax probabilities"
    dice = [t.best_val_dice for t in trainers]
    assert meta["ensemble"]["member_val_dice"] == dice
    assert meta["best_val_dice"] == pytest.approx(np.mean(dice))
    assert meta["preprocess"] == datas[0].info["preprocess"] and meta["input_shape"] == [32, 32, 1]
    assert meta["model"] == "unet" and meta["hyperparameters"]["base_filters"] == 8
    assert meta["label_values"] == [0, 1] and meta["channel_names"] == ["MRI"]


def test_members_are_the_fold_models_reloaded_in_safe_mode(slice_cv):
    datas, trainers, checkpoint, out = slice_cv
    x = np.asarray(datas[0].val_x[:6])
    for fold, trainer in enumerate(trainers):
        member = keras.models.load_model(out / "members" / f"fold_{fold}.keras", safe_mode=True, compile=False)
        np.testing.assert_allclose(predict(member, x), predict(trainer.model, x), rtol=1e-5, atol=1e-5)
    # The folds are different models: averaging them is not vacuous.
    assert not np.allclose(predict(trainers[0].model, x), predict(trainers[1].model, x), atol=1e-3)


def test_predict_batch_is_the_log_of_the_mean_member_probability(slice_cv):
    datas, trainers, _, out = slice_cv
    exported = ExportedModel.load(out)
    assert exported.is_ensemble and len(exported.models) == 3
    x = np.asarray(datas[1].val_x[:6])
    got = exported.predict_batch(x)
    expected = np.log(_mean_probs([t.model for t in trainers], x))
    assert got.dtype == np.float32 and got.shape == expected.shape == (6, 32, 32, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    for trainer in trainers:  # differs from every single member
        assert not np.allclose(_softmax(got), _softmax(predict(trainer.model, x)), atol=1e-3)
    with pytest.raises(HpsearchError, match="an ensemble of 3 models"):
        exported.model


def test_hpsearch_predict_gives_the_argmax_of_the_mean_probabilities(lv_small, slice_cv, tmp_path):
    datas, trainers, _, out = slice_cv
    source = lv_small / "imagesTr" / "lv_003.nii.gz"
    image = np.asarray(nib.load(source).dataobj, np.float32)
    slices = preprocess_volume(image[..., None], PreprocessConfig(**datas[0].info["preprocess"]))
    # image_size is the scan's in-plane size: mapping back is the identity along axis 2.
    classes = np.moveaxis(np.argmax(_mean_probs([t.model for t in trainers], slices), axis=-1), 0, 2)
    expected = to_label_values(classes, [0, 1])
    assert 0 < expected.sum() < expected.size  # both classes: the comparison is not vacuous
    result = subprocess.run([sys.executable, "-m", "hpsearch", "predict", str(out), str(source), "seg.nii.gz"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "wrote seg.nii.gz\n"
    written = nib.load(tmp_path / "seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    np.testing.assert_allclose(written.affine, nib.load(source).affine)


def test_patch_mode_ensemble_predicts_the_mean_probabilities(patch_cv, tmp_path):
    root, _, trainers, _, out = patch_cv
    source = root / "imagesTr" / "brats_001.nii.gz"
    scan = nib.load(source)
    image, spacing = np.asarray(scan.dataobj, np.float32), scan.header.get_zooms()[:3]
    [written] = predict_path(out, source, tmp_path / "seg.nii.gz")

    def mean_of_members(batch):
        return np.log(_mean_probs([t.model for t in trainers], batch)).astype(np.float32)

    meta = read_export_meta(out)
    expected = to_label_values(segment_scan(image, spacing, mean_of_members, meta), meta["label_values"])
    labels = np.asarray(nib.load(written).dataobj)
    assert labels.shape == image.shape[:3]
    np.testing.assert_array_equal(labels, expected)
    x = np.random.default_rng(0).normal(size=(3, 16, 16, 4)).astype(np.float32)
    np.testing.assert_allclose(ExportedModel.load(out).predict_batch(x), mean_of_members(x), atol=1e-5)


def test_a_missing_or_unsafe_member_is_one_line(slice_cv, tmp_path):
    *_, out = slice_cv
    copy = shutil.copytree(out, tmp_path / "model")
    (copy / "members" / "fold_1.keras").unlink()
    with pytest.raises(HpsearchError) as info:
        predict_path(copy, tmp_path / "scan.nii.gz", tmp_path / "seg.nii.gz")
    assert str(info.value) == (f"{copy / 'members' / 'fold_1.keras'}: missing; not a complete model folder written "
                               "by `hpsearch export` (copy the whole folder)")
    # A member with a Lambda layer (pickled Python code) is refused by safe_mode.
    inputs = keras.Input((32, 32, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(copy / "members" / "fold_1.keras")
    with pytest.raises(HpsearchError, match=r"fold_1.keras: cannot load the model \(.*[Ll]ambda"):
        ExportedModel.load(copy)
    meta = json.loads((copy / "hpsearch-model.json").read_text())
    for members in (["../model.keras"], [], "fold_0.keras"):
        (copy / "hpsearch-model.json").write_text(json.dumps({**meta, "ensemble": {"members": members}}))
        with pytest.raises(HpsearchError, match="ensemble.members must list the member files"):
            read_export_meta(copy)
    (copy / "hpsearch-model.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(HpsearchError, match="format 1 with an ensemble section; only format 2 is an ensemble"):
        read_export_meta(copy)  # format 1 is one model.keras, never an ensemble


@pytest.mark.parametrize("fixture, change, message", [
    ("slice_cv", lambda info: {**info, "preprocess": {**info["preprocess"], "resize": "pad_crop"}},
     "different slice preprocessing"),
    ("slice_cv", lambda info: {**info, "class_names": ["background", "left ventricle"]}, "different classes"),
    # CT normalisation statistics are fitted on each fold's training cases.
    ("patch_cv", lambda info: {**info, "intensity": {"ct": {"mean": [40.0], "std": [90.0]}}},
     r"different intensity statistics \(CT normalisation is fitted on each fold's training cases\)"),
    ("patch_cv", lambda info: {**info, "plan": {**info["plan"], "patch_size": [24, 24]}}, "different patch plan"),
])
def test_members_fed_differently_are_refused(request, tmp_path, fixture, change, message):
    cv = request.getfixturevalue(fixture)
    *_, datas, _, checkpoint, _ = cv
    members = fold_checkpoints(checkpoint)
    infos = [data.info for data in datas[:-1]] + [change(datas[-1].info)]
    with pytest.raises(HpsearchError, match=f"^{members[-1]} and {members[0]}: {message}; ") as info:
        export_ensemble(members, tmp_path / "out", data_info=infos)
    assert str(info.value).endswith("so export one fold without --ensemble") and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_members_of_other_hyperparameters_are_refused(slice_cv, tmp_path):
    datas, _, checkpoint, _ = slice_cv
    other = shutil.copytree(checkpoint / "fold_1", tmp_path / "other")
    state = json.loads((other / "trainer_state.json").read_text())
    (other / "trainer_state.json").write_text(json.dumps({**state, "params": {**state["params"], "base_filters": 16}}))
    with pytest.raises(HpsearchError, match=f"^{other} and .*fold_0: different hyperparameters;"):
        export_ensemble([checkpoint / "fold_0", other], tmp_path / "out", data_info=datas[0].info)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("folds, message", [
    (None, "no folds.json; this search did not cross-validate; set dataset.folds and search.cross_validation"),
    ({"num_folds": 5, "current": 2, "done": [{"fold": 0, "dir": "fold_0"}, {"fold": 1, "dir": "fold_1"}]},
     "the best trial has 2 of 5 folds; an ensemble needs all"),
    ({"num_folds": 2, "current": 1, "done": [{"fold": 0, "dir": "fold_0"}, {"fold": 0, "dir": "fold_1"}]},
     r"done folds \[0, 0\], expected 0 to 1"),
    ({"num_folds": 1, "current": 0, "done": [{"fold": 0, "dir": "../elsewhere"}]},
     "fold dir '../elsewhere' is not a folder name inside"),
    ({"num_folds": 1, "done": [{"dir": "fold_0"}]}, "not a readable folds record"),
    ("{not json", "not a readable folds record"),
])
def test_fold_checkpoints_refusals(tmp_path, folds, message):
    if folds is not None:
        (tmp_path / FOLDS_FILE).write_text(folds if isinstance(folds, str) else json.dumps(folds))
    with pytest.raises(HpsearchError, match=message) as info:
        fold_checkpoints(tmp_path)
    assert "\n" not in str(info.value)


@pytest.fixture
def experiment(lv_small, slice_cv, tmp_path):
    """A finished search's folder whose best trial is the cross-validated checkpoint."""
    datas, trainers, checkpoint, _ = slice_cv
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = start_search_run(uri, "ensemble-test", run_name="cv", params={}, tags={})
    state = SearchState(job={"name": "cv", "dataset": {"path": str(lv_small)}, "model": "unet"}, tracking_uri=uri,
                        parent_run_id=parent, data_info=datas[0].info)
    folder = Experiment.claim_folder(tmp_path / "results", "cv-20261202-101500")
    found = Experiment.create(folder, state, {})
    row = TrialSummary(trial_id="t7", params=SLICE_PARAMS, best_value=0.5, best_epoch=2, epochs_run=6, epoch_cap=6,
                       status="completed", checkpoint=str(checkpoint))
    found.write_results([row], "val_dice", "max")
    return found, checkpoint


def test_export_best_ensemble_and_its_refusals(experiment, slice_cv, tmp_path, capsys):
    found, checkpoint = experiment
    assert main(["export", str(found.path), "--out", str(tmp_path / "ens"), "--ensemble"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("ensemble of 3 fold models (val_dice per fold: ")
    assert lines[-1] == f"exported to {tmp_path / 'ens'}"
    meta = read_export_meta(tmp_path / "ens")
    assert meta["ensemble"]["members"] == ["fold_0.keras", "fold_1.keras", "fold_2.keras"]
    assert meta["trial_id"] == "t7" and meta["search_metric"] == {"val_dice": 0.5}
    # The same search without --ensemble exports the checkpoint's own model, as before.
    single = export_best(found.path, tmp_path / "single", echo=lines.append)  # what the trial's checkpoint holds
    assert (single / "model.keras").is_file() and "ensemble" not in read_export_meta(single)

    folds = json.loads((checkpoint / FOLDS_FILE).read_text())
    before = snapshot(tmp_path)
    try:
        (checkpoint / FOLDS_FILE).write_text(json.dumps({**folds, "num_folds": 5}))
        with pytest.raises(HpsearchError, match=r"folds.json: the best trial has 3 of 5 folds; .*without --ensemble"):
            export_best(found.path, tmp_path / "x", ensemble=True)
        (checkpoint / FOLDS_FILE).unlink()
        capsys.readouterr()
        assert main(["export", str(found.path), "--out", str(tmp_path / "x"), "--ensemble"]) == 2
        assert capsys.readouterr().err == (
            f"hpsearch: error: {checkpoint}: no folds.json; this search did not cross-validate; set dataset.folds "
            "and search.cross_validation to export an ensemble, or export without --ensemble\n")
    finally:
        (checkpoint / FOLDS_FILE).write_text(json.dumps(folds))
    assert snapshot(tmp_path) == before
