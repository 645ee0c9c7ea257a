"""The epoch-by-epoch trainer: real Keras training on tiny synthetic NIfTI data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hpsearch.data import DatasetConfig, load_dataset
from hpsearch.errors import HpsearchError
from hpsearch.fidelity import case_subset
from hpsearch.trainer import Trainer, TrainingDiverged

SMALL_UNET = {"depth": 2, "base_filters": 8, "batch_size": 4, "learning_rate": 3e-3, "decay_steps": 20}


@pytest.fixture(scope="module")
def lv_data(lv_small):
    data, _ = load_dataset(DatasetConfig(path=lv_small, image_size=(32, 32), val_fraction=0.25))
    return data


@pytest.fixture(scope="module")
def brats_data(brats_small):
    data, _ = load_dataset(DatasetConfig(path=brats_small, image_size=(32, 32), val_fraction=0.25))
    return data


def test_learns_the_left_ventricle(lv_data):
    trainer = Trainer(lv_data, "unet", {**SMALL_UNET, "epochs": 8})
    results = []
    trainer.fit(on_epoch=results.append)
    assert [r.epoch for r in results] == list(range(1, 9)) and trainer.done
    assert results[-1].loss < results[0].loss
    assert trainer.best_val_dice > 0.5, [r.val_dice for r in results]  # from 0.0 at epoch 1
    metrics = results[-1].metrics()
    assert {"loss", "val_loss", "val_dice", "val_dice_LV", "val_iou", "lr", "epoch_seconds"} <= metrics.keys()
    assert metrics["val_dice"] == metrics["val_dice_LV"]  # one foreground class
    assert metrics["lr"] < SMALL_UNET["learning_rate"]  # staircase decay after 20 steps


def test_save_restore_continues_like_an_uninterrupted_run(lv_data, tmp_path):
    straight = Trainer(lv_data, "unet", {**SMALL_UNET, "epochs": 3}, seed=7)
    straight.fit()

    first = Trainer(lv_data, "unet", {**SMALL_UNET, "epochs": 3}, seed=7)
    first.train_epoch()
    first.train_epoch()
    first.save(tmp_path / "ckpt")
    resumed = Trainer(lv_data, "unet", {**SMALL_UNET, "epochs": 3}, seed=7)
    resumed.restore(tmp_path / "ckpt")
    assert resumed.epoch == 2 and int(resumed.optimizer.iterations) == int(first.optimizer.iterations)
    resumed.fit()

    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[-1]["val_dice"] == pytest.approx(straight.history[-1]["val_dice"], abs=1e-3)
    assert resumed.best_val_dice == pytest.approx(straight.best_val_dice, abs=1e-3)


def test_best_weights_are_kept(lv_data, tmp_path):
    trainer = Trainer(lv_data, "unet", {**SMALL_UNET, "epochs": 2})
    trainer.fit()
    trainer.save(tmp_path / "s")
    restored = Trainer(lv_data, "unet", {**SMALL_UNET, "epochs": 2})
    restored.restore(tmp_path / "s")
    restored.use_best_weights()
    _, scores = restored.evaluate()
    assert scores.mean_dice == pytest.approx(trainer.best_val_dice, abs=1e-6)


def test_fcn_multiclass_brats_reports_every_class(brats_data):
    trainer = Trainer(brats_data, "fcn", {"depth": 1, "base_filters": 4, "epochs": 1, "optimizer": "sgd"})
    metrics = trainer.train_epoch().metrics()
    for name in ("necrotic_core", "edema", "enhancing_tumour"):
        assert 0.0 <= metrics[f"val_dice_{name}"] <= 1.0
    assert trainer.model.output_shape == (None, 32, 32, 4)


def test_nan_loss_raises_training_diverged(lv_data):
    bad_x = np.array(lv_data.train_x, copy=True)
    bad_x[0, 0, 0, 0] = np.nan
    bad = dataclasses.replace(lv_data, train_x=bad_x)
    # Leaky ReLU passes NaN on (ReLU maps it to 0 and would hide it).
    params = {**SMALL_UNET, "epochs": 1, "batch_size": len(bad_x), "activation": "leaky_relu"}
    trainer = Trainer(bad, "unet", params)
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1"):
        trainer.train_epoch()


def test_restore_refuses_other_model_and_incomplete_folder(lv_data, tmp_path):
    unet = Trainer(lv_data, "unet", {**SMALL_UNET, "epochs": 1})
    unet.save(tmp_path / "u")
    fcn = Trainer(lv_data, "fcn", {"depth": 1, "base_filters": 2})
    with pytest.raises(HpsearchError, match="checkpoint of model 'unet'"):
        fcn.restore(tmp_path / "u")
    with pytest.raises(HpsearchError, match="not a complete trainer checkpoint"):
        fcn.restore(tmp_path)


LOW = {"resolution": 0.5, "case_fraction": 0.5, "epochs": 2}


def test_low_fidelity_epochs_train_on_fewer_smaller_slices_then_on_all(lv_data):
    trainer = Trainer(lv_data, "unet", {**SMALL_UNET, "epochs": 4}, seed=1, fidelity=LOW)
    low = trainer._low_model
    assert low.input_shape == (None, 16, 16, 1) and trainer.model.input_shape == (None, 32, 32, 1)
    assert all(a is b for a, b in zip(low.weights, trainer.model.weights))  # one set of weights
    results = [trainer.train_epoch() for _ in range(4)]
    rows = case_subset(lv_data.train_case, len(lv_data.info["train_cases"]), 0.5, seed=1)
    assert 0 < len(rows) < len(lv_data.train_x)
    # the slices of half the cases, at a quarter of the pixels; then everything
    expected = len(rows) / len(lv_data.train_x) * (16 * 16) / (32 * 32)
    assert [r.fidelity for r in results] == pytest.approx([expected, expected, 1.0, 1.0])
    assert all(r.val_dice >= 0 for r in results) and results[-1].metrics()["fidelity"] == 1.0
    assert f"fidelity {expected:.2f}  " in results[0].format() and "fidelity" not in results[-1].format()
    assert int(trainer.optimizer.iterations) > 0


def test_a_trainer_restored_inside_its_low_fidelity_epochs_continues_like_an_uninterrupted_one(lv_data, tmp_path):
    params = {**SMALL_UNET, "epochs": 3}
    straight = Trainer(lv_data, "unet", params, seed=7, fidelity=LOW)
    straight.fit()
    first = Trainer(lv_data, "unet", params, seed=7, fidelity=LOW)
    first.train_epoch()
    first.save(tmp_path / "ckpt")
    resumed = Trainer(lv_data, "unet", params, seed=7, fidelity=LOW)
    resumed.restore(tmp_path / "ckpt")
    resumed.fit()
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert [h["fidelity"] for h in resumed.history] == [h["fidelity"] for h in straight.history]


@pytest.mark.parametrize("model, params, size, message", [
    ("unet", {"padding": "valid"}, (32, 32), "unpadded convolutions takes only the slice size"),
    ("unet", {"depth": 3}, (36, 36), "36x36 do not divide by 8"),
])
def test_a_resolution_the_network_cannot_train_at_is_refused(lv_small, model, params, size, message):
    data, _ = load_dataset(DatasetConfig(path=lv_small, image_size=size, val_fraction=0.25))
    with pytest.raises(HpsearchError, match=f"scheduler.fidelity.resolution: .*{message}"):
        Trainer(data, model, {**SMALL_UNET, **params}, fidelity={"resolution": 0.5, "epochs": 1})


def test_case_fraction_alone_trains_at_full_size_with_any_network(lv_small):
    data, _ = load_dataset(DatasetConfig(path=lv_small, image_size=(36, 36), val_fraction=0.25))
    trainer = Trainer(data, "unet", {**SMALL_UNET, "padding": "valid", "epochs": 2},
                      fidelity={"case_fraction": 0.5, "epochs": 1})
    assert trainer._low_model is None
    first, second = trainer.train_epoch(), trainer.train_epoch()
    assert 0 < first.fidelity < 1 and second.fidelity == 1.0
