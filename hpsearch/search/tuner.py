"""Building, running and resuming a search: Ray Tune + Optuna + ASHA.

The driver side of ``hpsearch run`` / ``hpsearch resume``: everything is validated and
the data prepared *before* Ray starts; the Tuner gets Ray's ``OptunaSearch`` with a
seeded Optuna sampler, ``ASHAScheduler`` counting epochs, the
:class:`~hpsearch.search.trainable.SegmentationTrainable` with the data in the object
store, and the MLflow callback. Ray keeps its state in the experiment folder
(:class:`~hpsearch.experiment.Experiment`), which ``Tuner.restore`` resumes from.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from hpsearch.data.preprocess import PreparedData
from hpsearch.errors import HpsearchError
from hpsearch.outcome import FAILURE_KEY
from hpsearch.search.folds import fold_rungs, objective_name
from hpsearch.search.trainable import SegmentationTrainable
from hpsearch.space import to_optuna


def make_sampler(name: str, seed: int, num_trials: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``, seeded.

    TPE starts with a quarter of the budget (2 to 10 trials) of random proposals, then
    models the joint distribution (``multivariate``): learning rate and decay interact.
    """
    if name == "tpe":
        startup = max(2, min(10, num_trials // 4))
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    if name == "gp":
        if importlib.util.find_spec("torch") is None:
            raise HpsearchError(
                "search.sampler: gp needs PyTorch, which is not installed; "
                "run pip install 'hpsearch[gp]' or choose tpe"
            )
        return optuna.samplers.GPSampler(seed=seed)
    raise HpsearchError(f"search.sampler: unknown sampler '{name}'")


class StudySearch(OptunaSearch):
    """Ray's ``OptunaSearch``, with the study holding what hpsearch records of each trial.

    Ray passes a trial's last result (its end, or ASHA's stop) to ``on_trial_complete`` only,
    so the study's curves would lack their last epoch (optuna-dashboard, warm starts): it is
    reported here first. A trial that ended with a failure (:data:`~hpsearch.outcome.FAILURE_KEY`)
    or a non-finite value is told FAIL: Ray would tell its NaN, which Optuna refuses, and the
    trial would stay RUNNING in the study for good.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trial = self._ot_trials.get(trial_id)
        if not result or trial is None or trial_id in self._completed_trials or isinstance(self.metric, list):
            return super().on_trial_complete(trial_id, result, error)
        value, step = result.get(self.metric), result.get("training_iteration")
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if finite and isinstance(step, int):
            trial.report(value, step)
        if finite and not result.get(FAILURE_KEY):
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)


class FoldASHAScheduler(ASHAScheduler):
    """Ray's ASHA on the ``budget`` clock of :mod:`hpsearch.search.folds`: its own rungs and
    promotion rule inside fold 0, and a decision at every fold boundary after it.

    Inside fold 0, trials at the same epoch are compared, as in a single-split search (Ray
    builds geometric milestones in its private ``_Bracket``; they are replaced by the epoch
    rungs of :func:`~hpsearch.search.folds.fold_rungs`, a list of ``(milestone, recorded)``
    pairs, highest first; ``tests/search/test_folds.py`` checks that this still holds).

    At a fold boundary, a trial's mean over its ``n`` folds goes on to fold ``n + 1`` only if
    it is in the top ``1 / reduction_factor`` of the latest fold means of every other trial
    that finished fold 0. A mean over 1 fold and a mean over 3 folds estimate the same thing,
    the configuration's cross-validated Dice (with different noise), so one pool serves every
    fold boundary: a trial that was let through early, when few others had finished fold 0,
    is stopped at its next boundary once better ones have. (Epochs could not be pooled so:
    more epochs means a higher Dice.)
    """

    def __init__(self, rungs: list[float], fold_width: int, **kwargs):
        super().__init__(**kwargs)
        self._fold_width = fold_width
        for bracket in self._brackets:
            bracket._rungs = [(m, {}) for m in sorted((r for r in rungs if r < fold_width), reverse=True)]
        self._fold_means: dict[str, float] = {}  # each trial's latest mean over its finished folds
        self._decided: dict[str, int] = {}       # folds at which a trial was last judged

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        budget = result.get(self._time_attr)
        if budget is None or self._metric not in result or budget < self._fold_width:
            return super().on_trial_result(tune_controller, trial, result)
        if budget >= self._max_t:
            return TrialScheduler.STOP  # every fold done (the trial reports done itself too)
        folds = int(budget // self._fold_width)
        if self._decided.get(trial.trial_id, 0) >= folds:
            return TrialScheduler.CONTINUE  # the next fold is training: the budget is held
        self._decided[trial.trial_id] = folds
        value = self._metric_op * result[self._metric]
        others = [v for t, v in self._fold_means.items() if t != trial.trial_id and math.isfinite(v)]
        self._fold_means[trial.trial_id] = value
        if others and not value >= np.percentile(others, (1 - 1 / self._reduction_factor) * 100):
            self._num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def build_tuner(
    job,
    space: dict[str, Any],
    data: list[PreparedData],
    *,
    name: str,
    storage: str,
    callbacks: list[tune.Callback],
    study: dict[str, Any] | None = None,
) -> tune.Tuner:
    """A Tuner for a validated job, its search space and its prepared data (one per fold).

    ``study`` (``storage`` and ``study_name``) is where ``OptunaSearch`` keeps its Optuna
    study (:mod:`hpsearch.search.study`): it loads a study that exists, with every trial it
    holds, and reports each epoch's value to it; without one the study lives in memory.

    With several folds the search ranks by ``cv_<metric>`` and, for
    ``cross_validation: fidelity``, ASHA counts the fold-aware ``budget`` clock of
    :mod:`hpsearch.search.folds` up to ``folds x max_epochs``; ``mean`` trains every fold of
    every trial (no early stopping).
    """
    search, scheduler_cfg = job.search, job.scheduler
    folds = len(data)
    objective = objective_name(search.metric, folds)
    searcher = StudySearch(
        space=to_optuna(space),
        metric=objective,
        mode=search.mode,
        sampler=make_sampler(search.sampler, search.seed, search.num_trials),
        **(study or {}),
    )
    if scheduler_cfg.type == "asha" and folds == 1:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=scheduler_cfg.max_epochs,
            grace_period=scheduler_cfg.grace_period,
            reduction_factor=scheduler_cfg.reduction_factor,
        )
    elif scheduler_cfg.type == "asha" and search.cross_validation == "fidelity":
        scheduler = FoldASHAScheduler(
            fold_rungs(scheduler_cfg.grace_period, scheduler_cfg.reduction_factor, scheduler_cfg.max_epochs, folds),
            scheduler_cfg.max_epochs,
            time_attr="budget",
            max_t=scheduler_cfg.max_epochs * folds,
            grace_period=scheduler_cfg.grace_period,
            reduction_factor=scheduler_cfg.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable_for(job, data),
        tune_config=tune.TuneConfig(
            metric=objective,
            mode=search.mode,
            # The limiter (not max_concurrent_trials) also caps how many proposals
            # Optuna makes ahead of results, so TPE learns from finished trials.
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
            scheduler=scheduler,
            num_samples=search.num_trials,
            reuse_actors=True,
            trial_name_creator=lambda trial: f"trial_{trial.trial_id}",
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(
                # Two, not one: Ray has let experiment state point at a just-deleted
                # checkpoint (ray#30073). Across folds the latest is the one to keep: it
                # holds every finished fold's model.
                num_to_keep=2,
                checkpoint_score_attribute=search.metric if folds == 1 else None,
                checkpoint_score_order=search.mode,
                checkpoint_frequency=1,
            ),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
        ),
    )


def trainable_for(job, data: list[PreparedData]) -> Callable:
    """The trainable with the job's constants bound and the data (one per fold) in the object store."""
    bound = tune.with_parameters(
        SegmentationTrainable,
        data=data,
        model=job.model,
        base_params=job.params_for(data[0].info),
        augment=job.augment.model_dump(),
        runtime=job.runtime.model_dump(),
        max_epochs=job.scheduler.max_epochs,
        metric=job.search.metric,
        mode=job.search.mode,
    )
    resources = {"cpu": job.resources.cpus_per_trial, "gpu": job.resources.gpus_per_trial}
    return tune.with_resources(bound, resources)


def restore_tuner(experiment_dir: Path, job, data: list[PreparedData]) -> tune.Tuner:
    """The Tuner of an interrupted search, with searcher and scheduler state.

    Failed trials stay failed; unfinished ones continue from their last checkpoint.
    """
    if not tune.Tuner.can_restore(str(experiment_dir)):
        raise HpsearchError(
            f"{experiment_dir}: no Ray Tune experiment state to resume; the search may not "
            "have started any trial"
        )
    return tune.Tuner.restore(
        str(experiment_dir), trainable=trainable_for(job, data), resume_unfinished=True, resume_errored=False
    )
