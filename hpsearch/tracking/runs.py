"""Every MLflow read and write about one search that is not a trial's epoch.

The parent run (created by :func:`start_search_run`), its child runs (one per Ray Tune
trial, tagged ``hpsearch.trial_id`` and ``mlflow.parentRunId``), their outcome tags, the
dashboard's artifacts and the Model Registry. :class:`SearchRuns` is the one place that
knows how these are found; the per-epoch logging is :mod:`hpsearch.tracking.tracker`'s.

Example:
    >>> runs = SearchRuns("sqlite:///mlflow.db", parent_run_id)          # doctest: +SKIP
    >>> [r.data.tags["hpsearch.trial_id"] for r in runs.children()]     # doctest: +SKIP
    ['7c1f0_00000', '7c1f0_00001']
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from hpsearch.errors import HpsearchError, first_line
from hpsearch.outcome import Outcome

MAX_PARAM_LENGTH, MAX_TAG_LENGTH = 6000, 8000  # MLflow's limits on values
STATUS_TAG, TRIAL_TAG, PARENT_TAG = "hpsearch.status", "hpsearch.trial_id", "mlflow.parentRunId"
EXPERIMENT_DIR_TAG = "hpsearch.experiment_dir"  # on the parent run: the search's experiment folder
MAX_TRIALS = 50000  # one search_runs page; a search has far fewer trials
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as ``{"dataset.image_size": "[96, 96]"}``, truncated to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{prefix}{key}."))
        else:
            out[_BAD_KEY_CHARS.sub("_", f"{prefix}{key}")] = str(value)[:MAX_PARAM_LENGTH]
    return out


def start_search_run(tracking_uri: str, experiment_name: str, *, run_name: str, params: dict[str, Any],
                     tags: dict[str, str], artifacts: dict[str, Path] | None = None,
                     dataset_fingerprint: dict | None = None, artifact_location: str | None = None) -> str:
    """Create the parent run of one search (and its experiment if missing); return its id.

    ``params`` are logged flattened (``a.b``), stringified, cut to 6000 characters; ``tags``
    as given (``hpsearch.job``, ``mlflow.source.git.commit``); ``artifacts`` maps a name in
    the run to a local text file; the fingerprint becomes ``dataset_fingerprint.json``.

    Raises:
        ValueError: An artifact name is not relative or the fingerprint is not JSON-able.
        MlflowException: MLflow refused or is unreachable: the search should not start.
    """
    for name in artifacts or {}:
        if not Path(name).parts or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"artifact name {name!r} must be a relative file name")
    try:
        json.dumps(dataset_fingerprint)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"dataset_fingerprint is not JSON-serialisable: {exc}") from exc
    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(experiment_name) is None:
        try:
            client.create_experiment(experiment_name, artifact_location=artifact_location)
        except MlflowException as exc:  # another search created it in the meantime
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    run_id = client.create_run(experiment_id, run_name=run_name, tags={
        k: str(v)[:MAX_TAG_LENGTH] for k, v in {STATUS_TAG: Outcome.RUNNING.value, **tags}.items()}).info.run_id
    log_params(client, run_id, flatten_params(params))
    for name, path in (artifacts or {}).items():  # log_text: stored under the given name
        client.log_text(run_id, Path(path).read_text(encoding="utf-8"), name)
    if dataset_fingerprint is not None:
        client.log_dict(run_id, dataset_fingerprint, "dataset_fingerprint.json")
    return run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = list(params.items())
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])


class SearchRuns:
    """The MLflow runs of one search: its parent run and one child run per trial.

    Reads fail as :class:`HpsearchError` lines a user can act on (the store moved, the run
    was deleted); the tracker's per-epoch writes have their own outage queue.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, experiment_id: str | None = None):
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self.client = MlflowClient(tracking_uri)
        self._experiment_id = experiment_id

    @functools.cached_property
    def parent(self):
        """The parent run (fetched once)."""
        try:
            return self.client.get_run(self.parent_run_id)
        except MlflowException:
            raise HpsearchError(f"parent run {self.parent_run_id} is not in {self.tracking_uri}; was the "
                                "MLflow store moved or cleaned? (see tracking.uri)") from None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self.parent.info.experiment_id
        return self._experiment_id

    def experiment_dir(self) -> Path | None:
        """The experiment folder the parent run names (``None``: not an hpsearch search's run).

        Raises:
            HpsearchError: No such run in the store.
        """
        folder = self.parent.data.tags.get(EXPERIMENT_DIR_TAG)
        return Path(folder) if folder else None

    def reopen_parent(self) -> None:
        """Set an ended parent run RUNNING again: a finished search gets more trials
        (``hpsearch run --extend``); the tracker ends it again when they have ended."""
        self.client.update_run(self.parent_run_id, status="RUNNING")

    def children(self) -> list:
        """Every child run, in the order the trials started."""
        runs = self.client.search_runs([self.experiment_id], max_results=MAX_TRIALS,
                                       filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'")
        return sorted(runs, key=lambda run: run.info.start_time or 0)

    def child(self, trial_id: str):
        """The child run of one trial, or None."""
        runs = self.client.search_runs([self.experiment_id], max_results=1, filter_string=(
            f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"))
        return runs[0] if runs else None

    def outcomes(self) -> dict[str, Outcome]:
        """Trial id -> outcome, as the child runs' status tags say."""
        return {run.data.tags.get(TRIAL_TAG, run.info.run_id): Outcome.parse(run.data.tags.get(STATUS_TAG))
                for run in self.children()}

    def set_parent_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.parent_run_id, tags=[RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()])

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log search-level figures (the locked test split's) to the parent run, step 0.

        Raises:
            HpsearchError: MLflow refused or is unreachable.
        """
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        try:
            self.client.log_batch(self.parent_run_id, metrics=batch)
        except Exception as exc:  # MlflowException or a connection error: one line
            raise HpsearchError(f"{self.tracking_uri}: logging test metrics to run {self.parent_run_id} "
                                f"failed ({first_line(exc)})") from None

    def log_artifacts(self, files: list[Path], artifact_path: str) -> None:
        """Log files under ``artifact_path`` of the parent run (an ended run takes them too).

        Raises:
            HpsearchError: MLflow refused or is unreachable.
        """
        try:
            for path in files:
                self.client.log_artifact(self.parent_run_id, str(path), artifact_path=artifact_path)
        except Exception as exc:  # MlflowException, OSError from an artifact store: one line
            raise HpsearchError(f"{self.tracking_uri}: logging {artifact_path}/ to run {self.parent_run_id} "
                                f"failed ({first_line(exc)})") from None

    def register_model(self, name: str, run_id: str, folder: Path, description: str) -> int:
        """Log an exported model folder to a trial's run and add it as a version of ``name``
        in the Model Registry; return the version number."""
        self.client.log_artifacts(run_id, str(folder), artifact_path="model")
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        version = self.client.create_model_version(name, source=source, run_id=run_id, description=description)
        return int(version.version)
