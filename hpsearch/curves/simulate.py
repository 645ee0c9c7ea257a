"""One replayed search through the real machinery: what a benchmark or a test runs.

:func:`replay_search` is ``hpsearch run`` with the training replaced by a learning-curve
table: the same :func:`~hpsearch.search.tuner.build_tuner` (Tuner, OptunaSearch or BOHB,
ConcurrencyLimiter, ASHA/Hyperband), the same :class:`~hpsearch.tracking.tracker.MLflowTracker`
into a real MLflow store, the same :func:`~hpsearch.search.results.summarise`. It adds a
:class:`ResultLog` callback that keeps every result in the order the driver received it,
which is how a benchmark counts compute: epochs summed over all trials, in arrival order.

Ray must be running (:func:`hpsearch.search.local_ray.init_ray`); one Ray serves any number
of searches.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from ray import tune

from hpsearch.curves.replay import ROW_KEY, replay_trainable
from hpsearch.curves.table import CurveTable
from hpsearch.search import results as results_mod
from hpsearch.search.interrupt import interruptible
from hpsearch.search.progress import SearchProgress
from hpsearch.search.tuner import build_tuner
from hpsearch.tracking.runs import start_search_run
from hpsearch.tracking.tracker import MLflowTracker


@dataclasses.dataclass(frozen=True)
class Arrival:
    """One result as the driver received it."""

    trial_id: str
    epoch: int
    val_dice: float
    row: int | None  # the table row that answered; None on a failed row
    restored: bool   # the trial was paused (or failed) and continued from its checkpoint


class ResultLog(tune.Callback):
    """Every trial result in the order the driver received it (Tune's callbacks run in that order)."""

    def __init__(self):
        self.arrivals: list[Arrival] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.arrivals.append(Arrival(trial.trial_id, int(result.get("training_iteration", 0)),
                                     float(result.get("val_dice", float("nan"))), result.get(ROW_KEY),
                                     result.get("iterations_since_restore", 0) < result.get("training_iteration", 0)))


@dataclasses.dataclass
class ReplayedSearch:
    """What one replayed search did.

    Attributes:
        arrivals: Every result, in arrival order.
        rows: :func:`~hpsearch.search.results.summarise` of the search, best first.
        parent_run_id: The search's MLflow parent run.
        experiment_id: Its MLflow experiment.
        seconds: Wall time of ``Tuner.fit``.
    """

    arrivals: list[Arrival]
    rows: list[results_mod.TrialSummary]
    parent_run_id: str
    experiment_id: str
    seconds: float


def replay_search(table: CurveTable, job, space: dict[str, Any], *, storage: Path, tracking_uri: str, name: str,
                  time_scale: float = 0.0, echo: Callable[[str], None] | None = None,
                  send_interval_s: float = 1.0, study: dict[str, Any] | None = None) -> ReplayedSearch:
    """Run the job's search against ``table``; trials are child runs of a new parent run ``name``.

    Args:
        table: The recorded curves the trials answer from.
        job: A validated :class:`~hpsearch.spec.Job` (its search, scheduler and resources).
        space: The parsed search space (:func:`hpsearch.space.load_space`).
        storage: Folder for Ray Tune's experiment state and checkpoints.
        tracking_uri: MLflow store (e.g. ``sqlite:///.../mlflow.db``).
        name: The search's name (Ray experiment and MLflow parent run).
        time_scale: Seconds slept per recorded second of an epoch.
        echo: Where :class:`~hpsearch.search.progress.SearchProgress` writes (None: no progress).
        send_interval_s: The tracker sends each trial's queued epochs together at most this
            often (one ``log_batch`` each), as in ``hpsearch run``; 0: a write per epoch.
        study: Where the searcher keeps its Optuna study (``storage``, ``study_name``), as
            :func:`~hpsearch.search.tuner.build_tuner` takes it: a study that already holds
            trials warm-starts the search (what ``search.warm_start`` does for ``hpsearch run``).

    Raises:
        HpsearchError: The table cannot answer the job (see :func:`~hpsearch.curves.replay.check_replayable`).
    """
    trainable = replay_trainable(table, job, time_scale=time_scale)
    experiment = job.tracking.experiment or job.name
    parent = start_search_run(tracking_uri, experiment, run_name=name, tags={"hpsearch.replay_table": table.name},
                              params={"sampler": job.search.sampler, "scheduler": job.scheduler.type,
                                      "num_trials": job.search.num_trials, "seed": job.search.seed})
    experiment_id = MlflowClient(tracking_uri).get_run(parent).info.experiment_id
    metric, mode = job.search.metric, job.search.mode
    log = ResultLog()
    callbacks: list[tune.Callback] = [
        MLflowTracker(tracking_uri, experiment_id, parent, metric=metric, mode=mode, max_epochs=job.scheduler.max_epochs,
                      send_interval_s=send_interval_s),
        log]
    if echo is not None:
        callbacks.append(SearchProgress(job.search.num_trials, metric, mode, echo, live=False))
    tuner = build_tuner(job, space, None, name=name, storage=str(storage), callbacks=callbacks, trainable=trainable,
                         study=study)
    started = time.perf_counter()
    with interruptible() as stop:
        grid = tuner.fit()
    if stop.signal is not None:  # Tune returned a cut search as if it had ended: not a result
        raise KeyboardInterrupt
    seconds = time.perf_counter() - started
    return ReplayedSearch(log.arrivals, results_mod.summarise(grid, metric, mode), parent, experiment_id, seconds)
