"""When a search stops a trial: ASHA on epochs (the default), ASHA across cross-validation
folds, Hyperband, BOHB's Hyperband, or nothing (FIFO).
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, TrialScheduler

from hpsearch.errors import HpsearchError
from hpsearch.search.folds import fold_rungs


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


def scheduler_for(job, folds: int) -> TrialScheduler:
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
