"""Exporting a trainer checkpoint: real training, real Keras save and safe reload."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
from helpers import predict, snapshot

from hpsearch.data import DatasetConfig, load_dataset
from hpsearch.errors import HpsearchError
from hpsearch.export import EXPORT_FORMAT, export_model
from hpsearch.trainer import Trainer

# Learns the synthetic LV in ~3 s; the best-Dice epoch is usually not the last one.
PARAMS = {"depth": 2, "base_filters": 8, "epochs": 7, "batch_size": 4, "learning_rate": 3e-3, "decay_steps": 20}
EXTRA = {"mlflow": {"parent_run_id": "p1", "run_id": "r1"}, "trial_id": "t3", "fingerprint": {"cases": 8}}


@pytest.fixture(scope="module")
def trained(lv_small, tmp_path_factory):
    data, _ = load_dataset(DatasetConfig(path=lv_small, image_size=(32, 32), val_fraction=0.25))
    trainer = Trainer(data, "unet", PARAMS)
    trainer.fit()
    checkpoint = trainer.save(tmp_path_factory.mktemp("export") / "ckpt")
    return data, trainer, checkpoint


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    data, _, checkpoint = trained
    return export_model(checkpoint, tmp_path_factory.mktemp("export-out") / "model", data_info=data.info, extra=EXTRA)


def test_writes_the_model_and_its_metadata(trained, exported):
    data, trainer, _ = trained
    assert sorted(p.name for p in exported.iterdir()) == ["hpsearch-model.json", "model.keras"]
    assert [p.name for p in exported.parent.iterdir()] == ["model"]  # no temporary folder left
    meta = json.loads((exported / "hpsearch-model.json").read_text())
    assert meta["format_version"] == EXPORT_FORMAT
    assert meta["model"] == "unet"
    assert meta["hyperparameters"]["base_filters"] == 8 and meta["hyperparameters"]["loss"] == "ce_dice"
    assert meta["label_values"] == [0, 1] and meta["class_names"] == ["background", "LV"]
    assert meta["channel_names"] == ["MRI"]
    assert meta["preprocess"] == data.info["preprocess"]
    assert meta["preprocess"]["image_size"] == [32, 32] and meta["preprocess"]["slice_axis"] == 2
    assert meta["input_shape"] == [32, 32, 1]
    assert meta["best_val_dice"] == trainer.best_val_dice and meta["best_epoch"] == trainer.best_epoch
    assert meta["dataset_digest"] == data.info["digest"] != ""
    assert meta["created"].endswith("+00:00") and meta["hpsearch_version"]
    for key, value in EXTRA.items():
        assert meta[key] == value


def test_model_reloads_safely_with_the_best_weights(trained, exported):
    data, trainer, checkpoint = trained
    model = keras.models.load_model(exported / "model.keras", safe_mode=True, compile=False)
    with np.load(checkpoint / "best_weights.npz") as best:
        for i, weight in enumerate(model.get_weights()):
            np.testing.assert_array_equal(weight, best[f"arr_{i}"])
    x = np.asarray(data.val_x[:8])
    last = predict(trainer.model, x)
    trainer.use_best_weights()
    np.testing.assert_allclose(predict(model, x), predict(trainer.model, x), rtol=1e-5, atol=1e-5)
    if trainer.best_epoch != trainer.epoch:  # the export is the best epoch, not the last
        assert not np.allclose(predict(model, x), last, atol=1e-4)


def test_empty_existing_out_dir_is_used(trained, tmp_path):
    data, _, checkpoint = trained
    (tmp_path / "out").mkdir()
    assert export_model(checkpoint, tmp_path / "out", data_info=data.info) == tmp_path / "out"
    assert (tmp_path / "out" / "model.keras").is_file()


def test_refuses_a_non_empty_out_dir(trained, tmp_path):
    data, _, checkpoint = trained
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(HpsearchError, match="out: already exists and is not empty"):
        export_model(checkpoint, tmp_path / "out", data_info=data.info)
    assert snapshot(tmp_path) == before


def test_refuses_an_incomplete_checkpoint(trained, tmp_path):
    data, _, checkpoint = trained
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(checkpoint / "best_weights.npz", partial)  # the state file is written last
    for folder in (partial, tmp_path / "missing"):
        with pytest.raises(HpsearchError, match=f"{folder}: no trainer_state.json"):
            export_model(folder, tmp_path / "out", data_info=data.info)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial"]


def test_refuses_data_info_of_other_data(trained, tmp_path):
    data, _, checkpoint = trained
    with pytest.raises(HpsearchError, match="digest"):
        export_model(checkpoint, tmp_path / "a", data_info={**data.info, "digest": "f" * 64})
    three_classes = {**data.info, "label_values": [0, 1, 2], "class_names": ["bg", "LV", "RV"]}
    with pytest.raises(HpsearchError, match="weights do not fit"):
        export_model(checkpoint, tmp_path / "b", data_info=three_classes)
    with pytest.raises(ValueError, match="label_values"):
        export_model(checkpoint, tmp_path / "c", data_info=data.info, extra={"label_values": [0, 9]})
    assert list(tmp_path.iterdir()) == []
