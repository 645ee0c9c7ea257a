"""Patch mode in the trainer: real Keras on tiny 2D/3D patches of anisotropic NIfTI cases,
batches from real loader worker processes, validation through the predict path."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import psutil
import pytest

from hpsearch.data import DatasetConfig, load_dataset, read_index, synthesize
from hpsearch.data.volumes import load_case
from hpsearch.metrics import DiceMetric
from hpsearch.segment import keras_logits, segment_scan
from hpsearch.trainer import Trainer

PARAMS = {"depth": 2, "base_filters": 4, "batch_size": 2, "learning_rate": 3e-3, "epochs": 3}
NO_SPATIAL = {"rotation_p": 0.0, "scale_p": 0.0, "elastic_p": 0.0}  # cheap, still augmented


@pytest.fixture(scope="module")
def brats_odd(tmp_path_factory):
    """5 BraTS-style cases of 25x27x9 voxels (odd sizes, about 2.6 x 2.4 x 6.7 mm)."""
    return synthesize("brats", tmp_path_factory.mktemp("data") / "brats", cases=5, seed=5, shape=(25, 27, 9))


def _data(root, dims, patch):
    data, _ = load_dataset(DatasetConfig(path=root, dims=dims, patch_size=patch, samples_per_epoch=6,
                                         val_fraction=0.4))
    return data


@pytest.mark.parametrize("dims, patch", [(2, (16, 16)), (3, (16, 16, 8))])
def test_an_epoch_is_a_fixed_number_of_samples_whatever_the_batch_size(brats_odd, dims, patch):
    data = _data(brats_odd, dims, patch)
    for batch_size, steps in ((1, 6), (2, 3), (4, 2)):
        trainer = Trainer(data, "unet", {**PARAMS, "batch_size": batch_size}, workers=0, augment=NO_SPATIAL)
        batches, count = trainer.feed.epoch(0, batch_size)
        shapes = [x.shape for x, _ in batches]
        assert count == steps and len(shapes) == steps
        assert shapes[0] == (batch_size, *patch, 4)
        trainer.close()


@pytest.mark.parametrize("dims, patch, workers", [(2, (16, 16), 1), (3, (16, 16, 8), 0)])
def test_restored_patch_trainer_continues_like_an_uninterrupted_one(brats_odd, tmp_path, dims, patch, workers):
    data = _data(brats_odd, dims, patch)
    make = lambda: Trainer(data, "unet", PARAMS, seed=3, workers=workers, augment=NO_SPATIAL)  # noqa: E731
    straight = make()
    try:
        straight.fit()
    finally:
        straight.close()
    first = make()
    try:
        first.train_epoch()
        first.save(tmp_path / "ckpt")
    finally:
        first.close()
    resumed = make()
    try:
        resumed.restore(tmp_path / "ckpt")
        resumed.fit()
    finally:
        resumed.close()
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-4)
    children = psutil.Process().children(recursive=True)
    assert not [p for p in children if "hpsearch-patch-loader" in " ".join(p.cmdline())]


def test_validation_scores_whole_scans_in_their_own_geometry(brats_odd):
    data = _data(brats_odd, 2, (16, 16))
    trainer = Trainer(data, "unet", {**PARAMS, "epochs": 1}, workers=0, augment=NO_SPATIAL)
    trainer.train_epoch()
    _, scores = trainer.evaluate()
    # The same model on the raw NIfTI files, through the predict path, scores the same.
    index = read_index(brats_odd)
    by_id = {case.case_id: case for case in index.cases}
    metric = DiceMetric(data.num_classes)
    for case_id, label in zip(data.info["val_cases"], data.val_labels):
        volumes = load_case(index, by_id[case_id])
        assert volumes.label.shape == label.shape == nib.load(by_id[case_id].label).shape
        predicted = segment_scan(volumes.image, volumes.spacing, keras_logits(trainer.model), data.info)
        metric.update(predicted, volumes.label)
    np.testing.assert_allclose(metric.aggregate().dice, scores.dice, atol=1e-6)
    trainer.close()


def test_the_fcn_trains_on_2d_patches_too(brats_odd):
    data = _data(brats_odd, 2, (32, 32))
    trainer = Trainer(data, "fcn", {"depth": 1, "base_filters": 4, "batch_size": 2, "epochs": 1}, workers=0,
                      augment=NO_SPATIAL)
    metrics = trainer.train_epoch().metrics()
    assert trainer.model.output_shape == (None, 32, 32, 4)
    assert 0.0 <= metrics["val_dice"] <= 1.0
    trainer.close()
