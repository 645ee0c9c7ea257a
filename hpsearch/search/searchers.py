"""What proposes a search's configurations: a seeded Optuna sampler inside Ray's
``OptunaSearch`` (or BOHB's own model), kept to ``max_concurrent`` proposals ahead of results.

Example:
    >>> type(make_sampler("tpe", seed=0, num_trials=16)).__name__
    'TPESampler'
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from typing import Any

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from hpsearch.errors import HpsearchError
from hpsearch.outcome import FAILURE_KEY
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


class StudySearch(OptunaSearch):
    """Ray's ``OptunaSearch`` telling its study each trial's whole curve and how it ended.

    * Ray passes a trial's last result (its end, or the scheduler's stop) to
      ``on_trial_complete`` only, so the study's curves would lack their last epoch
      (optuna-dashboard, warm starts): it is reported here first.
    * A failed trial (its last result carries ``hpsearch_failure``, or a non-finite value) is
      told ``FAIL``. Ray tells the NaN, Optuna refuses it, Ray logs a warning and the Optuna
      trial stays ``RUNNING`` for good (Ray 2.60, Optuna 5).
    * With ``prune_stopped`` (``search.stopped_trials: pruned``), a trial the scheduler stopped
      (fewer epochs than its ``epoch_cap``, no failure) is told ``PRUNED``: TPE then ranks it
      by how far it got and by its intermediate values, below every trial that finished,
      instead of taking its last early value as final.
    * A trial the study has finished already is left alone. A search resumed after its driver
      was killed starts from Ray's last experiment snapshot, taken every 10 s or more (trials
      checkpoint by time, :mod:`hpsearch.search.checkpointing`); a trial that ended
      after it runs again, but the study lives in a journal file that is never rolled back,
      and Optuna refuses any update of a finished trial.
    """

    def __init__(self, *args, prune_stopped: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._prune_stopped = prune_stopped

    def _finished_in_study(self, trial_id: str) -> bool:
        trial = self._ot_trials.get(trial_id)
        if trial is None or trial_id in self._completed_trials:
            return False
        if trial.storage.get_trial(trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict):
        try:  # no study read per result: only a rerun trial's report is refused
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self._finished_in_study(trial_id):
            return
        trial = self._ot_trials.get(trial_id)
        if error or not result or trial is None or trial_id in self._completed_trials or isinstance(self.metric, list):
            return super().on_trial_complete(trial_id, result, error)
        value, step = result.get(self.metric), result.get("training_iteration")
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if finite and isinstance(step, int):
            trial.report(value, step)
        if not finite or result.get(FAILURE_KEY):
            state = optuna.trial.TrialState.FAIL
        elif self._prune_stopped and (step or 0) < result.get("epoch_cap", 0):
            state = optuna.trial.TrialState.PRUNED
        else:
            return super().on_trial_complete(trial_id, result, error)
        try:
            self._ot_study.tell(trial, state=state)
        except Exception as exc:  # as Ray does: a refused tell must not end the search
            _LOG.warning("Optuna refused %s for trial %s: %s", state.name, trial_id, exc)
        self._completed_trials.add(trial_id)


def searcher_for(job, space: dict[str, Any], objective: str, study: dict[str, Any] | None = None) -> Searcher:
    """Optuna with the job's sampler, keeping its study in ``study`` (``storage`` and
    ``study_name``; in memory without); BOHB's own model for ``scheduler.type: bohb``."""
    search = job.search
    if job.scheduler.type == "bohb":
        try:
            from ray.tune.search.bohb import TuneBOHB

            import ConfigSpace  # noqa: F401  (TuneBOHB imports it only when used)
            import hpbandster  # noqa: F401
        except ImportError:
            raise HpsearchError("scheduler.type: bohb needs the hpbandster and ConfigSpace packages, which are "
                                "not installed; run pip install 'hpsearch[bench]' or choose asha") from None
        return TuneBOHB(space=TuneBOHB.convert_search_space(tune_domains(space)), metric=objective,
                        mode=search.mode, seed=search.seed)
    return StudySearch(space=to_optuna(space), metric=objective, mode=search.mode,
                       sampler=make_sampler(search.sampler, search.seed, search.num_trials, search.startup_trials),
                       prune_stopped=search.stopped_trials == "pruned", **(study or {}))


def limited(searcher: Searcher, job) -> Searcher:
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


def tune_domains(space: dict[str, Any]) -> dict[str, Any]:
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
