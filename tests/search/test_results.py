"""Summarising a real Ray Tune ResultGrid, including trials that never reported an epoch."""

from __future__ import annotations

import math

import ray
from ray import tune

from hpsearch.search.results import format_table, summarise


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
