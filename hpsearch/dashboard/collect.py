"""A search read into one tidy structure: the search's settings and every trial's curves.

Two sources, each for what it alone knows:

* ``hpsearch-search.json`` in the experiment folder: the parent run id, the tracking URI,
  the resolved job (metric, scheduler, search space file) and the dataset's class names;
* MLflow: one child run per trial with every epoch's metrics (failed and stopped trials
  included, and trials of an interrupted search), its outcome tag and its timestamps.
  MLflow is the source of truth for curves: Ray's ``results.json`` exists only once a
  search has finished, and keeps no wall-clock times.

``results.json`` adds the best checkpoint of each trial when it exists (for the overlays).

Example:
    >>> search = collect_search(Path("results/demo-lv-20261123-101500"))  # doctest: +SKIP
    >>> [(t.trial_id, t.status, t.best_value) for t in search.trials]     # doctest: +SKIP
    [('7c1f0_00000', 'completed', 0.97), ...]
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment
from hpsearch.outcome import Outcome
from hpsearch.selection import default_mode
from hpsearch.network import family
from hpsearch.space import Choice, IntRange, load_space
from hpsearch.tracking.runs import STATUS_TAG, TRIAL_TAG


@dataclasses.dataclass
class Trial:
    """One trial as its MLflow child run recorded it.

    Attributes:
        trial_id: Ray Tune's trial id (``hpsearch.trial_id`` tag).
        run_id, run_name: The child run.
        status: ``completed``, ``stopped_early`` (by ASHA), ``failed``, or ``running``
            (an interrupted search's unfinished trial).
        params: Sampled hyperparameters, typed as the search space declares them.
        epochs: Epoch numbers with a logged value of the search metric, ascending.
        values: The search metric at each of ``epochs`` (may hold NaN).
        logged_ms: When each epoch was logged (ms since the epoch, MLflow's timestamps).
        epoch_seconds: Training + validation time of each epoch.
        stopped_at_epoch: The epoch ASHA stopped the trial at, if it did.
        error: First line of a failed trial's error.
        checkpoint: Its best checkpoint folder (from ``results.json``), or "".
    """

    trial_id: str
    run_id: str
    run_name: str
    status: str
    params: dict[str, Any]
    epochs: list[int]
    values: list[float]
    logged_ms: list[int]
    epoch_seconds: list[float]
    stopped_at_epoch: int | None = None
    error: str = ""
    checkpoint: str = ""

    def best(self, mode: str) -> tuple[float, int]:
        """The best finite value of the search metric and its epoch; (nan, 0) if none."""
        scored = [(v, e) for v, e in zip(self.values, self.epochs) if math.isfinite(v)]
        if not scored:
            return math.nan, 0
        pick = max if mode == "max" else min
        return pick(scored, key=lambda item: item[0])


@dataclasses.dataclass
class Search:
    """One search: its settings and its trials.

    Attributes:
        name: The parent run's name (``<job name>-<stamp>``), the experiment folder's name.
        experiment_dir: The experiment folder.
        tracking_uri, experiment_id, parent_run_id: Where MLflow keeps it.
        metric, mode: What the search optimised (``val_dice``, ``max``).
        model, sampler: The model family and Optuna sampler.
        scheduler: The job's ``scheduler`` section (``type``, ``max_epochs``, ``grace_period``,
            ``reduction_factor``).
        space: The search space (:mod:`hpsearch.space` distributions).
        data_info: ``PreparedData.info`` of the searched data (classes, preprocessing).
        job: The resolved job as ``hpsearch-search.json`` keeps it (plain JSON).
        start_ms: When the parent run started.
        trials: Every trial with an MLflow child run, in the order they started.
        chosen: The best row of ``results.json`` (the search's own ranking: across folds, more
            folds first), or ``None`` before the search finished.
        test: The locked test split's evaluation (``test_results.json``), or ``None``.
    """

    name: str
    experiment_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str
    mode: str
    model: str
    sampler: str
    scheduler: dict[str, Any]
    space: dict[str, Any]
    data_info: dict[str, Any]
    job: dict[str, Any]
    start_ms: int
    trials: list[Trial]
    chosen: dict[str, Any] | None = None
    test: dict[str, Any] | None = None

    @property
    def class_names(self) -> list[str]:
        """Class names of the dataset, background first."""
        return list(self.data_info.get("class_names", []))

    @property
    def metric_label(self) -> str:
        """How plots name the metric: ``val Dice`` for ``val_dice``."""
        return "val Dice" if self.metric == "val_dice" else self.metric

    def finished(self) -> list[Trial]:
        """Trials that ended with at least one finite value of the metric."""
        return [t for t in self.trials if Outcome.parse(t.status).scored and math.isfinite(t.best(self.mode)[0])]

    def best_trial(self) -> Trial | None:
        """The trial the search chose (``results.json``), else the finished trial with the best
        value of the metric."""
        finished = self.finished()
        if not finished:
            return None
        chosen = (self.chosen or {}).get("trial_id")
        if chosen and (trial := next((t for t in finished if t.trial_id == chosen), None)):
            return trial
        sign = 1 if self.mode == "max" else -1
        return max(finished, key=lambda t: sign * t.best(self.mode)[0])


def collect_search(experiment_dir: Path) -> Search:
    """Read a search from its experiment folder and its MLflow runs.

    Raises:
        HpsearchError: Not an experiment folder, MLflow unreachable, or the parent run gone.
    """
    from hpsearch.tracking.store import ensure_reachable

    experiment = Experiment.open(experiment_dir)
    state, job = experiment.state, experiment.state.job
    search_cfg, scheduler = job.get("search", {}), job.get("scheduler", {})
    ensure_reachable(state.tracking_uri)
    runs = experiment.runs
    parent = runs.parent
    space = _space(experiment)
    checkpoints = experiment.checkpoints()
    metric = experiment.objective  # cv_<metric> across folds
    trials = [_trial(runs.client, run, metric, space, checkpoints) for run in runs.children()]
    try:
        chosen = experiment.results().get("best")
    except HpsearchError:
        chosen = None  # not finished: the dashboard shows what MLflow has
    return Search(
        name=parent.info.run_name or experiment.name,
        experiment_dir=experiment.path,
        tracking_uri=state.tracking_uri,
        experiment_id=parent.info.experiment_id,
        parent_run_id=state.parent_run_id,
        metric=metric,
        mode=search_cfg.get("mode") or default_mode(metric),
        model=job.get("model", "?"),
        sampler=search_cfg.get("sampler", "?"),
        scheduler=dict(scheduler),
        space=space,
        data_info=dict(state.data_info),
        job=job,
        start_ms=int(parent.info.start_time or 0),
        trials=trials,
        chosen=chosen,
        test=experiment.test_results(),
    )


def require_finished(search: Search) -> None:
    """Raise unless at least one trial finished with a score: nothing to show otherwise.

    Raises:
        HpsearchError: No trial of the search finished.
    """
    if not search.finished():
        counts = ", ".join(f"{sum(t.status == o for t in search.trials)} {o}" for o in Outcome)
        raise HpsearchError(
            f"{search.experiment_dir}: no finished trial with a {search.metric} in MLflow ({counts}); "
            f"let the search run (or `hpsearch resume {search.experiment_dir}`) first"
        )


def _trial(client, run, metric: str, space: dict, checkpoints: dict[str, str]) -> Trial:
    tags = run.data.tags
    history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
    seconds = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")}
    stopped = tags.get("hpsearch.stopped_at_epoch")
    trial_id = tags.get(TRIAL_TAG, run.info.run_id)
    return Trial(
        trial_id=trial_id,
        run_id=run.info.run_id,
        run_name=run.info.run_name or trial_id,
        status=Outcome.parse(tags.get(STATUS_TAG)).value,
        params={name: _typed(space.get(name), value) for name, value in run.data.params.items()},
        epochs=[int(m.step) for m in history],
        values=[float(m.value) for m in history],
        logged_ms=[int(m.timestamp) for m in history],
        epoch_seconds=[float(seconds.get(m.step, math.nan)) for m in history],
        stopped_at_epoch=int(stopped) if stopped and stopped.isdigit() else None,
        error=tags.get("hpsearch.error", "").splitlines()[0] if tags.get("hpsearch.error") else "",
        checkpoint=checkpoints.get(trial_id, ""),
    )


def _typed(dist, text: str) -> Any:
    """An MLflow param (always a string) back as the value the sampler proposed."""
    if isinstance(dist, Choice):
        return next((v for v in dist.values if str(v) == text), text)
    try:
        number = float(text)
    except ValueError:
        return text
    if isinstance(dist, IntRange) or (dist is None and number.is_integer() and "." not in text):
        return int(number)
    return number


def _space(experiment: Experiment) -> dict[str, Any]:
    # The copy beside the state is what the search ran with, even if the original changed.
    path = experiment.space_file()
    if path is None or not path.is_file():
        return {}  # params then come back as plain numbers and strings
    job = experiment.state.job
    return load_space(path, family(job.get("model", "unet"), (job.get("dataset") or {}).get("dims")))
