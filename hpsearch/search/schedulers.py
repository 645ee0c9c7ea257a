"""When a search stops a trial: ASHA on epochs (the default), ASHA across cross-validation
folds, Hyperband, BOHB's Hyperband, or nothing (FIFO).

Ray's Hyperband and BOHB are used through :class:`RoundsHyperBand` and :class:`RoundsBOHB`,
which keep judging a bracket after its first round (see :class:`_EveryRound`).
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandForBOHB, HyperBandScheduler, TrialScheduler

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


class _EveryRound:
    """Judge a Hyperband bracket whenever a round is done, however its last trial got there.

    Ray (2.60) judges a bracket when a trial reaches the round's milestone, or when a trial
    leaves it (ends on its own: its ``epochs`` cap, a diverged run, an error) through
    ``on_trial_remove``. That second path skips two cases, and in both the trials paused at
    the milestone wait forever, and so does the search ("No trial is running and no new trial
    has been started"):

    * the bracket is ``finished()`` (its last round: every remaining trial reached the last
      milestone, which is below ``max_t`` unless ``max_t`` is the first milestone times a
      power of ``reduction_factor``: 18 for 20 and 3, so they are paused, not done): nothing
      stops the paused trials;
    * ``bracket.is_being_processed``: a guard against judging again from inside a judgement
      (stopping a paused loser calls ``on_trial_remove``; ray PR #36568), which Ray sets at
      the bracket's first halving and never clears: no later round is judged on a removal.

    Here the guard holds while a judgement runs only, a removal always judges, and a finished
    bracket also stops the trials still saving their pause checkpoint (Ray stops only those
    already ``PAUSED``).
    """

    def _process_bracket(self, tune_controller, bracket) -> str:
        bracket.is_being_processed = True  # removals it causes (stopped losers) only leave the bracket
        try:
            if bracket.cur_iter_done() and bracket.finished():
                for trial in bracket.current_trials():
                    if trial.status == Trial.PAUSED or trial.is_saving:
                        tune_controller.stop_trial(trial)
                return TrialScheduler.STOP  # the trial that reported, if any, is done too
            return super()._process_bracket(tune_controller, bracket)
        finally:
            bracket.is_being_processed = False

    def on_trial_remove(self, tune_controller, trial) -> None:
        bracket, _ = self._trial_info[trial]
        bracket.cleanup_trial(trial)
        if not bracket.is_being_processed:
            self._process_bracket(tune_controller, bracket)


class RoundsHyperBand(_EveryRound, HyperBandScheduler):
    """Ray's ``HyperBandScheduler`` that does not hang when a trial ends between milestones."""


class RoundsBOHB(_EveryRound, HyperBandForBOHB):
    """Ray's ``HyperBandForBOHB`` judging a bracket as soon as a trial ending on its own
    completes a round (Ray's own BOHB waits until no trial of the search runs at all)."""


def scheduler_for(job, folds: int) -> TrialScheduler:
    """The job's scheduler on epochs, or on the fold-aware budget when it cross-validates."""
    cfg, search = job.scheduler, job.search
    if cfg.type in ("hyperband", "bohb") and folds > 1 and search.cross_validation != "off":
        raise HpsearchError(f"scheduler.type: {cfg.type} does not schedule folds; choose asha, or set "
                            "search.cross_validation: off")
    if cfg.type == "hyperband":
        return RoundsHyperBand(time_attr="training_iteration", max_t=cfg.max_epochs,
                               reduction_factor=cfg.reduction_factor)
    if cfg.type == "bohb":
        return RoundsBOHB(time_attr="training_iteration", max_t=cfg.max_epochs, reduction_factor=cfg.reduction_factor)
    if cfg.type == "asha" and folds == 1:
        return ASHAScheduler(time_attr="training_iteration", max_t=cfg.max_epochs,
                             grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
    if cfg.type == "asha" and search.cross_validation == "fidelity":
        return FoldASHAScheduler(fold_rungs(cfg.grace_period, cfg.reduction_factor, cfg.max_epochs, folds),
                                 cfg.max_epochs, time_attr="budget", max_t=cfg.max_epochs * folds,
                                 grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
    return FIFOScheduler()
