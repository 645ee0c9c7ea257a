"""A search under ordinary accidents: Ctrl-C, two searches in the same second, a dataset
changed before a resume. Real `hpsearch` processes, real signals, local Rays, MLflow SQLite.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from helpers import SPAWN_TAG, hpsearch_process, kill_processes, snapshot, tagged_processes

JOB = """\
name: safe
dataset: {{path: {data}, image_size: [32, 32], val_fraction: 0.25}}
model: unet
params: {{epochs: {epochs}, depth: 2, base_filters: 4, batch_size: 4, learning_rate: 3.0e-3, activation: leaky_relu,
          loss: ce}}
search_space: space.yaml
search: {{sampler: random, num_trials: {trials}, max_concurrent: 2, seed: 0, max_failures: 1, dashboard: false}}
scheduler: {{type: none, max_epochs: {epochs}, grace_period: 1}}
resources: {{cpus_per_trial: 1}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results
"""
# A learning rate of 10 with leaky ReLU and cross-entropy diverges in the first epoch.
SPACE = "learning_rate: {type: choice, values: [0.003, 10.0]}\n"
STEADY = "learning_rate: {type: choice, values: [0.003, 0.005]}\n"


def _job(folder: Path, data: Path, trials: int, epochs: int, space: str = SPACE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(space)
    (folder / "job.yaml").write_text(JOB.format(data=data, trials=trials, epochs=epochs))
    return folder / "job.yaml"


def _children(experiment: Path):
    state = json.loads((experiment / "hpsearch-search.json").read_text())
    client = mlflow.MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'")
    return client, parent, runs


def _epochs_logged(experiment: Path) -> int:
    try:
        client, _, runs = _children(experiment)
    except Exception:  # the store is being created
        return 0
    return sum(len(client.get_metric_history(r.info.run_id, "val_dice")) for r in runs)


def test_ctrl_c_interrupts_and_resume_finishes(lv_small, tmp_path, spawn):
    job = _job(tmp_path, lv_small, trials=4, epochs=3)
    driver = hpsearch_process(spawn, "run", job, cwd=tmp_path)
    experiment, deadline = None, time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        found = [p for p in (tmp_path / "results").glob("safe-*") if (p / "hpsearch-search.json").is_file()]
        if found and _epochs_logged(experiment := found[0]) >= 3:
            break
        time.sleep(0.5)
    assert experiment is not None and driver.poll() is None, driver.communicate()[0][-3000:]
    os.kill(driver.pid, signal.SIGINT)  # Ctrl-C: to the driver process itself
    output = driver.communicate(timeout=180)[0]

    assert driver.returncode == 130, output[-3000:]
    assert "search interrupted (SIGINT)" in output and f"hpsearch resume {experiment}" in output
    assert "Traceback" not in output
    assert not (experiment / "results.json").exists() and not (experiment / "dashboard").exists()
    state = json.loads((experiment / "hpsearch-search.json").read_text())
    assert state["status"] == "interrupted"
    _, parent, _ = _children(experiment)
    assert parent.info.status == "RUNNING" and parent.data.tags["hpsearch.status"] == "interrupted"

    resumed = hpsearch_process(spawn, "resume", experiment, cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    results = json.loads((experiment / "results.json").read_text())
    assert len(results["trials"]) == 4
    assert json.loads((experiment / "hpsearch-search.json").read_text())["status"] == "finished"
    client, parent, runs = _children(experiment)
    assert parent.info.status == "FINISHED" and len(runs) == 4
    by_id = {r.data.tags["hpsearch.trial_id"]: r for r in runs}
    for trial in results["trials"]:
        run = by_id[trial["trial_id"]]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")]
        assert steps == list(range(1, len(steps) + 1)), (trial["trial_id"], steps)
        assert run.data.tags["hpsearch.status"] == trial["status"]
        if trial["params"]["learning_rate"] == 10.0:
            # Diverged: a failure that would recur, recorded once and not retried.
            assert trial["status"] == "failed" and trial["failure"] == "nan", trial
            assert run.data.tags["hpsearch.failure"] == "nan" and "hpsearch.retry_error" not in run.data.tags
        else:
            assert trial["status"] == "completed" and steps == [1, 2, 3], trial
    # The Optuna study in the experiment folder came through the interruption too: every trial
    # ended in it, a diverged one as FAIL, the others with each epoch's value.
    study = optuna.load_study(study_name=experiment.name,
                              storage=JournalStorage(JournalFileBackend(str(experiment / "optuna.journal"))))
    ended = [t for t in study.trials if t.state.is_finished()]
    assert sorted(t.state.name for t in ended) == sorted(
        "FAIL" if t["status"] == "failed" else "COMPLETE" for t in results["trials"])
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in ended if t.state.name == "COMPLETE")


def _run_at(job: Path, cwd: Path, db: str, go, out):
    os.chdir(cwd)
    from hpsearch.search.driver import run_search

    go.wait()
    try:
        out.put(str(run_search(job, [f"tracking.uri=sqlite:///{db}"], echo=lambda line: None)))
    except BaseException as exc:  # reported to the test, which fails on it
        out.put(f"error: {exc!r}")


def _two_searches_released_together(folder: Path, data: Path) -> list[Path]:
    """Two spawned processes run one search each, released by one signal early in a second."""
    job = _job(folder, data, trials=1, epochs=1, space=STEADY)
    # Spawned, not forked: this process may have run a Ray already (gRPC does not survive a
    # fork). Each child imports everything first, then both wait for one signal to start.
    context = multiprocessing.get_context("spawn")
    go, out = context.Event(), context.Queue()  # (starts multiprocessing's tracker, untagged)
    tag = uuid.uuid4().hex  # inherited by the children and their local Rays: all killed at the end
    os.environ[SPAWN_TAG] = tag
    procs = [context.Process(target=_run_at, args=(job, folder, db, go, out)) for db in ("a.db", "b.db")]
    try:
        for proc in procs:
            proc.start()
        while time.time() % 1 > 0.1:  # release early in a second: both stamps fall in it
            time.sleep(0.005)
        go.set()
        answers = [out.get(timeout=300) for _ in procs]
        assert not [a for a in answers if a.startswith("error:")], answers
        return sorted(Path(a) for a in answers)
    finally:
        for proc in procs:
            proc.join(timeout=60)
        kill_processes(tagged_processes(tag))


def test_two_searches_started_in_the_same_second_do_not_mix(lv_small, tmp_path, monkeypatch):
    monkeypatch.setenv(SPAWN_TAG, "")  # restored after the test; each attempt sets its own tag
    # On a loaded machine one child may reach its time stamp a second later: the case under
    # test did not happen, so the pair runs again (a different-second pair must not mix either).
    for attempt in range(3):
        folders = _two_searches_released_together(tmp_path / f"attempt-{attempt}", lv_small)
        assert folders[0] != folders[1], folders
        if folders[1].name == f"{folders[0].name}-2":
            break
    else:
        pytest.fail(f"three attempts never started both searches in the same second: {folders}")
    parents = set()
    for folder in folders:
        state = json.loads((folder / "hpsearch-search.json").read_text())
        results = json.loads((folder / "results.json").read_text())
        assert state["name"] == folder.name and state["status"] == "finished"
        client, parent, runs = _children(folder)
        assert parent.info.status == "FINISHED" and parent.info.run_name == folder.name
        assert {r.data.tags["hpsearch.trial_id"] for r in runs} == {t["trial_id"] for t in results["trials"]}
        assert Path(results["best"]["checkpoint"]).is_relative_to(folder)
        parents.add(state["parent_run_id"])
    assert len(parents) == 2


def test_resume_refuses_a_changed_dataset_unless_accepted(lv_small, tmp_path, spawn):
    data = shutil.copytree(lv_small, tmp_path / "lv")
    job = _job(tmp_path, data, trials=1, epochs=1, space=STEADY)
    run = hpsearch_process(spawn, "run", job, cwd=tmp_path)
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output[-3000:]
    (experiment,) = (tmp_path / "results").glob("safe-*")
    results_before = (experiment / "results.json").read_bytes()

    label = data / "labelsTr" / "lv_003.nii.gz"
    image = nib.load(label)
    voxels = np.asarray(image.dataobj).copy()
    voxels[0, 0, 0] = 1 - voxels[0, 0, 0]  # one voxel relabelled: a valid, different label map
    nib.save(nib.Nifti1Image(voxels, image.affine, image.header), label)
    before = snapshot(experiment)
    refused = hpsearch_process(spawn, "resume", experiment, cwd=tmp_path)
    output = refused.communicate(timeout=300)[0]
    assert refused.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("hpsearch: error:")]
    assert len(errors) == 1 and "Traceback" not in output
    assert f"{data}: changed since the search started (labelsTr/lv_003.nii.gz)" in errors[0]
    assert "--accept-data-change" in errors[0]
    assert snapshot(experiment) == before  # nothing lost or overwritten

    accepted = hpsearch_process(spawn, "resume", experiment, "--accept-data-change", cwd=tmp_path)
    output = accepted.communicate(timeout=600)[0]
    assert accepted.returncode == 0, output[-3000:]
    assert "dataset changed (1 file(s)); accepted" in output
    state = json.loads((experiment / "hpsearch-search.json").read_text())
    assert [c["files"] for c in state["data_changes"]] == [["labelsTr/lv_003.nii.gz"]]
    assert state["dataset_digest"] == state["data_changes"][0]["digest_after"] == state["data_info"]["digest"]
    _, parent, _ = _children(experiment)
    assert "labelsTr/lv_003.nii.gz" in parent.data.tags["hpsearch.data_changed"]
    assert json.loads((experiment / "results.json").read_bytes()) == json.loads(results_before)
