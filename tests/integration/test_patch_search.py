"""Patch mode end to end on a local Ray: a 3D search on 4-channel BraTS-style data, its export,
and ``hpsearch predict`` scoring exactly the validation Dice the search reported.

Real parts only: a local Ray on 127.0.0.1, Optuna, an MLflow SQLite store, NIfTI files with
anisotropic spacing written by the synthetic generator, Keras training of a 3D U-Net on tiny
patches with augmentation made in background worker processes.
"""

from __future__ import annotations

import json

import mlflow
import nibabel as nib
import numpy as np
import pytest

from hpsearch.dashboard.collect import collect_search
from hpsearch.dashboard.overlays import best_trial_overlays
from hpsearch.data import synthesize
from hpsearch.experiment import Experiment
from hpsearch.metrics import compute_dice
from hpsearch.predict import predict_path
from hpsearch.search.driver import run_search
from hpsearch.search.exporting import export_best

JOB = """\
name: brats3d
dataset: {{path: {data}, dims: 3, patch_size: [16, 16, 8], samples_per_epoch: 8, val_fraction: 0.4,
          regions: {{whole_tumour: [1, 2, 4]}}}}
model: unet
augment: {{elastic_p: 0.0, lowres_p: 0.0}}
params: {{epochs: 2, depth: 2, base_filters: 4, batch_size: 2, learning_rate: 3.0e-3}}
runtime: {{loader_workers: 1}}
search_space: space.yaml
search: {{sampler: random, num_trials: 2, max_concurrent: 2, seed: 0, dashboard: false}}
scheduler: {{type: none, max_epochs: 2}}
resources: {{cpus_per_trial: 1}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results
"""
SPACE = """\
learning_rate: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
augment.noise_p: {type: uniform, low: 0.0, high: 0.3}
"""


@pytest.fixture(scope="module")
def brats_anisotropic(tmp_path_factory):
    """5 BraTS-style cases of 4 channels, 24x28x10 voxels of about 2.7 x 2.3 x 6 mm, labels 0/1/2/4."""
    return synthesize("brats", tmp_path_factory.mktemp("data") / "brats", cases=5, seed=3, shape=(24, 28, 10))


def test_3d_search_exports_a_model_whose_predictions_score_the_reported_val_dice(
    local_ray, brats_anisotropic, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "job.yaml").write_text(JOB.format(data=brats_anisotropic))
    lines: list[str] = []
    folder = run_search(tmp_path / "job.yaml", echo=lines.append)

    experiment = Experiment.open(folder)
    info = experiment.state.data_info
    assert info["plan"]["dims"] == 3 and info["plan"]["patch_size"] == [16, 16, 8]
    results = json.loads((folder / "results.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["completed", "completed"]
    best = results["trials"][0]
    assert any(k.startswith("augment.noise_p") for k in best["params"])

    # The plan is on the parent run and in the export.
    parent = mlflow.MlflowClient(experiment.state.tracking_uri).get_run(experiment.state.parent_run_id)
    assert parent.data.params["plan.patch_size"] == "[16, 16, 8]"
    model_dir = export_best(folder, tmp_path / "model")
    meta = json.loads((model_dir / "hpsearch-model.json").read_text())
    assert meta["model"] == "unet3d" and meta["plan"]["patch_size"] == [16, 16, 8]
    assert meta["volume_config"]["target_spacing"] == info["volume_config"]["target_spacing"]
    assert meta["regions"] == {"whole_tumour": [1, 2, 4]}

    # Predict every validation case from its 4-channel NIfTI file, score it in its own geometry.
    labels = info["label_values"]
    scores, whole = [], []
    for case in info["val_cases"]:
        source = brats_anisotropic / "imagesTr" / f"{case}.nii.gz"
        out = predict_path(model_dir, source, tmp_path / f"{case}-pred.nii.gz")[0]
        predicted, truth = nib.load(out), nib.load(brats_anisotropic / "labelsTr" / f"{case}.nii.gz")
        assert predicted.shape == truth.shape
        np.testing.assert_allclose(predicted.affine, nib.load(source).affine)
        values = np.asarray(predicted.dataobj)
        assert set(np.unique(values)) <= set(labels)
        to_class = np.searchsorted(labels, values)
        true_class = np.searchsorted(labels, np.asarray(truth.dataobj).astype(int))
        scores.append(compute_dice(to_class, true_class, len(labels))[1:].mean())
        whole.append(compute_dice(to_class > 0, true_class > 0, 2)[1])  # the region: labels 1, 2 and 4
    assert best["best_value"] > 0
    assert float(np.mean(scores)) == pytest.approx(best["best_value"], abs=1e-4)
    # The evaluation region is reported per epoch like a class, on the same predictions.
    at_best = next(h for h in best["history"] if h["training_iteration"] == best["best_epoch"])
    assert float(np.mean(whole)) == pytest.approx(at_best["val_dice_whole_tumour"], abs=1e-4)

    # The dashboard's pictures: whole validation scans segmented as predict would, same Dice.
    pictures = best_trial_overlays(collect_search(folder), count=2)
    assert pictures.png.startswith(b"\x89PNG") and len(pictures.slices) == 2
    for shown, case_score in zip(pictures.slices, scores):
        assert np.mean(list(shown["dice"].values())) == pytest.approx(case_score, abs=1e-4)
