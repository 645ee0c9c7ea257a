"""Warm starts (``search.warm_start``): earlier searches' ended trials seed a new search's sampler.

The trials go into the new search's Optuna study (:mod:`hpsearch.search.study`) before its
first proposal, with their values and per-epoch curves, the failed ones as failed: TPE then
models where good and bad configurations lie from the start (and skips its random start-up
trials, which count the study's finished trials), instead of only re-trying configurations.

Everything is checked before anything is written (no experiment folder, no MLflow run): an
earlier search must rank by the same objective (metric, mode, folds); its dataset content
(digest) and search space must be the same unless ``search.warm_start_force``, and then
trials outside the new space are skipped and counted.

Example:
    >>> sources = resolve_sources(["results/lv-20261202-101500"], "sqlite:///mlflow.db", "job.yaml")  # doctest: +SKIP
    >>> warm = prepare(sources, space=to_optuna(space), objective="val_dice", mode="max",  # doctest: +SKIP
    ...                digest=data.info["digest"], force=False, where="job.yaml: search.warm_start")
    >>> warm.lines()                                                                       # doctest: +SKIP
    ['warm start: 16 trial(s) from lv-20261202-101500: 16 trial(s)']
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment
from hpsearch.search.study import ORIGIN_ATTR, finished_trials
from hpsearch.space import load_space, to_optuna

RUNS_PREFIX = "runs:/"
FORCE_KEY = "search.warm_start_force"


@dataclasses.dataclass
class WarmStart:
    """What the earlier searches give a new one.

    Attributes:
        sources: Their experiment folders, in the order given.
        trials: Their ended trials in the new search's space, oldest search first.
        taken, skipped: Per source name: trials taken; trials outside the new space.
        duplicates: Trials met twice (a source that was itself warm-started from another
            source); each is taken once.
        forced: Per source name, what differed and was accepted (``dataset``, ``space``).
    """

    sources: list[Path]
    trials: list[FrozenTrial] = dataclasses.field(default_factory=list)
    taken: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    duplicates: int = 0
    forced: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """``name: 12 trial(s) (3 outside this search's space skipped; dataset differs, forced); ...``"""
        parts = []
        for source in self.sources:
            notes = []
            if skipped := self.skipped.get(source.name):
                notes.append(f"{skipped} outside this search's space skipped")
            if forced := self.forced.get(source.name):
                notes.append(f"{' and '.join(forced)} differ(s), forced")
            parts.append(f"{source.name}: {self.taken.get(source.name, 0)} trial(s)"
                         + (f" ({'; '.join(notes)})" if notes else ""))
        return "; ".join(parts) + (f"; {self.duplicates} duplicate(s) taken once" if self.duplicates else "")

    def lines(self) -> list[str]:
        """What the driver prints."""
        return [f"warm start: {len(self.trials)} trial(s) from {self.summary()}"]

    def tags(self) -> dict[str, str]:
        """The new search's parent-run tags: which searches warmed it and how many trials it took."""
        return {"hpsearch.warm_start": self.summary(), "hpsearch.warm_start_trials": str(len(self.trials)),
                "hpsearch.warm_start_dirs": ",".join(str(s) for s in self.sources)}


def resolve_sources(entries: list[str], tracking_uri: str, where: str) -> list[Path]:
    """Experiment folders for ``search.warm_start`` entries: folders, or ``runs:/<parent run id>``
    (the folder the run's ``hpsearch.experiment_dir`` tag names, in ``tracking_uri``).

    Raises:
        HpsearchError: An unknown run, or a run that is not an hpsearch search's parent run.
    """
    from hpsearch.tracking.runs import SearchRuns

    folders: list[Path] = []
    for entry in entries:
        if entry.startswith(RUNS_PREFIX):
            run_id = entry[len(RUNS_PREFIX):].strip("/")
            try:
                folder = SearchRuns(tracking_uri, run_id).experiment_dir()
            except HpsearchError as exc:
                raise HpsearchError(f"{where}: {entry}: {exc}") from None
            if folder is None:
                raise HpsearchError(f"{where}: {entry}: not the parent run of an hpsearch search (no "
                                    "hpsearch.experiment_dir tag); give the search's experiment folder")
        else:
            folder = Path(entry).expanduser()
        folder = Path(os.path.realpath(folder))
        if folder not in folders:
            folders.append(folder)
    return folders


def prepare(sources: list[Path], *, space: dict[str, BaseDistribution], objective: str, mode: str, digest: str,
            force: bool, where: str) -> WarmStart:
    """Check every earlier search against the new one and collect their trials in its space.

    Args:
        sources: Experiment folders (:func:`resolve_sources`).
        space: The new search's space as Optuna distributions.
        objective, mode: What the new search ranks by (``cv_<metric>`` across folds).
        digest: The new search's dataset content digest.
        force: ``search.warm_start_force``: accept another dataset content or search space.
        where: ``<job file>: search.warm_start``, the start of every refusal.

    Raises:
        HpsearchError: Not an experiment folder, another objective, another dataset content
            or space (unless ``force``), or nothing recorded to take trials from.
    """
    warm, seen = WarmStart(sources=list(dict.fromkeys(sources))), set()
    for folder in warm.sources:
        try:
            experiment = Experiment.open(folder)
        except HpsearchError as exc:
            raise HpsearchError(f"{where}: {exc}") from None
        name = experiment.name
        theirs = f"{experiment.objective} ({experiment.job.search.mode})"
        if (experiment.objective, experiment.job.search.mode) != (objective, mode):
            # Not forceable: another quantity's values would be taken as this one's.
            raise HpsearchError(f"{where}: {folder}: it ranked trials by {theirs}, this search by {objective} "
                                f"({mode}); warm-start from a search with the same metric, mode and folds")
        forced = warm.forced.setdefault(name, [])
        if experiment.state.dataset_digest and digest and experiment.state.dataset_digest != digest:
            if not force:
                raise HpsearchError(
                    f"{where}: {folder}: it ran on other data (dataset digest {experiment.state.dataset_digest[:12]}, "
                    f"this search's {digest[:12]}); its scores would mislead the sampler. Warm-start from a search "
                    f"on this data, or set {FORCE_KEY}: true")
            forced.append("dataset")
        their_space = _space_of(experiment, where)
        if difference := space_difference(their_space, space):
            if not force:
                raise HpsearchError(f"{where}: {folder}: its search space differs ({difference}); warm-start from "
                                    f"a search over this space, or set {FORCE_KEY}: true to take the trials that fit")
            forced.append("space")
        trials = finished_trials(experiment, their_space)
        if trials is None:
            raise HpsearchError(f"{where}: {folder}: no ended trials recorded (no Optuna study, no results); "
                                f"finish it with `hpsearch resume {folder}` first")
        counts = collections.Counter()
        for trial in trials:
            origin = trial.user_attrs[ORIGIN_ATTR]
            if origin in seen:
                warm.duplicates += 1
                continue
            seen.add(origin)
            fitted = fit_to_space(trial, space)
            counts["taken" if fitted else "skipped"] += 1
            if fitted:
                warm.trials.append(fitted)
        warm.taken[name], warm.skipped[name] = counts["taken"], counts["skipped"]
    return warm


def fit_to_space(trial: FrozenTrial, space: dict[str, BaseDistribution]) -> FrozenTrial | None:
    """``trial`` with the distributions of ``space`` (the sampler compares trials only over
    identical distributions), or ``None`` if it lacks a parameter or one lies outside it.
    Parameters ``space`` does not have are dropped."""
    if not set(space) <= set(trial.params):
        return None
    try:  # create_trial checks every value against its distribution (bounds, step, choices)
        return optuna.trial.create_trial(
            state=trial.state, value=trial.value, params={k: trial.params[k] for k in space},
            distributions=dict(space), user_attrs=dict(trial.user_attrs),
            intermediate_values=dict(trial.intermediate_values))
    except ValueError:
        return None


def space_difference(theirs: dict[str, BaseDistribution], ours: dict[str, BaseDistribution]) -> str:
    """The first difference between two search spaces, as a short phrase ("" if none)."""
    for name in sorted(set(theirs) | set(ours)):
        if name not in ours:
            return f"{name} is searched there, not here"
        if name not in theirs:
            return f"{name} is searched here, not there"
        if theirs[name] != ours[name]:
            return f"{name}: {describe(theirs[name])} there, {describe(ours[name])} here"
    return ""


def describe(dist: BaseDistribution) -> str:
    """A distribution as the search-space file would say it."""
    if isinstance(dist, CategoricalDistribution):
        return f"choice {list(dist.choices)}"
    if isinstance(dist, IntDistribution):
        return f"int {dist.low}..{dist.high}" + (" log" if dist.log else "")
    if isinstance(dist, FloatDistribution):
        return f"{'loguniform' if dist.log else 'uniform'} {dist.low:g}..{dist.high:g}"
    return repr(dist)


def _space_of(experiment: Experiment, where: str) -> dict[str, BaseDistribution]:
    path = experiment.space_file()
    if path is None or not path.is_file():
        raise HpsearchError(f"{where}: {experiment.path}: its search space file is missing "
                            f"({path or 'not recorded'}); restore it or warm-start from another search")
    return to_optuna(load_space(path, experiment.job.family))
