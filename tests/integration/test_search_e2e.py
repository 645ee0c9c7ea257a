"""The search end to end on a local Ray: run -> MLflow -> export -> predict, failures, resume.

Real parts only: a local Ray started here on 127.0.0.1, Optuna, an MLflow SQLite store,
NIfTI files written with nibabel, Keras training on 32x32 slices.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
from helpers import hpsearch_process

from hpsearch.errors import HpsearchError
from hpsearch.metrics import compute_dice
from hpsearch.predict import predict_path
from hpsearch.search.driver import run_search
from hpsearch.search.exporting import export_best

JOB = """\
name: tiny
dataset: {{path: {data}, image_size: [32, 32], val_fraction: 0.25}}
model: unet
params: {{epochs: 4, depth: 2, base_filters: 8, batch_size: 4, learning_rate: 3.0e-3, decay_steps: 50}}
search_space: space.yaml
search: {{sampler: {sampler}, num_trials: {trials}, max_concurrent: 2, seed: 0, max_failures: 1, dashboard: false}}
scheduler: {{type: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}}
resources: {{cpus_per_trial: 1}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results
"""
SPACE = """\
learning_rate: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
base_filters: {type: choice, values: [4, 8]}
"""


def _write_job(folder: Path, data: Path, space: str = SPACE, sampler: str = "tpe", trials: int = 4, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(space)
    text = JOB.format(data=data, sampler=sampler, trials=trials)
    for key, value in extra.items():
        text = text.replace(key, value)
    (folder / "job.yaml").write_text(text)
    return folder / "job.yaml"


def _children(uri: str, parent_run_id: str):
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    return client, client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def test_run_export_predict(local_ray, lv_small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = _write_job(tmp_path, lv_small)
    lines: list[str] = []
    experiment = run_search(job, echo=lines.append)

    results = json.loads((experiment / "results.json").read_text())
    assert len(results["trials"]) == 4
    assert {t["status"] for t in results["trials"]} <= {"completed", "stopped_early"}
    assert any("best: trial" in line for line in lines)
    assert not (experiment / "dashboard").exists()  # search.dashboard: false
    # Not a terminal: the progress is one plain line per ended trial, counting to the total.
    ended = [line for line in lines if line.startswith("  trial ") and " | " in line]
    assert len(ended) == 4 and "4/4 ended, 0 running, best val_dice" in ended[-1], ended
    best = results["best"]
    assert best["best_value"] == max(t["best_value"] for t in results["trials"])

    state = json.loads((experiment / "hpsearch-search.json").read_text())
    client, children = _children(state["tracking_uri"], state["parent_run_id"])
    assert len(children) == 4
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_dice")]
        assert steps == list(range(1, len(steps) + 1))
        assert child.data.tags["hpsearch.status"] in ("completed", "stopped_early")
        assert "learning_rate" in child.data.params
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"job.yaml", "search_space.yaml"} <= artifacts

    with pytest.raises(HpsearchError, match=f"--out {lv_small}/model: inside the dataset folder"):
        export_best(experiment, lv_small / "model")
    out = export_best(experiment, tmp_path / "model", register="tiny-lv", echo=lines.append)
    meta = json.loads((out / "hpsearch-model.json").read_text())
    assert meta["label_values"] == [0, 1] and meta["mlflow"]["run_id"]
    versions = client.search_model_versions("name='tiny-lv'")
    assert len(versions) == 1 and versions[0].run_id == meta["mlflow"]["run_id"]

    # Predict the validation cases from their NIfTI files: with image_size equal to the
    # scans' size no resampling happens, so per-case Dice must equal the search's.
    val_cases = state["data_info"]["val_cases"]
    scores = []
    for case in val_cases:
        written = predict_path(out, lv_small / "imagesTr" / f"{case}.nii.gz", tmp_path / f"{case}-pred.nii.gz")
        pred_img = nib.load(written[0])
        truth = nib.load(lv_small / "labelsTr" / f"{case}.nii.gz")
        assert pred_img.shape == truth.shape
        np.testing.assert_allclose(pred_img.affine, truth.affine)
        scores.append(compute_dice(np.asarray(pred_img.dataobj), np.asarray(truth.dataobj), 2)[1])
    assert float(np.mean(scores)) == pytest.approx(best["best_value"], abs=1e-6)


def test_failing_trials_are_recorded_and_the_search_completes(local_ray, lv_small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A learning rate of 10 with leaky ReLU and plain cross-entropy drives the loss to
    # NaN in the first epoch: a real divergence, raised as TrainingDiverged.
    space = "learning_rate: {type: choice, values: [0.003, 10.0]}\nbase_filters: {type: choice, values: [4, 8]}\n"
    job = _write_job(tmp_path, lv_small, space=space, sampler="random", trials=6,
                     **{"learning_rate: 3.0e-3,": "learning_rate: 3.0e-3, activation: leaky_relu, loss: ce,"})
    experiment = run_search(job, echo=lambda line: None)
    results = json.loads((experiment / "results.json").read_text())
    statuses = [t["status"] for t in results["trials"]]
    assert len(statuses) == 6 and "failed" in statuses and set(statuses) - {"failed"}
    failed = [t for t in results["trials"] if t["status"] == "failed"]
    assert all(t["params"]["learning_rate"] == 10.0 and "diverged" in t["error"] for t in failed)
    assert results["best"]["status"] != "failed"

    state = json.loads((experiment / "hpsearch-search.json").read_text())
    client, children = _children(state["tracking_uri"], state["parent_run_id"])
    tagged = [c for c in children if c.data.tags.get("hpsearch.status") == "failed"]
    assert len(tagged) == len(failed)
    assert all("diverged" in c.data.tags.get("hpsearch.error", "") for c in tagged)
    assert all(c.info.status == "FAILED" for c in tagged)
    # A diverged configuration diverges again: recorded as such and not retried.
    assert all(t["failure"] == "nan" for t in failed)
    assert all(c.data.tags["hpsearch.failure"] == "nan" and "hpsearch.retry_error" not in c.data.tags
               for c in tagged)


def test_driver_killed_and_resumed(lv_small, tmp_path, spawn):
    # No early stopping here (grace period = max epochs): every trial runs 6 epochs.
    job = _write_job(tmp_path, lv_small, sampler="random", trials=6, **{"{epochs: 4,": "{epochs: 6,",
                     "max_epochs: 4, grace_period: 1": "max_epochs: 6, grace_period: 6"})
    driver = hpsearch_process(spawn, "run", job, cwd=tmp_path)
    experiment = None
    deadline = time.monotonic() + 240
    # Kill once at least one trial has finished and others are mid-way.
    while time.monotonic() < deadline:
        exps = [p for p in (tmp_path / "results").glob("tiny-*") if (p / "hpsearch-search.json").is_file()]
        if exps:
            experiment = exps[0]
            if _persisted_finished(experiment):
                break
        time.sleep(0.5)
    if experiment is None:
        driver.kill()
        pytest.fail(f"no finished trial within 240 s: {driver.communicate()[0][-3000:]}")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    # "Finished" is what Ray's persisted experiment state says: a trial that ended after
    # the last snapshot is unfinished to any driver, and resumes from its checkpoint.
    done_before = {name: _result_lines(experiment / name) for name in _persisted_finished(experiment)}
    assert not (experiment / "results.json").exists()

    resumed = hpsearch_process(spawn, "resume", experiment, cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    results = json.loads((experiment / "results.json").read_text())
    assert len(results["trials"]) == 6

    state = json.loads((experiment / "hpsearch-search.json").read_text())
    client, children = _children(state["tracking_uri"], state["parent_run_id"])
    assert len(children) == 6, "a resumed search must continue the same child runs"
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_dice")]
        assert steps == list(range(1, 7)), (child.info.run_id, steps)
    assert done_before
    for trial, lines in done_before.items():
        assert _result_lines(experiment / trial) == lines, f"{trial} finished before the kill but ran again"


def _persisted_finished(experiment: Path) -> list[str]:
    """Trial folders that Ray's latest experiment-state snapshot records as TERMINATED."""
    snapshots = sorted(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not snapshots:
        return []
    try:
        state = json.loads(snapshots[-1].read_text())
    except ValueError:  # caught mid-write
        return []
    trials = [json.loads(entry[0]) for entry in state["trial_data"]]
    return [f"trial_{t['trial_id']}" for t in trials if t.get("status") == "TERMINATED"]


def _result_lines(trial_dir: Path) -> int:
    path = trial_dir / "result.json"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_a_configuration_that_cannot_fit_fails_at_once_and_is_not_retried(local_ray, lv_small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = _write_job(tmp_path, lv_small, sampler="random", trials=2,
                     **{"storage: results": "storage: results\nruntime: {memory_limit_mb: 1}"})
    experiment = run_search(job, echo=lambda line: None)
    results = json.loads((experiment / "results.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["failed", "failed"]
    assert all(t["failure"] == "invalid_config" and "needs about" in t["error"] and "the trial has 0.00 GiB"
               in t["error"] for t in results["trials"])
    state = json.loads((experiment / "hpsearch-search.json").read_text())
    _, children = _children(state["tracking_uri"], state["parent_run_id"])
    assert [c.data.tags["hpsearch.failure"] for c in children] == ["invalid_config"] * 2
    assert all("hpsearch.retry_error" not in c.data.tags for c in children)


def test_a_search_trains_each_trials_first_rung_at_low_fidelity(local_ray, lv_small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = _write_job(tmp_path, lv_small, sampler="random", trials=2, **{
        "reduction_factor: 2}": "reduction_factor: 2, fidelity: {resolution: 0.5, case_fraction: 0.5}}",
        "epochs: 4,": "epochs: 3,", "max_epochs: 4,": "max_epochs: 3,"})
    experiment = run_search(job, echo=lambda line: None)
    state = json.loads((experiment / "hpsearch-search.json").read_text())
    assert state["job"]["scheduler"]["fidelity"]["epochs"] == 1  # ASHA's first rung (grace_period)
    client, children = _children(state["tracking_uri"], state["parent_run_id"])
    assert len(children) == 2
    for child in children:
        shares = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "fidelity")}
        # epoch 1 at half the size on half the cases; every later epoch at full fidelity
        assert 0 < shares[1] < 0.25 and all(shares[step] == 1.0 for step in shares if step > 1), shares
        assert len(client.get_metric_history(child.info.run_id, "val_dice")) == len(shares)
