"""Cross-validation inside a search and the locked test split, end to end on a local Ray.

Real parts only: a local Ray on 127.0.0.1, Optuna, ASHA, an MLflow SQLite store, NIfTI
files written with nibabel, Keras training on 32x32 slices, the `hpsearch` CLI in a child
process for the final evaluation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest

from hpsearch.data import make_splits, read_index, synthesize
from hpsearch.data.splits import Splits, read_nnunet_splits
from hpsearch.evaluation import evaluate_folders
from hpsearch.search.driver import run_search
from hpsearch.search.holdout import evaluate_search
from hpsearch.spec import load_job

# 3 folds over 9 cases, 3 more held out; 2 epochs per fold. Learning rates from hopeless to
# good: ASHA must stop some trials inside fold 0 and promote others through every fold.
JOB = """\
name: cv
dataset: {{path: {data}, image_size: [32, 32], folds: 3, test_fraction: 0.25, split_seed: 1}}
model: unet
params: {{epochs: 2, depth: 2, base_filters: 8, batch_size: 4, learning_rate: 3.0e-3, decay_steps: 50}}
search_space: space.yaml
search: {{sampler: random, num_trials: {trials}, max_concurrent: 2, seed: 0, dashboard: false,
          cross_validation: {mode}}}
scheduler: {{type: asha, max_epochs: 2, grace_period: 1, reduction_factor: 2}}
resources: {{cpus_per_trial: 1}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results
"""
SPACE = "learning_rate: {type: loguniform, low: 1.0e-6, high: 1.0e-2}\n"


@pytest.fixture(scope="module")
def lv12(tmp_path_factory) -> Path:
    return synthesize("lv", tmp_path_factory.mktemp("data") / "lv12", cases=12, seed=2, shape=(32, 32, 6))


def _job(folder: Path, data: Path, mode: str, trials: int) -> Path:
    (folder / "space.yaml").write_text(SPACE)
    (folder / "job.yaml").write_text(JOB.format(data=data, mode=mode, trials=trials))
    return folder / "job.yaml"


def test_fold_fidelity_search_never_reads_the_test_split_and_reports_it(local_ray, lv12, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job_path = _job(tmp_path, lv12, "fidelity", trials=5)
    job = load_job(job_path)
    splits = make_splits(read_index(lv12), job.dataset)
    assert len(splits.test) == 3 and len(splits.folds) == 3

    # The proof that nothing during the search reads a test case: their files are garbage
    # while it runs. The search must finish; its final evaluation (the only reader) fails.
    test_files = [p for case in splits.test for p in (lv12 / "imagesTr" / f"{case}.nii.gz",
                                                      lv12 / "labelsTr" / f"{case}.nii.gz")]
    kept = {p: p.read_bytes() for p in test_files}
    for path in test_files:
        path.write_bytes(b"not a NIfTI file")
    lines: list[str] = []
    try:
        experiment = run_search(job_path, echo=lines.append)
    finally:
        for path, content in kept.items():
            path.write_bytes(content)
    assert any(line.startswith("warning: test evaluation not written") for line in lines), lines

    results = json.loads((experiment / "results.json").read_text())
    trials = results["trials"]
    assert results["metric"] == "cv_val_dice" and len(trials) == 5
    best = results["best"]
    assert best["folds"] == 3 and best["epochs_run"] == 6 and best["status"] == "completed"
    assert best["best_value"] == pytest.approx(max(t["best_value"] for t in trials if t["folds"] == 3))
    # Folds only for promoted trials: some were stopped inside fold 0 by ASHA on the budget
    # clock and never trained another fold; the whole search cost less than every fold of every trial.
    stopped = [t for t in trials if t["status"] == "stopped_early"]
    assert stopped and all(t["folds"] < 3 for t in stopped)
    assert any(t["folds"] == 0 and {h.get("fold") for h in t["history"]} == {0} for t in stopped)
    assert sum(t["epochs_run"] for t in trials) < 5 * 6

    # The folds as nnU-Net's splits_final.json, and the state's record of them.
    state = json.loads((experiment / "hpsearch-search.json").read_text())
    recorded = Splits.from_dict(state["data_info"]["splits"])
    assert recorded == splits
    assert read_nnunet_splits(experiment / "splits_final.json", recorded.pool) == splits.folds

    # The child run of the best trial: per-fold curves and the mean.
    client = mlflow.MlflowClient(state["tracking_uri"])
    child = client.search_runs([client.get_run(state["parent_run_id"]).info.experiment_id],
                               filter_string=f"tags.`hpsearch.trial_id` = '{best['trial_id']}'")[0]
    for fold in range(3):
        assert len(client.get_metric_history(child.info.run_id, f"fold{fold}/val_dice")) == 2
    assert child.data.metrics["cv_val_dice"] == pytest.approx(best["best_value"])
    assert child.data.metrics["best_cv_val_dice"] == pytest.approx(best["best_value"])

    # With the files back, the locked test split is evaluated once, as `hpsearch run` would have.
    payload = evaluate_search(experiment, echo=lines.append)
    assert payload["test_cases"] == 3 and payload["model"] == "ensemble of 3 fold models"
    parent = client.get_run(state["parent_run_id"])
    for key in ("test_dice", "test_dice_LV", "test_iou_LV", "test_hd95_LV"):
        assert parent.data.metrics[key] == pytest.approx(payload["test"][key])
    assert parent.data.metrics["validation_estimate"] == pytest.approx(best["best_value"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "test")} == {
        "test/test_results.json", "test/test_cases.csv"}
    meta = json.loads((experiment / "model" / "hpsearch-model.json").read_text())
    assert len(meta["ensemble"]["members"]) == 3 and meta["test"]["test"]["test_dice"] == payload["test"]["test_dice"]
    # `hpsearch evaluate PRED_DIR LABEL_DIR` on the written predictions gives what was logged.
    labels = tmp_path / "test-labels"
    labels.mkdir()
    for case in splits.test:
        shutil.copy(lv12 / "labelsTr" / f"{case}.nii.gz", labels / f"{case}.nii.gz")
    again = evaluate_folders(experiment / "test_predictions", labels, label_values=[0, 1], class_names=["bg", "LV"])
    assert again.mean_dice == pytest.approx(payload["test"]["test_dice"], abs=1e-9)
    assert [c.case_id for c in again.cases] == sorted(splits.test)


def test_mean_mode_trains_every_fold_of_every_trial(local_ray, lv12, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = run_search(_job(tmp_path, lv12, "mean", trials=2), echo=lambda line: None)
    results = json.loads((experiment / "results.json").read_text())
    assert [(t["folds"], t["epochs_run"], t["status"]) for t in results["trials"]] == [(3, 6, "completed")] * 2
