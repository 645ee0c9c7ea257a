"""MLflowTracker with real Ray Tune (local Ray, 2 CPUs) and real MLflow stores, no mocks.

Measured (2 CPUs): Ray start ~4 s, the ASHA search ~7 s, interrupt + restore ~6 s, the
server outage test ~14 s (each ``mlflow server`` start ~5 s); ~33 s in all.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
from helpers import free_port, start_server, stop_server
from mlflow import MlflowClient
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from hpsearch.tracking import MLflowTracker, start_search_run

# Tune's workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def trainable(config):
    """Fake-but-computed epochs; a checkpoint every second epoch, so a restore replays one."""
    start = 0
    if checkpoint := tune.get_checkpoint():
        with checkpoint.as_directory() as folder:
            start = json.loads(Path(folder, "state.json").read_text())["epoch"]
    if config["x"] == config.get("late_x"):
        time.sleep(2)  # so that ASHA has a better trial's result to compare it with at epoch 1
    for epoch in range(start + 1, config["epochs"] + 1):
        if config["x"] == config.get("fail_x") and epoch == 2:
            raise ValueError(f"boom at epoch {epoch}")
        time.sleep(config.get("sleep", 0.02))
        quality = min(config["x"], 5)  # x=5 and x=10 tie for the best: ASHA never stops them
        metrics = {"epoch": epoch, "loss": 1 / epoch, "val_loss": 1.5 / epoch, "lr": 1e-3,
                   "val_dice": 1 - 1 / (epoch + 1 + quality), "val_iou": 0.5,
                   "val_dice_LV": 0.7, "epoch_seconds": 0.02, "unlogged": 1.0}
        if epoch % 2:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    started = not ray.is_initialized()  # another module's Ray is left to its owner
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def tracker_for(uri: str, parent: str) -> MLflowTracker:
    # Every write at once (not hpsearch's 1 s batching), so a test can count what is queued.
    return MLflowTracker(uri, MlflowClient(uri).get_run(parent).info.experiment_id, parent, send_interval_s=0)


def children(client: MlflowClient, parent: str) -> dict[str, object]:
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return {run.data.params["x"]: run for run in runs}


def steps(client: MlflowClient, run, key: str = "val_dice") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_search_is_one_parent_with_nested_trials(store, tmp_path):
    job = tmp_path / "demo.yaml"
    job.write_text("name: demo\n")
    parent = start_search_run(
        store, "asha", run_name="search-1", params={"model": "unet", "dataset": {"image_size": [96, 96]},
                                                   "long": "v" * 7000},
        tags={"hpsearch.job": "demo", "mlflow.source.git.commit": "abc123"},
        artifacts={"job.yaml": job, "spaces/space.yaml": job}, dataset_fingerprint={"cases": 8},
        artifact_location=str(tmp_path / "artifacts"))
    with pytest.raises(ValueError, match="relative"):
        start_search_run(store, "asha", run_name="x", params={}, tags={}, artifacts={"../job.yaml": job})
    with pytest.raises(ValueError, match="JSON"):
        start_search_run(store, "asha", run_name="x", params={}, tags={}, dataset_fingerprint={"a": {1, 2}})
    tracker = tracker_for(store, parent)
    tuner = tune.Tuner(
        trainable, param_space={"x": tune.grid_search([5, 10, 1, 0]), "epochs": 5, "fail_x": 10, "late_x": 0},
        tune_config=tune.TuneConfig(metric="val_dice", mode="max", scheduler=ASHAScheduler(
            max_t=5, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path / "ray"), callbacks=[tracker],
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=0))
    tuner.fit()
    assert tracker.pending == 0

    client = MlflowClient(store)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert not client.search_runs([run.info.experiment_id], "attributes.run_name = 'x'")  # refused early
    assert run.data.params["dataset.image_size"] == "[96, 96]" and len(run.data.params["long"]) == 6000
    assert run.data.tags["mlflow.source.git.commit"] == "abc123"
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert artifacts == {"job.yaml", "spaces", "dataset_fingerprint.json"}
    fingerprint = client.download_artifacts(parent, "dataset_fingerprint.json", str(tmp_path))
    assert json.loads(Path(fingerprint).read_text()) == {"cases": 8}

    trials = children(client, parent)
    assert sorted(trials) == ["0", "1", "10", "5"]
    counts = collections.Counter(r.data.tags["hpsearch.status"] for r in trials.values())
    assert run.data.tags["hpsearch.status"] == "finished" and run.data.tags["hpsearch.trials_total"] == "4"
    for status in ("completed", "stopped_early", "failed"):  # x=1 may finish or be stopped
        assert run.data.tags[f"hpsearch.trials_{status}"] == str(counts[status]), status
        assert counts[status] >= 1, status
    for x, child in trials.items():
        assert child.data.params["epochs"] == "5" and child.data.tags["hpsearch.trial_id"]
        assert child.info.run_name.startswith("trial-")
        history = steps(client, child)
        assert history == list(range(1, len(history) + 1)), (x, history)  # 1..k, once each
        assert steps(client, child, "training_iteration") == history
        assert "unlogged" not in child.data.metrics and "val_dice_LV" in child.data.metrics

    best = trials["5"]
    assert best.data.tags["hpsearch.status"] == "completed" and steps(client, best) == [1, 2, 3, 4, 5]
    assert best.data.metrics["best_val_dice"] == pytest.approx(1 - 1 / 11)
    # x=0 reaches ASHA's first rung (epoch 1) last and below the others' median: stopped there.
    weak = trials["0"].data.tags
    assert weak["hpsearch.status"] == "stopped_early" and weak["hpsearch.stopped_at_epoch"] == "1"
    assert trials["0"].info.status == "FINISHED"
    assert trials["1"].data.tags["hpsearch.status"] in {"completed", "stopped_early"}
    # x=10 fails at epoch 2 twice (one retry): failed only after the retry, epoch 1 logged once.
    failed = trials["10"]
    assert failed.info.status == "FAILED" and failed.data.tags["hpsearch.status"] == "failed"
    assert failed.data.tags["hpsearch.error"].startswith("ValueError: boom at epoch 2")
    assert len(failed.data.tags["hpsearch.error"]) <= 500
    assert failed.data.tags["hpsearch.retries"] == "1" and steps(client, failed) == [1]
    assert failed.data.tags["hpsearch.retry_error"].startswith("ValueError: boom at epoch 2")


class InterruptOnce(tune.Callback):
    """Records every result Tune hands to callbacks; the first time a trial reports epoch 3
    (its last checkpoint is epoch 2), stops the search the way Ctrl-C does (Tune's handler)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with open(self.folder / "seen.txt", "a") as out:
            out.write(f"{trial.trial_id} {result['training_iteration']}\n")
        marker = self.folder / "interrupted"
        if result["training_iteration"] == 3 and not marker.exists():
            marker.touch()  # the restored search unpickles this callback: interrupt only once
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's SIGINT/SIGUSR1 handler: save, stop


def test_restored_search_logs_every_epoch_exactly_once(store, tmp_path):
    parent = start_search_run(store, "resume", run_name="search-2", params={}, tags={},
                              artifact_location=str(tmp_path / "artifacts"))
    param_space = {"x": tune.grid_search([0, 1, 2]), "epochs": 6, "sleep": 0.1}
    run_config = tune.RunConfig(name="resume", storage_path=str(tmp_path / "ray"), verbose=0,
                                callbacks=[tracker_for(store, parent), InterruptOnce(tmp_path)])
    tune.Tuner(trainable, param_space=param_space, run_config=run_config).fit()

    client = MlflowClient(store)
    assert (tmp_path / "interrupted").exists()
    run = client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.tags["hpsearch.status"] == "interrupted"
    before = children(client, parent)
    assert before and all(r.info.status == "RUNNING" for r in before.values())
    assert max((steps(client, r) or [0])[-1] for r in before.values()) < 6

    # Tune restores the callbacks from tuner.pkl: a new MLflowTracker object, empty state.
    tune.Tuner.restore(str(tmp_path / "ray" / "resume"), trainable, resume_errored=True).fit()

    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["hpsearch.trials_completed"] == "3"
    after = children(client, parent)
    assert sorted(after) == ["0", "1", "2"]
    for x, child in after.items():
        assert child.info.status == "FINISHED" and child.data.tags["hpsearch.status"] == "completed"
        if x in before:
            assert child.info.run_id == before[x].info.run_id  # continued, not duplicated
        for key in ("val_dice", "loss", "training_iteration"):
            assert steps(client, child, key) == [1, 2, 3, 4, 5, 6], (x, key)
    seen = (tmp_path / "seen.txt").read_text().splitlines()
    assert len(seen) > len(set(seen))  # some epoch really was replayed to the callbacks


def fake_trial(trial_id: str, epochs: int) -> Trial:
    return Trial("trainable", config={"x": 1, "epochs": epochs}, trial_id=trial_id, stub=True)


def report(tracker: MLflowTracker, trial: Trial, step: int, **metrics) -> None:
    result = {"training_iteration": step, "val_dice": step / 10, "loss": 1.0, **metrics}
    tracker.on_trial_result(iteration=step, trials=[trial], trial=trial, result=result)
    trial.update_last_result(result)  # what Tune does after the callbacks


def test_unreachable_server_queues_without_raising(caplog):
    tracker = MLflowTracker(f"http://127.0.0.1:{free_port()}", "0", "no-such-parent", end_flush_s=0.2)
    trial, broken = fake_trial("abc_00000", epochs=2), fake_trial("abc_00001", epochs=2)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="hpsearch.tracking"):
        tracker.setup()
        tracker.on_trial_start(iteration=0, trials=[trial], trial=trial)
        for step in (1, 2, 2):
            report(tracker, trial, step)
        tracker.on_trial_complete(iteration=3, trials=[trial], trial=trial)
        assert tracker.flush(timeout_s=0.5) == 4  # start, epochs 1 and 2, end
        tracker.on_trial_error(iteration=4, trials=[trial, broken], trial=broken)
        tracker.on_experiment_end(trials=[trial, broken])
    assert time.monotonic() - started < 5  # refused connections are not retried for minutes
    assert tracker.pending == 6
    assert sum("unavailable" in r.message for r in caplog.records) == 1  # once per outage
    assert any("4 tracking batches still pending" in r.message for r in caplog.records)


def test_outage_is_replayed_in_order_exactly_once(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        parent = start_search_run(uri, "outage", run_name="search-3", params={}, tags={})
        tracker = tracker_for(uri, parent)
        trial = fake_trial("out_00000", epochs=4)
        tracker.on_trial_start(iteration=0, trials=[trial], trial=trial)
        report(tracker, trial, 1)
        report(tracker, trial, 2)
        assert tracker.pending == 0

        stop_server(server)
        report(tracker, trial, 3, loss=math.nan, val_loss=math.inf)
        report(tracker, trial, 3)  # a replayed epoch while the first is still queued
        report(tracker, trial, 4)
        tracker.on_trial_complete(iteration=5, trials=[trial], trial=trial)
        assert tracker.pending == 3  # epochs 3 and 4, the end of the trial

        server = start_server(tmp_path, port)
        assert tracker.flush(timeout_s=20) == 0
        report(tracker, trial, 4)  # nothing may be sent twice after the outage either
        client = MlflowClient(uri)
        child = children(client, parent)["1"]
        assert steps(client, child) == [1, 2, 3, 4]
        assert steps(client, child, "loss") == [1, 2, 3, 4]
        assert child.info.status == "FINISHED" and child.data.tags["hpsearch.status"] == "completed"
        # MLflow 3 stores NaN as NaN and clamps +-inf to +-1.8e308: both kept, both flagged.
        losses = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "loss")}
        assert math.isnan(losses[3]) and losses[4] == 1.0
        val_losses = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "val_loss")}
        assert val_losses == {3: sys.float_info.max}
        assert child.data.tags["hpsearch.nonfinite_metrics"] == "loss,val_loss"
        assert child.data.metrics["best_val_dice"] == pytest.approx(0.4)

        with pytest.raises(ValueError):
            tracker.close_parent("DONE")
        assert tracker.close_parent("KILLED")  # e.g. a search abandoned after Ctrl-C
        run = client.get_run(parent)
        assert run.info.status == "KILLED" and run.data.tags["hpsearch.status"] == "killed"
        assert run.data.tags["hpsearch.trials_completed"] == "1"
    finally:
        stop_server(server)


def test_run_of_a_trial_the_resumed_search_never_saw_is_ended_as_lost(store):
    # A driver killed after starting a trial but before Ray saved it leaves a RUNNING run
    # whose trial the resumed search does not know; it must not stay RUNNING forever.
    parent = start_search_run(store, "lost", run_name="search-lost", params={}, tags={})
    first = tracker_for(store, parent)
    orphan, kept = fake_trial("lost_00000", epochs=3), fake_trial("lost_00001", epochs=1)
    for trial in (orphan, kept):
        first.on_trial_start(iteration=0, trials=[orphan, kept], trial=trial)
        report(first, trial, 1)
    resumed = tracker_for(store, parent)  # a new driver: state comes from MLflow only
    resumed.on_trial_start(iteration=0, trials=[kept], trial=kept)
    resumed.on_trial_complete(iteration=1, trials=[kept], trial=kept)
    resumed.on_experiment_end(trials=[kept])
    client = MlflowClient(store)
    experiment = client.get_run(parent).info.experiment_id
    runs = {run.data.tags["hpsearch.trial_id"]: run for run in client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")}
    assert runs["lost_00000"].info.status == "KILLED" and runs["lost_00000"].data.tags["hpsearch.status"] == "lost"
    assert runs["lost_00001"].data.tags["hpsearch.status"] == "completed"
    assert steps(client, runs["lost_00000"]) == [1]  # what it logged is kept
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED" and parent_run.data.tags["hpsearch.trials_lost"] == "1"


def test_batched_epochs_reach_mlflow_once_in_order(store):
    """With a send interval, queued epochs wait and go as one write per trial, in order."""
    parent = start_search_run(store, "batched", run_name="search-b", params={}, tags={})
    client = MlflowClient(store)
    tracker = MLflowTracker(store, client.get_run(parent).info.experiment_id, parent, send_interval_s=3600)
    first, second = fake_trial("bat_00000", epochs=4), fake_trial("bat_00001", epochs=4)
    for trial in (first, second):
        tracker.on_trial_start(iteration=0, trials=[first, second], trial=trial)
    for step in (1, 2, 3):
        for trial in (first, second):  # interleaved, as two concurrent trials report
            report(tracker, trial, step)
    report(tracker, first, 3)  # a replayed epoch: not queued again
    assert tracker.pending == 6  # every epoch waits: none sent yet
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(runs) == 2 and all(steps(client, run) == [] for run in runs)
    report(tracker, first, 4)
    tracker.on_trial_complete(iteration=5, trials=[first, second], trial=first)  # an end goes at once
    assert tracker.pending == 0
    assert sorted(steps(client, run) for run in runs) == [[1, 2, 3], [1, 2, 3, 4]]
    assert sorted(steps(client, run, "loss") for run in runs) == [[1, 2, 3], [1, 2, 3, 4]]


class SnapshotCheck(tune.Callback):
    """Placed after the tracker: at every experiment snapshot Tune saves, write down the epochs
    the driver had received and those MLflow holds (a file: Tune may copy callbacks)."""

    def __init__(self, uri: str, parent: str, out: Path):
        self.uri, self.parent, self.out = uri, parent, out
        self.received: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.received[trial.trial_id] = max(self.received.get(trial.trial_id, 0), result["training_iteration"])

    def get_state(self):
        client = MlflowClient(self.uri)
        runs = client.search_runs([client.get_run(self.parent).info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{self.parent}'")
        logged = {r.data.tags["hpsearch.trial_id"]: int(r.data.metrics.get("training_iteration", 0)) for r in runs}
        with self.out.open("a") as f:
            f.write(json.dumps({"received": self.received, "logged": logged}) + "\n")
        return None


def test_every_epoch_is_in_mlflow_before_an_experiment_snapshot_is_stored(store, tmp_path):
    """Batched writes lose nothing on a killed driver: a restore starts each trial from the
    snapshot's checkpoint, and the tracker sends its queue while Tune saves that snapshot."""
    parent = start_search_run(store, "snapshots", run_name="search-s", params={}, tags={})
    tracker = MLflowTracker(store, MlflowClient(store).get_run(parent).info.experiment_id, parent,
                            send_interval_s=3600)  # nothing would be sent before a trial ends
    check = SnapshotCheck(store, parent, tmp_path / "snapshots.jsonl")
    run_config = tune.RunConfig(name="snapshots", storage_path=str(tmp_path / "ray"), verbose=0,
                                callbacks=[tracker, check],
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))  # a snapshot per checkpoint
    param_space = {"x": tune.grid_search([0, 1]), "epochs": 6, "sleep": 0.2}
    tune.Tuner(trainable, param_space=param_space, run_config=run_config).fit()

    snapshots = [json.loads(line) for line in (tmp_path / "snapshots.jsonl").read_text().splitlines()]
    mid_trial = [s for s in snapshots if any(0 < epoch < 6 for epoch in s["received"].values())]
    assert mid_trial, snapshots  # Tune saved snapshots while trials trained
    for snapshot in snapshots:
        assert all(snapshot["logged"].get(tid, 0) >= epoch for tid, epoch in snapshot["received"].items()), snapshot
