"""A lost process or node does not use up a trial's retries; its own failures do.

Driven through a real local Ray and a real Tuner: the trainable kills its own process
(``os._exit``, which Ray reports as a dead actor, exactly as when a node is lost) or raises.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray
from ray import tune

from ray.tune.execution.tune_controller import TuneController

from hpsearch.search import retries
from hpsearch.search.retries import NodeLossRetries

# Ray's workers cannot import a test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _fails_then_trains(config):
    counter = Path(config["counter"])
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    if attempt <= config["failures"]:
        if config["how"] == "process dies":
            os._exit(1)
        raise ValueError("a bug in the trial")
    tune.report({"score": 1.0})


def _run(tmp_path: Path, how: str, callbacks: list) -> tuple[str, int]:
    counter = tmp_path / "attempts"
    tuner = tune.Tuner(
        _fails_then_trains,
        param_space={"counter": str(counter), "failures": 3, "how": how},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="retries", verbose=0,
                                  callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    result = tuner.fit()[0]
    return ("failed" if result.error else "finished"), int(counter.read_text())


@pytest.mark.parametrize("how, refunds, expected", [
    # without the callback: a lost process uses the single retry, then the trial fails (the bug)
    ("process dies", None, ("failed", 2)),
    # with it: three lost processes, none counted, the fourth attempt trains
    ("process dies", 8, ("finished", 4)),
    # refunds are capped: the first is given back, the next two count, the trial fails
    ("process dies", 1, ("failed", 3)),
    # the trial's own error counts as before: one retry, then failed
    ("raises", 8, ("failed", 2)),
])
def test_lost_processes_do_not_use_up_retries(local_ray, tmp_path, how, refunds, expected):
    callbacks = [] if refunds is None else [NodeLossRetries(max_refunds=refunds, first_wait_s=0.05, max_wait_s=0.2)]
    assert _run(tmp_path, how, callbacks) == expected


def test_waits_double_up_to_the_cap():
    assert NodeLossRetries(max_refunds=5, first_wait_s=1, max_wait_s=5).waits() == [1, 2, 4, 5, 5]
    with pytest.raises(ValueError, match="max_refunds"):
        NodeLossRetries(max_refunds=-1)


class _DiesInFirstReset(tune.Trainable):
    """One epoch per trial; the first ``reset`` (a cached actor reused for the next trial)
    kills the actor's process, as a lost node does to an actor cached on it, or raises."""

    def step(self):
        return {"score": 1.0, "done": True}

    def save_checkpoint(self, checkpoint_dir):
        return None

    def load_checkpoint(self, checkpoint):
        pass

    def reset_config(self, new_config):
        marker = Path(new_config["marker"])
        if not marker.exists():
            marker.write_text("failed")
            if new_config["how"] == "process dies":
                os._exit(1)
            raise ValueError("a bug in reset_config")
        return True


@pytest.mark.parametrize("how, fixed", [
    # Ray's own handling: the second trial ends failed, never retried
    ("process dies", False), ("raises", False),
    # with retry_failed_actor_reuse (NodeLossRetries installs it): retried, and it trains
    ("process dies", True), ("raises", True),
])
def test_a_reused_actor_failing_before_the_trial_started_is_retried(local_ray, tmp_path, monkeypatch, how, fixed):
    if not fixed:
        monkeypatch.setattr(TuneController, "_trial_task_failure", retries.TUNE_TRIAL_TASK_FAILURE)
    callbacks = [NodeLossRetries(first_wait_s=0.05, max_wait_s=0.2)] if fixed else []
    tuner = tune.Tuner(
        _DiesInFirstReset,
        param_space={"marker": str(tmp_path / "reset-failed"), "how": how},
        tune_config=tune.TuneConfig(num_samples=2, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="reuse", verbose=0, callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    results = tuner.fit()
    assert (tmp_path / "reset-failed").exists()  # the reused actor's reset did fail
    failed = [r for r in results if r.error]
    assert (len(failed) == 0) if fixed else (len(failed) == 1), [str(r.error)[:300] for r in failed]
