"""Building, running and resuming a search: Ray Tune + Optuna + ASHA.

The driver side of ``hpsearch run`` / ``hpsearch resume``: everything is validated and
the data prepared *before* Ray starts; the Tuner gets Ray's ``OptunaSearch`` with a
seeded Optuna sampler, ``ASHAScheduler`` counting epochs (or Hyperband, or BOHB with its
own searcher), the :class:`~hpsearch.search.trainable.SegmentationTrainable` with the data
in the object store, and the MLflow callback. Ray keeps its state in the experiment folder
(:class:`~hpsearch.experiment.Experiment`), which ``Tuner.restore`` resumes from. Any other
trainable reporting the same keys can be given instead (the learning-curve replay of
:mod:`hpsearch.curves.replay`), so a benchmark measures the very searcher and scheduler a
job gets.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from hpsearch.data.preprocess import PreparedData
from hpsearch.errors import HpsearchError
from hpsearch.outcome import FAILURE_KEY
from hpsearch.search.folds import fold_rungs, objective_name
from hpsearch.search.trainable import SegmentationTrainable
from hpsearch.space import Choice, IntRange, LogUniform, to_optuna

_LOG = logging.getLogger(__name__)


def make_sampler(name: str, seed: int, num_trials: int, startup_trials: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``, seeded.

    TPE starts with ``startup_trials`` random proposals (default a quarter of the budget,
    2 to 10 trials), then models the joint distribution (``multivariate``): learning rate
    and decay interact.
    """
    if name == "tpe":
        startup = startup_trials or max(2, min(10, num_trials // 4))
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


class OutcomeOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` telling Optuna how a trial ended, not only its last value.

    * A failed trial (its last result carries ``hpsearch_failure`` and a NaN metric) is told
      ``FAIL``. Ray tells the NaN, Optuna refuses it, Ray logs a warning and the Optuna trial
      stays ``RUNNING`` for good (Ray 2.60, Optuna 5.1).
    * With ``prune_stopped`` (``search.stopped_trials: pruned``), a trial the scheduler stopped
      is told ``PRUNED``: Ray reports every epoch to the Optuna trial already
      (``trial.report``), so TPE ranks a stopped trial by how far it got and then by its
      intermediate values, below every trial that finished, instead of taking its last
      early value as final. Stopped early: fewer epochs than its ``epoch_cap``, no failure.
    """

    def __init__(self, *args, prune_stopped: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._prune_stopped = prune_stopped

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if error or not result or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if FAILURE_KEY in result:
            state = optuna.trial.TrialState.FAIL
        elif self._prune_stopped and result.get("training_iteration", 0) < result.get("epoch_cap", 0):
            state = optuna.trial.TrialState.PRUNED
        else:
            return super().on_trial_complete(trial_id, result, error)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
        except Exception as exc:  # as Ray does: a refused tell must not end the search
            _LOG.warning("Optuna refused %s for trial %s: %s", state.name, trial_id, exc)
        self._completed_trials.add(trial_id)


def build_tuner(
    job,
    space: dict[str, Any],
    data: list[PreparedData] | None,
    *,
    name: str,
    storage: str,
    callbacks: list[tune.Callback],
    trainable: Callable | None = None,
) -> tune.Tuner:
    """A Tuner for a validated job, its search space and its prepared data (one per fold).

    With several folds the search ranks by ``cv_<metric>`` and, for
    ``cross_validation: fidelity``, ASHA counts the fold-aware ``budget`` clock of
    :mod:`hpsearch.search.folds` up to ``folds x max_epochs``; ``mean`` trains every fold of
    every trial (no early stopping).

    Args:
        trainable: What runs a trial (default: :func:`trainable_for` the job and ``data``);
            e.g. :func:`hpsearch.curves.replay.replay_trainable`. With it, ``data`` may be
            ``None`` (one split).

    Raises:
        HpsearchError: ``scheduler.type`` hyperband or bohb with cross-validation, or bohb
            without its packages.
    """
    if trainable is None and data is None:
        raise ValueError("build_tuner needs the data or a trainable")
    search = job.search
    folds = len(data) if data else 1
    objective = objective_name(search.metric, folds)
    return tune.Tuner(
        trainable or trainable_for(job, data),
        tune_config=tune.TuneConfig(
            metric=objective,
            mode=search.mode,
            search_alg=_limited(_searcher(job, space, objective), job),
            scheduler=_scheduler(job, folds),
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


def _searcher(job, space: dict[str, Any], objective: str) -> Searcher:
    """Optuna with the job's sampler; BOHB's own model for ``scheduler.type: bohb``."""
    search = job.search
    if job.scheduler.type == "bohb":
        try:
            from ray.tune.search.bohb import TuneBOHB

            import ConfigSpace  # noqa: F401  (TuneBOHB imports it only when used)
            import hpbandster  # noqa: F401
        except ImportError:
            raise HpsearchError("scheduler.type: bohb needs the hpbandster and ConfigSpace packages, which are "
                                "not installed; run pip install 'hpsearch[bench]' or choose asha") from None
        return TuneBOHB(space=TuneBOHB.convert_search_space(_tune_domains(space)), metric=objective,
                        mode=search.mode, seed=search.seed)
    return OutcomeOptunaSearch(space=to_optuna(space), metric=objective, mode=search.mode,
                               sampler=make_sampler(search.sampler, search.seed, search.num_trials,
                                                    search.startup_trials),
                               prune_stopped=search.stopped_trials == "pruned")


def _limited(searcher: Searcher, job) -> Searcher:
    """The searcher, proposing at most ``search.max_concurrent`` trials ahead of their results.

    The limiter (not max_concurrent_trials) also caps how many proposals Optuna makes ahead
    of results, so TPE learns from finished trials. Not for Hyperband and BOHB: a trial they
    pause counts as live to the limiter, so a bracket never fills and nothing is ever paused
    or stopped (seen with Ray 2.60: every trial ran to its cap). Their brackets are proposed
    together, and how many run at once is what Ray's CPUs allow (``resources.cpus_per_trial``):
    Tune creates only one trial ahead of a searcher unless ``TUNE_MAX_PENDING_TRIALS_PG``
    says more, so it is set to the search's trials (unless the user set it).
    """
    if job.scheduler.type in ("hyperband", "bohb"):
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(job.search.num_trials))
        return searcher
    return ConcurrencyLimiter(searcher, max_concurrent=job.search.max_concurrent)


def _scheduler(job, folds: int) -> TrialScheduler:
    """The job's scheduler on epochs, or on the fold-aware budget when it cross-validates."""
    cfg, search = job.scheduler, job.search
    if cfg.type in ("hyperband", "bohb") and folds > 1 and search.cross_validation != "off":
        raise HpsearchError(f"scheduler.type: {cfg.type} does not schedule folds; choose asha, or set "
                            "search.cross_validation: off")
    if cfg.type == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=cfg.max_epochs,
                                  reduction_factor=cfg.reduction_factor)
    if cfg.type == "bohb":
        from ray.tune.schedulers import HyperBandForBOHB

        return HyperBandForBOHB(time_attr="training_iteration", max_t=cfg.max_epochs,
                                reduction_factor=cfg.reduction_factor)
    if cfg.type == "asha" and folds == 1:
        return ASHAScheduler(time_attr="training_iteration", max_t=cfg.max_epochs,
                             grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
    if cfg.type == "asha" and search.cross_validation == "fidelity":
        return FoldASHAScheduler(fold_rungs(cfg.grace_period, cfg.reduction_factor, cfg.max_epochs, folds),
                                 cfg.max_epochs, time_attr="budget", max_t=cfg.max_epochs * folds,
                                 grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
    return FIFOScheduler()


def _tune_domains(space: dict[str, Any]) -> dict[str, Any]:
    """The search space as Ray Tune domains (what BOHB's ConfigSpace conversion reads)."""
    out = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            out[name] = tune.choice(list(dist.values))
        elif isinstance(dist, IntRange):  # Tune's upper bounds are exclusive
            out[name] = (tune.lograndint if dist.log else tune.randint)(dist.low, dist.high + 1)
        else:
            out[name] = (tune.loguniform if isinstance(dist, LogUniform) else tune.uniform)(dist.low, dist.high)
    return out


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


def restore_tuner(experiment_dir: Path, job, data: list[PreparedData] | None,
                  trainable: Callable | None = None) -> tune.Tuner:
    """The Tuner of an interrupted search, with searcher and scheduler state.

    Failed trials stay failed; unfinished ones continue from their last checkpoint.
    ``trainable`` as in :func:`build_tuner`.
    """
    if not tune.Tuner.can_restore(str(experiment_dir)):
        raise HpsearchError(
            f"{experiment_dir}: no Ray Tune experiment state to resume; the search may not "
            "have started any trial"
        )
    return tune.Tuner.restore(
        str(experiment_dir), trainable=trainable or trainable_for(job, data), resume_unfinished=True, resume_errored=False
    )
