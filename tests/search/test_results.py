"""Summarising a real Ray Tune ResultGrid, including trials that never reported an epoch."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import ray
from ray import tune

from hpsearch.search.results import format_table, summarise

# Ray's workers cannot import a test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _fails_before_any_epoch(config):
    raise ValueError("boom in setup")


def test_a_trial_that_never_reported_is_a_failed_row_after_a_resume(tmp_path):
    # Ray gives such a trial config=None once the experiment is restored (a resume after an
    # interruption): the summary used to crash on it, leaving no results.json.
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        tune.Tuner(_fails_before_any_epoch, param_space={"learning_rate": tune.choice([0.1])},
                   tune_config=tune.TuneConfig(num_samples=1),
                   run_config=tune.RunConfig(name="e", storage_path=str(tmp_path), verbose=0)).fit()
        grid = tune.Tuner.restore(str(tmp_path / "e"), trainable=_fails_before_any_epoch,
                                  resume_errored=False).fit()
    finally:
        ray.shutdown()
    (result,) = grid
    assert result.config is None  # what Ray hands over
    (row,) = summarise(grid, "val_dice", "max")
    assert row.status == "failed" and row.params == {} and row.epochs_run == 0 and math.isnan(row.best_value)
    assert row.error and row.failure == "error" and row.checkpoint == ""  # Ray keeps only a generic text
    assert "failed (error)" in format_table([row], "val_dice")


def _crashes_once_then_trains(config):
    marker = Path(config["marker"])
    first = not marker.exists()
    marker.touch()
    for epoch, value in enumerate(config["first"] if first else config["second"], start=1):
        tune.report({"val_dice": value})
        if first and epoch == len(config["first"]):
            os._exit(1)  # the process dies: Ray retries the trial from scratch (no checkpoint)


def test_a_retrained_epoch_counts_once_and_as_retrained(local_ray, tmp_path):
    # The first attempt's epoch 2 (0.9) is gone with its process: the weights a trial keeps
    # and exports are the second attempt's. Its history used to hold both attempts' epochs,
    # and its best value the lost 0.9.
    config = {"marker": str(tmp_path / "crashed"), "first": [0.1, 0.9], "second": [0.2, 0.3, 0.4, 0.5]}
    grid = tune.Tuner(_crashes_once_then_trains, param_space=config,
                      run_config=tune.RunConfig(name="e", storage_path=str(tmp_path), verbose=0,
                                                failure_config=tune.FailureConfig(max_failures=1))).fit()
    (row,) = summarise(grid, "val_dice", "max")
    assert len(grid[0].metrics_dataframe) == 6  # what Ray keeps: both attempts
    assert [h["training_iteration"] for h in row.history] == [1, 2, 3, 4]
    assert [h["val_dice"] for h in row.history] == [0.2, 0.3, 0.4, 0.5]
    assert (row.best_value, row.best_epoch, row.epochs_run) == (0.5, 4, 4)
