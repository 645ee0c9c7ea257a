"""A search's Optuna study, kept in its experiment folder so that it outlives the driver.

Ray's ``OptunaSearch`` asks it for configurations and tells it every epoch's value
(``on_trial_result`` -> ``trial.report``) and each trial's end, so the study holds what the
sampler learnt from: values, intermediate values (learning curves), failures. Warm starts
(:mod:`hpsearch.search.warm_start`) and extensions (``hpsearch run --extend``) read it;
``optuna-dashboard EXPERIMENT/optuna.journal`` shows it. The file belongs to the
:class:`~hpsearch.experiment.Experiment` (:attr:`~hpsearch.experiment.Experiment.study_file`);
the study is named after the experiment.

Example:
    >>> study = load_study(Experiment.open(Path("results/demo-lv-20261202-101500")))  # doctest: +SKIP
    >>> [t.intermediate_values for t in study.trials][:1]                             # doctest: +SKIP
    [{1: 0.41, 2: 0.63}]
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError, first_line
from hpsearch.experiment import RESULTS_FILE, Experiment
from hpsearch.outcome import Outcome

ORIGIN_ATTR = "hpsearch.origin"  # user attribute: "<experiment name>#<trial number>" a trial came from
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def storage_for(experiment: Experiment) -> JournalStorage:
    """The Optuna storage of an experiment's study (the journal file; created on first write).

    It pickles as its file path (``Tuner.restore`` and Ray's searcher checkpoints reopen it).
    """
    return JournalStorage(JournalFileBackend(str(experiment.study_file)))


def create_study(experiment: Experiment, mode: str, trials: Iterable[FrozenTrial] = ()) -> optuna.Study:
    """The experiment's study, created (or loaded) with ``trials`` added before any of its own.

    Args:
        experiment: Its folder holds the study file.
        mode: ``max`` or ``min``, the search's.
        trials: Finished trials of earlier searches (warm start) or of this one (an extension
            of a search recorded before studies were kept).

    Returns:
        The study; Ray's ``OptunaSearch`` loads the same one by storage and name.
    """
    study = optuna.create_study(storage=storage_for(experiment), study_name=experiment.name, load_if_exists=True,
                                direction="maximize" if mode == "max" else "minimize")
    study.add_trials(list(trials))
    return study


def load_study(experiment: Experiment) -> optuna.Study | None:
    """The experiment's study, or ``None`` if it has none (a search from before studies were kept).

    Raises:
        HpsearchError: The study file exists but cannot be read.
    """
    if not experiment.study_file.is_file():
        return None
    try:
        return optuna.load_study(study_name=experiment.name, storage=storage_for(experiment))
    except Exception as exc:  # KeyError (no such study), a damaged journal line: one line
        raise HpsearchError(f"{experiment.study_file}: cannot read the Optuna study {experiment.name} "
                            f"({first_line(exc)})") from None


def finished_trials(experiment: Experiment, space: dict[str, BaseDistribution]) -> list[FrozenTrial] | None:
    """The ended trials of a search as its sampler saw them, each tagged with its origin.

    From its study when it has one (completed, pruned and failed trials, as recorded); else,
    for a search recorded before studies were kept, rebuilt from ``results.json`` the way
    Ray's ``OptunaSearch`` would have told them: the last epoch's value for a completed or
    stopped-early trial, every epoch's value as intermediate values, failed ones as FAIL.

    Args:
        experiment: The search.
        space: Its search space as Optuna distributions (for the ``results.json`` path).

    Returns:
        The trials, or ``None`` when the search recorded neither a study nor results.
    """
    study = load_study(experiment)
    if study is not None:
        return [_tagged(t, experiment.name) for t in study.get_trials(deepcopy=False, states=FINISHED)]
    if not experiment.file(RESULTS_FILE).is_file():
        return None
    metric = experiment.objective
    trials = [_from_row(row, metric, space) for row in experiment.results().get("trials", [])]
    return [_tagged(t, experiment.name, number) for number, t in enumerate(trials) if t is not None]


def _tagged(trial: FrozenTrial, name: str, number: int | None = None) -> FrozenTrial:
    """A copy of ``trial`` for another study: its origin recorded (kept if it already has one,
    so a trial taken over twice is recognised), no Ray or Optuna internals."""
    origin = trial.user_attrs.get(ORIGIN_ATTR) or f"{name}#{trial.number if number is None else number}"
    return optuna.trial.create_trial(
        state=trial.state, value=trial.value if trial.state is not TrialState.FAIL else None,
        params=dict(trial.params), distributions=dict(trial.distributions),
        user_attrs={**trial.user_attrs, ORIGIN_ATTR: origin}, intermediate_values=dict(trial.intermediate_values))


def _from_row(row: dict, metric: str, space: dict[str, BaseDistribution]) -> FrozenTrial | None:
    outcome = Outcome.parse(row.get("status"))
    params = {k: v for k, v in (row.get("params") or {}).items() if k in space}
    if not outcome.ended or outcome is Outcome.LOST or set(params) != set(space):
        return None  # unfinished, replaced by another trial, or failed before it was configured
    curve = {int(h["training_iteration"]): float(h[metric]) for h in row.get("history") or []
             if "training_iteration" in h and metric in h}
    finite = [v for _, v in sorted(curve.items()) if math.isfinite(v)]
    state = TrialState.COMPLETE if outcome.scored and finite else TrialState.FAIL
    try:
        return optuna.trial.create_trial(
            state=state, value=finite[-1] if state is TrialState.COMPLETE else None, params=params,
            distributions={k: space[k] for k in params}, intermediate_values=curve)
    except ValueError:  # a value outside the space it claims to come from: a damaged row
        return None


def dashboard_hint(experiment: Experiment) -> str:
    """How to open a search's study in optuna-dashboard (one line; not an hpsearch dependency)."""
    return f"pip install optuna-dashboard; optuna-dashboard {experiment.study_file}"
