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
from pathlib import Path
from typing import Any, Callable

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from hpsearch.data.preprocess import PreparedData
from hpsearch.errors import HpsearchError
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


class FoldASHAScheduler(ASHAScheduler):
    """Ray's ASHA with the rungs of :func:`~hpsearch.search.folds.fold_rungs` on the ``budget``
    clock: its promotion rule, bookkeeping and checkpointed state, only the milestones set.

    Ray builds geometric milestones in ``_Bracket``; they are replaced here (the one place
    that touches that private structure, a list of ``(milestone, recorded)`` pairs, highest
    first; ``tests/search/test_folds.py`` checks it still holds).
    """

    def __init__(self, rungs: list[float], **kwargs):
        super().__init__(**kwargs)
        for bracket in self._brackets:
            bracket._rungs = [(milestone, {}) for milestone in sorted(rungs, reverse=True)]


def build_tuner(
    job,
    space: dict[str, Any],
    data: list[PreparedData],
    *,
    name: str,
    storage: str,
    callbacks: list[tune.Callback],
) -> tune.Tuner:
    """A Tuner for a validated job, its search space and its prepared data (one per fold).

    With several folds the search ranks by ``cv_<metric>`` and, for
    ``cross_validation: fidelity``, ASHA counts the fold-aware ``budget`` clock of
    :mod:`hpsearch.search.folds` up to ``folds x max_epochs``; ``mean`` trains every fold of
    every trial (no early stopping).
    """
    search, scheduler_cfg = job.search, job.scheduler
    folds = len(data)
    objective = objective_name(search.metric, folds)
    searcher = OptunaSearch(
        space=to_optuna(space),
        metric=objective,
        mode=search.mode,
        sampler=make_sampler(search.sampler, search.seed, search.num_trials),
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
