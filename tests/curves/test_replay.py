"""The replay trainable through the real Tuner, OptunaSearch, ConcurrencyLimiter, ASHA and
Hyperband on a local Ray, with the real MLflowTracker writing into a real sqlite store."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import ray
from mlflow import MlflowClient
from ray import tune

from hpsearch.curves import CurveTable, synthetic_table
from hpsearch.curves.replay import ReplayTrainable, replay_trainable
from hpsearch.curves.simulate import replay_search
from hpsearch.errors import HpsearchError
from hpsearch.search.searchers import StudySearch
from hpsearch.search.tuner import build_tuner
from hpsearch.space import parse_space, to_optuna
from hpsearch.spec import load_job
from hpsearch.tracking.runs import SearchRuns

# Ray's workers cannot import a test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

DEMO = Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml"
SPACE = {"learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
         "norm": {"type": "choice", "values": ["none", "batch"]},
         "epochs": {"type": "int", "low": 3, "high": 6}}
MAX_EPOCHS = 6


@pytest.fixture(scope="module")
def table() -> CurveTable:
    """40 synthetic curves of 6 epochs; rows with a learning rate above 5e-3 end after epoch 2 (diverged)."""
    base = synthetic_table(SPACE, rows=40, max_epochs=MAX_EPOCHS, seed=3)
    dice, loss = base.val_dice.copy(), base.val_loss.copy()
    diverged = [i for i, c in enumerate(base.configs) if c["learning_rate"] > 5e-3]
    dice[diverged, 2:] = loss[diverged, 2:] = np.nan
    return CurveTable("test", SPACE, base.configs, val_dice=dice, val_loss=loss, epoch_seconds=base.epoch_seconds)


def _job(*overrides: str):
    return load_job(DEMO, [f"scheduler.max_epochs={MAX_EPOCHS}", "scheduler.grace_period=1",
                           "scheduler.reduction_factor=2", "search.num_trials=8", *overrides])


def _search(tmp_path, table, job, name="replay"):
    return replay_search(table, job, parse_space(SPACE, "unet", "space.yaml"), storage=tmp_path / "ray",
                         tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", name=name, time_scale=0.001)


def _signature(search):
    """What a search did, trial by trial in the order their first results arrived (trial ids are random)."""
    first = {}
    for arrival in search.arrivals:
        first.setdefault(arrival.trial_id, len(first))
    return [(row.params["learning_rate"], row.params["norm"], row.params["epochs"], row.epochs_run, row.status)
            for row in sorted(search.rows, key=lambda r: first[r.trial_id])]


@pytest.mark.parametrize("scheduler", ["asha", "hyperband"])  # hyperband pauses and resumes trials
def test_trials_report_the_table_and_reach_mlflow_once(local_ray, tmp_path, table, scheduler):
    search = _search(tmp_path, table, _job(f"scheduler.type={scheduler}"))
    client, runs = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), SearchRuns(
        f"sqlite:///{tmp_path}/mlflow.db", search.parent_run_id)
    children = {run.data.tags["hpsearch.trial_id"]: run for run in runs.children()}
    assert len(search.rows) == len(children) == 8
    statuses = set()
    for row in search.rows:
        expected = table.curve(table.nearest(row.params), row.params["epochs"])["val_dice"]
        child = children[row.trial_id]
        history = client.get_metric_history(child.info.run_id, "val_dice")
        steps = [m.step for m in history]
        assert steps == list(range(1, row.epochs_run + 1))  # none lost, none twice, in order
        logged = [m.value for m in sorted(history, key=lambda m: m.step)]
        if row.status == "failed":  # the recorded run ended: one more result, the failure row
            assert row.failure == "nan" and row.epochs_run == len(expected) + 1 < row.epoch_cap
            assert math.isnan(logged[-1]) and logged[:-1] == pytest.approx(expected.tolist())
        else:
            assert logged == pytest.approx(expected[: row.epochs_run].tolist())
            assert row.best_value == pytest.approx(float(np.max(expected[: row.epochs_run])))
        assert child.data.tags["hpsearch.status"] == row.status
        statuses.add(row.status)
    assert len(search.arrivals) == sum(r.epochs_run for r in search.rows)
    # the test means something only if trials ran to the cap and were stopped early or paused
    assert statuses >= {"completed", "stopped_early"} if scheduler == "asha" else "completed" in statuses
    if scheduler == "hyperband":
        assert any(a.restored for a in search.arrivals)  # a paused trial went on from its checkpoint


def test_the_same_seed_replays_the_same_search(local_ray, tmp_path, table):
    # One trial at a time: with more, which result arrives first is up to Ray's timing.
    job = _job("search.max_concurrent=1", "search.seed=7")
    first = _search(tmp_path / "a", table, job)
    again = _search(tmp_path / "b", table, job)
    other = _search(tmp_path / "c", table, _job("search.max_concurrent=1", "search.seed=8"))
    assert _signature(first) == _signature(again)
    assert [a.epoch for a in first.arrivals] == [a.epoch for a in again.arrivals]
    assert _signature(first) != _signature(other)


def test_a_restored_trial_continues_its_curve(local_ray, tmp_path, table):
    config = {"learning_rate": 1e-3, "norm": "batch", "epochs": 6}
    bound = tune.with_parameters(ReplayTrainable, table=table, max_epochs=MAX_EPOCHS)
    trainable = bound(config)
    seen = [trainable.train()["val_dice"] for _ in range(3)]
    checkpoint = trainable.save(str(tmp_path / "ckpt"))
    restored = bound(config)
    restored.restore(checkpoint)
    fourth = restored.train()
    curve = table.curve(table.nearest(config))["val_dice"]
    assert seen + [fourth["val_dice"]] == pytest.approx(curve[:4].tolist())
    assert fourth["best_val_dice"] == pytest.approx(float(curve[:4].max()))
    assert restored.reset_config({**config, "learning_rate": 2e-4})
    assert restored.train()["val_dice"] == pytest.approx(table.curve(table.nearest({**config, "learning_rate": 2e-4}))
                                                         ["val_dice"][0])


@pytest.mark.parametrize("overrides, message", [
    (["scheduler.max_epochs=8", "scheduler.grace_period=1"], "scheduler.max_epochs: 8 exceeds the 6 epochs"),
    (["search.metric=val_iou"], "search.metric: val_iou is not in table test"),
])
def test_a_search_the_table_cannot_answer_is_refused_in_one_line(table, overrides, message):
    job = load_job(DEMO, [f"scheduler.max_epochs={MAX_EPOCHS}", *overrides])
    with pytest.raises(HpsearchError, match=message) as error:
        replay_trainable(table, job)
    assert "\n" not in str(error.value)


def test_hyperband_and_bohb_do_not_schedule_folds(table):
    job = _job("scheduler.type=hyperband")
    with pytest.raises(HpsearchError, match="scheduler.type: hyperband does not schedule folds"):
        build_tuner(job, parse_space(SPACE, "unet", "s"), [None, None], name="x", storage="/nonexistent",
                    callbacks=[], trainable=replay_trainable(table, job))


@pytest.mark.skipif(__import__("importlib").util.find_spec("hpbandster") is not None, reason="hpbandster installed")
def test_bohb_without_its_packages_says_what_to_install(table):
    job = _job("scheduler.type=bohb")
    with pytest.raises(HpsearchError, match=r"pip install 'hpsearch\[bench\]'"):
        build_tuner(job, parse_space(SPACE, "unet", "s"), None, name="x", storage="/nonexistent", callbacks=[],
                    trainable=replay_trainable(table, job))


@pytest.mark.parametrize("prune_stopped, last, state", [
    (True, {"val_dice": 0.3, "training_iteration": 2, "epoch_cap": 6}, optuna.trial.TrialState.PRUNED),  # stopped
    (False, {"val_dice": 0.3, "training_iteration": 2, "epoch_cap": 6}, optuna.trial.TrialState.COMPLETE),
    (True, {"val_dice": 0.8, "training_iteration": 6, "epoch_cap": 6}, optuna.trial.TrialState.COMPLETE),  # ran to cap
    # failed: Ray's own OptunaSearch leaves it RUNNING (Optuna refuses the NaN)
    (False, {"val_dice": math.nan, "training_iteration": 3, "epoch_cap": 6, "hpsearch_failure": "nan"},
     optuna.trial.TrialState.FAIL),
])
def test_optuna_is_told_how_a_trial_ended(prune_stopped, last, state):
    space = parse_space({"learning_rate": SPACE["learning_rate"]}, "unet", "s")
    searcher = StudySearch(space=to_optuna(space), metric="val_dice", mode="max",
                                   sampler=optuna.samplers.RandomSampler(seed=0), prune_stopped=prune_stopped)
    searcher.suggest("t1")
    for step in range(1, last["training_iteration"] + 1):
        searcher.on_trial_result("t1", {**last, "training_iteration": step})
    searcher.on_trial_complete("t1", last)
    (trial,) = searcher._ot_study.get_trials()
    assert trial.state == state
    assert sorted(trial.intermediate_values) == list(range(1, last["training_iteration"] + 1))


class CheckpointLog(tune.Callback):
    """Each checkpoint Tune registers: trial id and epoch, appended to a file."""

    def __init__(self, path: Path):
        self.path = path

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        with self.path.open("a") as out:
            out.write(f"{trial.trial_id} {trial.last_result['training_iteration']}\n")


def _due_epochs(seconds: list[float], interval: float, epochs_run: int) -> list[int]:
    """Where CheckpointClock should save: once `interval` recorded seconds passed, and at the end."""
    due, since = [], 0.0
    for epoch, spent in enumerate(seconds[:epochs_run], start=1):
        since += spent
        if since >= interval:
            due.append(epoch)
            since = 0.0
    return due if due[-1:] == [epochs_run] else [*due, epochs_run]


@pytest.mark.parametrize("interval", [0.0, 15.0, 86_400.0])  # every epoch, every 2nd (~9 s epochs), at the end
def test_trials_checkpoint_after_their_training_interval_and_when_they_end(local_ray, tmp_path, table, interval):
    job = _job(f"storage.checkpoint_interval_s={interval}", "search.max_concurrent=1")
    log = tmp_path / "checkpoints.txt"
    tuner = build_tuner(job, parse_space(SPACE, "unet", "space.yaml"), None, name="checkpoints",
                        storage=str(tmp_path / "ray"), callbacks=[CheckpointLog(log)],
                        trainable=replay_trainable(table, job, time_scale=0.001))
    grid = tuner.fit()
    saved: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        trial_id, epoch = line.split()
        saved.setdefault(trial_id, []).append(int(epoch))
    stopped = 0
    for result in grid:
        last = result.metrics
        epochs_run, row = last["training_iteration"], table.nearest(result.config)
        stopped += epochs_run < last["epoch_cap"] and "hpsearch_failure" not in last  # ASHA's: saved at its stop
        expected = _due_epochs(table.epoch_seconds[row].tolist(), interval, epochs_run)
        assert saved[last["trial_id"]] == expected, (interval, result.config)
        assert result.checkpoint is not None  # the latest, which export takes
    assert stopped  # the test means something only if ASHA stopped a trial
