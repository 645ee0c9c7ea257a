"""MLflow tracking of a search: one parent run, one nested child run per Ray Tune trial.

:func:`start_search_run` creates the *parent* run of a search (the job's parameters, code
version tags, the job and search-space files, the dataset fingerprint).
:class:`MLflowTracker` is a Tune callback that runs on the *driver* and gives every trial a
child run (tag ``mlflow.parentRunId``) with one step per epoch (``training_iteration``).

Why not Ray's ``MLflowLoggerCallback``: it has no nested runs (ray#19978) and logs again
the epochs a restored trial replays (ray#48664). Logging from the driver also means that
trials on other nodes never need access to the tracking server.

Guarantees:
    * Exactly once: each child run's steps are 1, 2, ... without duplicates across trial
      retries, checkpoint restores and ``Tuner.restore`` in a new driver process. The
      high-water mark of a run is its latest ``training_iteration`` metric in MLflow,
      which is logged in the same ``log_batch`` as the epoch's metrics.
    * Tracking never fails a search: while MLflow is unreachable, everything is queued
      in order and sent later (:meth:`MLflowTracker.flush`); one warning per outage.
    * Tag ``hpsearch.status`` of a child: ``running``, ``completed`` (all its epochs),
      ``stopped_early`` (+ ``hpsearch.stopped_at_epoch``, e.g. ASHA) or ``failed``
      (+ ``hpsearch.error``, only once Tune gives up retrying it).
    * The parent is set FINISHED when every trial has ended. An interrupted search
      (Ctrl-C, driver shutdown) leaves it RUNNING with ``hpsearch.status=interrupted``
      so that ``Tuner.restore`` continues it; :meth:`MLflowTracker.close_parent` ends it.

Example:
    >>> uri = "sqlite:///mlflow.db"                                     # doctest: +SKIP
    >>> parent = start_search_run(uri, "demo-lv", run_name="search-1",
    ...     params={"epochs": 20}, tags={"hpsearch.job": "demo-lv"},
    ...     artifacts={"job.yaml": Path("jobs/demo.yaml")})
    >>> tracker = MLflowTracker.for_parent(uri, parent)
    >>> tune.Tuner(trainable, run_config=tune.RunConfig(callbacks=[tracker])).fit()
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from ray.tune import Callback

_LOG = logging.getLogger(__name__)

DEFAULT_METRICS = frozenset({"loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds"})
STEP_METRIC = "training_iteration"  # logged in every batch: the run's high-water mark
BEST_METRIC = "val_dice"
MAX_PARAM_LENGTH = 6000  # MLflow's limits on param and tag values
MAX_TAG_LENGTH = 8000
NONFINITE_TAG = "hpsearch.nonfinite_metrics"
ENDED = frozenset({"completed", "stopped_early", "failed"})
# Errors that a retry cannot fix (a bad key, a deleted run): the batch is dropped with a
# warning instead of blocking the queue forever. Everything else (connection refused,
# timeouts, 5xx, a locked database) is an outage and is retried.
_PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                        "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"})
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def default_metric_keys(key: str) -> bool:
    """The per-epoch metrics of :meth:`hpsearch.trainer.EpochResult.metrics` worth a chart."""
    return key in DEFAULT_METRICS or key.startswith(("val_dice_", "val_iou_"))


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as ``{"dataset.image_size": "[96, 96]"}``, truncated to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[_BAD_KEY_CHARS.sub("_", name)] = str(value)[:MAX_PARAM_LENGTH]
    return out


def start_search_run(tracking_uri: str, experiment_name: str, *, run_name: str,
                     params: dict[str, Any], tags: dict[str, str],
                     artifacts: dict[str, Path] | None = None,
                     dataset_fingerprint: dict | None = None,
                     artifact_location: str | None = None) -> str:
    """Create the parent run of one search and return its run id.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///...``, ``http://host:5000``).
        experiment_name: Created with ``artifact_location`` if it does not exist.
        run_name: The parent run's name.
        params: Logged flattened (``a.b``), stringified, truncated to 6000 characters.
        tags: E.g. ``hpsearch.job``, ``mlflow.source.git.commit`` (the caller knows them).
        artifacts: Artifact file name in the run -> local file (job YAML, search space).
        dataset_fingerprint: Logged as ``dataset_fingerprint.json``; must be JSON-able.
        artifact_location: Artifact root of a new experiment (default: MLflow's).

    Raises:
        ValueError: An artifact name is not a relative path, or the fingerprint is not
            JSON-serialisable (checked before anything is created).
        MlflowException: MLflow refused or is unreachable; a search should not start.
    """
    for name in artifacts or {}:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"artifact name {name!r} must be a relative file name")
    if dataset_fingerprint is not None:
        try:
            json.dumps(dataset_fingerprint)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"dataset_fingerprint is not JSON-serialisable: {exc}") from exc
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
        except MlflowException as exc:  # another search created it in the meantime
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    all_tags = {"hpsearch.status": "running", **tags}
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={k: str(v)[:MAX_TAG_LENGTH] for k, v in all_tags.items()})
    run_id = run.info.run_id
    _log_params(client, run_id, flatten_params(params))
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (artifacts or {}).items():
            target = Path(tmp, name)  # copied so that the artifact gets the given name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            folder = Path(name).parent.as_posix()
            client.log_artifact(run_id, str(target), None if folder == "." else folder)
    if dataset_fingerprint is not None:
        client.log_dict(run_id, dataset_fingerprint, "dataset_fingerprint.json")
    return run_id


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = list(params.items())
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])


@dataclasses.dataclass
class _Op:
    """One queued write for one trial's run, sent in order."""

    trial_id: str
    kind: str  # "start" | "metrics" | "tags" | "end"
    step: int = 0
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    nonfinite: tuple[str, ...] = ()
    status: str | None = None  # the MLflow run status an "end" op sets


class MLflowTracker(Callback):
    """Ray Tune callback logging each trial as a child run of ``parent_run_id``.

    Args:
        tracking_uri: MLflow tracking URI; only the driver connects to it.
        experiment_id: The parent run's experiment.
        parent_run_id: From :func:`start_search_run`.
        metric_keys: Which result keys to log (default :func:`default_metric_keys`);
            numeric scalars only. Must be picklable (Tune pickles its callbacks).
        max_epochs: Epoch count of a complete trial when ``trial.config`` has no
            ``epochs``; without both, a trial that ended on its own counts as completed.
        http_retries: HTTP retries per MLflow request (MLflow's default, 7 with
            backoff, would block Ray's driver loop for minutes per call while a server
            is down); an explicit ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` wins.
        http_timeout_s: HTTP timeout per request, unless ``MLFLOW_HTTP_REQUEST_TIMEOUT``.
        end_flush_s: How long :meth:`on_experiment_end` retries queued batches.

    Tune pickles callbacks into ``tuner.pkl`` and ``Tuner.restore`` unpickles them: only
    the arguments are pickled and every other state is re-read from MLflow.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, *,
                 metric_keys: Callable[[str], bool] | None = None, max_epochs: int | None = None,
                 http_retries: int = 1, http_timeout_s: int = 10, end_flush_s: float = 30.0):
        if not (tracking_uri and experiment_id and parent_run_id):
            raise ValueError("tracking_uri, experiment_id and parent_run_id are required")
        self._args = dict(tracking_uri=tracking_uri, experiment_id=experiment_id,
                          parent_run_id=parent_run_id, metric_keys=metric_keys,
                          max_epochs=max_epochs, http_retries=http_retries,
                          http_timeout_s=http_timeout_s, end_flush_s=end_flush_s)
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self._metric_keys = metric_keys or default_metric_keys
        self._max_epochs, self._end_flush_s = max_epochs, end_flush_s
        self._http_env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(http_retries),
                          "MLFLOW_HTTP_REQUEST_TIMEOUT": str(http_timeout_s)}
        self._client = MlflowClient(tracking_uri)
        self._pending: collections.deque[_Op] = collections.deque()
        self._run_ids: dict[str, str] = {}  # trial id -> child run id
        self._hwm: dict[str, int] = {}  # trial id -> highest step stored in MLflow
        self._queued: dict[str, int] = {}  # trial id -> highest step queued
        self._started: set[str] = set()  # trials with a queued "start"
        self._closed: set[str] = set()  # runs this process set terminated
        self._best: dict[str, float] = {}
        self._stopped_by_tune: set[str] = set()  # Tune set done=True: scheduler/stopper
        self._nonfinite: dict[str, set[str]] = {}
        self._outcome: dict[str, str] = {}  # trial id -> hpsearch.status at its end
        self._budget: tuple[float, float] | None = None  # (setup time, time_budget_s)
        self._outage = False

    @classmethod
    def for_parent(cls, tracking_uri: str, parent_run_id: str, **kwargs: Any) -> MLflowTracker:
        """A tracker for an existing parent run (its experiment is looked up)."""
        run = MlflowClient(tracking_uri).get_run(parent_run_id)
        return cls(tracking_uri, run.info.experiment_id, parent_run_id, **kwargs)

    def __getstate__(self) -> dict:
        return dict(self._args)  # no client, no queue: MLflow is the state

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def pending(self) -> int:
        """Queued writes not yet accepted by MLflow."""
        return len(self._pending)

    # -- Tune hooks (driver loop: nothing below may raise because of MLflow) ----------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        # Tune passes only the dict stop criteria and time_budget_s here, not the
        # Stopper; the budget tells on_experiment_end a timeout from an interruption.
        budget = info.get("time_budget_s")
        if budget:
            seconds = budget.total_seconds() if hasattr(budget, "total_seconds") else float(budget)
            self._budget = (time.monotonic(), seconds)
        self._guarded(self._reopen_parent)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._queue_start(trial)
        self._drain()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid, step = trial.trial_id, result.get(STEP_METRIC)
        if tid not in self._started:
            self._queue_start(trial)
        if not isinstance(step, int) or step <= max(self._hwm.get(tid, 0), self._queued.get(tid, 0)):
            self._drain()  # an epoch a restored trial replays: logged (or queued) already
            return
        if result.get("done"):  # set by Tune itself when a scheduler or stopper says STOP
            self._stopped_by_tune.add(tid)
        stamp = int(time.time() * 1000)
        metrics, nonfinite = [Metric(STEP_METRIC, float(step), stamp, step)], []
        for key, value in result.items():
            if key == STEP_METRIC or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if not self._metric_keys(key):
                continue
            value = float(value)
            if not math.isfinite(value):
                nonfinite.append(key)  # MLflow stores NaN; it clamps +-inf to +-1.8e308
            elif key == BEST_METRIC:
                self._best[tid] = max(value, self._best.get(tid, -math.inf))
            metrics.append(Metric(key, value, stamp, step))
        self._queued[tid] = step
        self._pending.append(_Op(tid, "metrics", step=step, metrics=metrics, nonfinite=tuple(nonfinite)))
        self._drain()

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune calls this for trials that returned AND for trials a scheduler (ASHA) or a
        # stop criterion stopped: TuneController._process_trial_result sets done=True on
        # a STOP decision, so only the epoch count tells "completed" from "stopped".
        self._complete(trial, "scheduler" if trial.trial_id in self._stopped_by_tune else "trainable")

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A failed attempt that Tune will retry (FailureConfig.max_failures): not failed yet.
        if trial.trial_id not in self._started:
            self._queue_start(trial)
        self._pending.append(_Op(trial.trial_id, "tags", tags={
            "hpsearch.retries": str(trial.num_failures), "hpsearch.retry_error": _error_text(trial)}))
        self._drain()

    def on_trial_error(self, iteration, trials, trial, **info):
        # Only called once retries are exhausted (TuneController._process_trial_failure).
        self._end(trial, {"hpsearch.status": "failed", "hpsearch.error": _error_text(trial),
                          "hpsearch.retries": str(max(trial.num_failures - 1, 0))}, "FAILED")

    def on_experiment_end(self, trials, **info):
        # Tune calls this after a Ctrl-C too (tune.run -> runner.cleanup()), with the
        # unfinished trials already set TERMINATED but never completed: only trials whose
        # end we (or an earlier driver) logged count as ended.
        self.flush(self._end_flush_s)
        statuses = self._statuses()
        open_trials = [t for t in trials if statuses.get(t.trial_id) not in ENDED]
        if open_trials and self._budget and time.monotonic() - self._budget[0] >= self._budget[1]:
            for trial in open_trials:  # time_budget_s: Tune ended the search, it won't resume
                if trial.trial_id in self._started:
                    self._complete(trial, "time_budget")
            self.flush(self._end_flush_s)
            open_trials = []
        if open_trials:
            _LOG.warning("search interrupted with %d unfinished trials: parent run %s stays RUNNING "
                         "for Tuner.restore (close_parent() ends it)", len(open_trials), self.parent_run_id)
            self._guarded(self._close_parent, None)
        else:
            self._guarded(self._close_parent, "FINISHED")

    # -- public helpers -----------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> int:
        """Retry queued writes with short backoff until none is left or ``timeout_s``.

        Returns:
            The number of writes still pending (0: everything is in MLflow).
        """
        deadline, delay = time.monotonic() + timeout_s, 0.1
        pending = self._drain()
        while pending and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)
            pending = self._drain()
        if pending:
            _LOG.warning("%d tracking batches still pending for %s", pending, self.tracking_uri)
        return pending

    def close_parent(self, status: str = "FINISHED") -> bool:
        """End the parent run (``FINISHED``, ``FAILED``, ``KILLED``) with trial counts.

        For the caller of an interrupted search that will not be resumed; a search that
        ends normally is closed by :meth:`on_experiment_end`. Returns whether it worked.
        """
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
        self.flush(0)
        return self._guarded(self._close_parent, status)

    # -- internals ------------------------------------------------------------------------

    def _queue_start(self, trial) -> None:
        self._started.add(trial.trial_id)
        config = trial.config if isinstance(trial.config, Mapping) else {}
        self._pending.append(_Op(trial.trial_id, "start", params=flatten_params(config),
                                 tags={"mlflow.runName": _run_name(trial.trial_id)}))

    def _complete(self, trial, stopped_by: str) -> None:
        last = int((trial.last_result or {}).get(STEP_METRIC) or 0)
        config = trial.config if isinstance(trial.config, Mapping) else {}
        epochs = config.get("epochs", self._max_epochs)
        done = last >= int(epochs) if epochs is not None else stopped_by == "trainable"
        tags = {"hpsearch.status": "completed" if done else "stopped_early"}
        if not done:
            tags.update({"hpsearch.stopped_at_epoch": str(last), "hpsearch.stopped_by": stopped_by})
        self._end(trial, tags, "FINISHED")

    def _end(self, trial, tags: dict[str, str], status: str) -> None:
        tid = trial.trial_id
        if tid not in self._started:  # e.g. a trial that failed before it started
            self._queue_start(trial)
        best = self._best.get(tid, -math.inf)
        analysed = (trial.metric_analysis or {}).get(BEST_METRIC, {}).get("max")
        if isinstance(analysed, numbers.Real) and math.isfinite(analysed):  # survives restores
            best = max(best, float(analysed))
        step = int((trial.last_result or {}).get(STEP_METRIC) or 0)
        metrics = [Metric(f"best_{BEST_METRIC}", best, int(time.time() * 1000), step)] if math.isfinite(best) else []
        self._outcome[tid] = tags["hpsearch.status"]
        self._pending.append(_Op(tid, "end", step=step, metrics=metrics, tags=tags, status=status))
        self._drain()

    def _drain(self) -> int:
        """Send queued writes in order; stop at the first outage. Returns the number left."""
        while self._pending:
            op = self._pending[0]
            try:
                with self._http_limits():
                    self._send(op)
            except Exception as exc:  # the resilience boundary: tracking never fails a search
                if _is_transient(exc):
                    self._hwm.pop(op.trial_id, None)  # a lost response may have stored it
                    if not self._outage:
                        self._outage = True
                        _LOG.warning("MLflow at %s unavailable, queueing results: %s",
                                     self.tracking_uri, str(exc).splitlines()[0][:300])
                    return len(self._pending)
                _LOG.warning("MLflow refused a %s write of trial %s, dropped: %s", op.kind,
                             op.trial_id, exc, exc_info=not isinstance(exc, MlflowException))
            self._pending.popleft()
        if self._outage:
            self._outage = False
            _LOG.warning("MLflow at %s is back; queued results sent", self.tracking_uri)
        return 0

    def _send(self, op: _Op) -> None:
        tid, client = op.trial_id, self._client
        if op.kind == "start":
            self._open_run(op)
            return
        run_id = self._run_ids.get(tid)
        if run_id is None:  # its start was refused: nothing to attach this write to
            raise MlflowException(f"no MLflow run for trial {tid}", error_code="RESOURCE_DOES_NOT_EXIST")
        tags = [RunTag(k, v[:MAX_TAG_LENGTH]) for k, v in op.tags.items()]
        if op.kind == "metrics":
            if tid not in self._hwm:
                self._load_mark(tid, run_id)
            if op.step <= self._hwm[tid]:
                return  # logged by an earlier driver, or before a lost response
            if op.nonfinite:
                self._nonfinite.setdefault(tid, set()).update(op.nonfinite)
                tags.append(RunTag(NONFINITE_TAG, ",".join(sorted(self._nonfinite[tid]))))
            client.log_batch(run_id, metrics=op.metrics, tags=tags)
            self._hwm[tid] = op.step
            return
        client.log_batch(run_id, metrics=op.metrics, tags=tags)
        if op.status:
            client.set_terminated(run_id, op.status)
            self._closed.add(tid)

    def _open_run(self, op: _Op) -> None:
        """Get or create the trial's child run; a resumed ended run is set RUNNING again."""
        tid, client = op.trial_id, self._client
        if tid in self._run_ids and tid not in self._closed:
            return
        run = client.get_run(self._run_ids[tid]) if tid in self._run_ids else self._find_run(tid)
        if run is None:
            run = client.create_run(self.experiment_id, run_name=op.tags["mlflow.runName"], tags={
                "mlflow.parentRunId": self.parent_run_id, "hpsearch.trial_id": tid,
                "hpsearch.status": "running"})
        elif run.info.status != "RUNNING" or run.data.tags.get("hpsearch.status") != "running":
            client.update_run(run.info.run_id, status="RUNNING")
            client.set_tag(run.info.run_id, "hpsearch.status", "running")
        known = run.data.params
        _log_params(client, run.info.run_id, {k: v for k, v in op.params.items() if k not in known})
        self._run_ids[tid] = run.info.run_id
        self._closed.discard(tid)

    def _find_run(self, tid: str):
        runs = self._client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`hpsearch.trial_id` = '{tid}' and "
                          f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        return runs[0] if runs else None

    def _load_mark(self, tid: str, run_id: str) -> None:
        run = self._client.get_run(run_id)
        self._hwm[tid] = int(run.data.metrics.get(STEP_METRIC, 0))
        noted = run.data.tags.get(NONFINITE_TAG, "")
        self._nonfinite.setdefault(tid, set()).update(k for k in noted.split(",") if k)

    def _statuses(self) -> dict[str, str | None]:
        """Trial id -> hpsearch.status of every child run, this process's view first."""
        found: dict[str, str | None] = {}
        try:
            token = None
            while True:
                page = self._client.search_runs(
                    [self.experiment_id], max_results=1000, page_token=token,
                    filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
                found.update((r.data.tags.get("hpsearch.trial_id"), r.data.tags.get("hpsearch.status"))
                             for r in page)
                token = page.token
                if not token:
                    break
        except Exception as exc:  # resilience boundary: an unknown status keeps the parent open
            _LOG.warning("cannot read trial statuses from MLflow: %s", exc)
        return {**found, **self._outcome}

    def _reopen_parent(self) -> None:
        run = self._client.get_run(self.parent_run_id)
        if run.info.status != "RUNNING":  # e.g. a finished search restored with restart_errored
            self._client.update_run(self.parent_run_id, status="RUNNING")
        self._client.set_tag(self.parent_run_id, "hpsearch.status", "running")

    def _close_parent(self, status: str | None) -> None:
        counts = collections.Counter(s for s in self._statuses().values())
        tags = {f"hpsearch.trials_{name}": str(counts.get(name, 0)) for name in sorted(ENDED)}
        tags["hpsearch.trials_total"] = str(sum(counts.values()))
        tags["hpsearch.status"] = "interrupted" if status is None else status.lower()
        self._client.log_batch(self.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if status is not None:
            self._client.set_terminated(self.parent_run_id, status)

    def _http_limits(self):
        return _scoped_env(self._http_env if self.tracking_uri.startswith("http") else {})

    def _guarded(self, fn: Callable, *args: Any) -> bool:
        try:
            with self._http_limits():
                fn(*args)
            return True
        except Exception as exc:  # resilience boundary: never raise into Ray's loop
            _LOG.warning("MLflow update of parent run %s failed: %s", self.parent_run_id, exc)
            return False


def _run_name(trial_id: str) -> str:
    suffix = trial_id.rsplit("_", 1)[-1]  # Tune's ids are <experiment hash>_<counter>
    return f"trial-{suffix}" if suffix.isdigit() else trial_id


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT
    return isinstance(exc, OSError)  # requests' ConnectionError and Timeout are OSErrors


def _error_text(trial, limit: int = 500) -> str:
    """Tune's record of the trial's last failure: the exception line, then the innermost
    frames of the traceback (where the trainable raised), at most ``limit`` characters."""
    text = None
    try:  # the driver's copy is current; storage (get_error) is synced later
        if trial.error_file and os.path.exists(trial.error_file):
            text = Path(trial.error_file).read_text(errors="replace")
        else:
            text = trial.get_error()
    except (OSError, AttributeError):  # no storage (a stub trial) or an unreadable file
        pass
    if not text:
        return "unknown error (no error file)"
    block = _ANSI.sub("", str(text).rsplit("Failure # ", 1)[-1])  # "N (occurred at ...)" + error
    lines = [ln.rstrip() for ln in block.splitlines()[1:] if ln.strip(" ^~")]
    last = max((i for i, ln in enumerate(lines) if not ln.startswith(" ")), default=len(lines))
    final, size, kept = (lines[last:] or [""])[0], 0, []
    for line in reversed(lines[:last]):  # innermost frames first, while they fit
        size += len(line) + 1
        if len(final) + size > limit:
            break
        kept.insert(0, line)
    return "\n".join([final, *kept])[:limit]


@contextlib.contextmanager
def _scoped_env(values: Mapping[str, str]):
    """Set the environment variables the user has not set, for one block: MLflow reads
    its HTTP retry settings from the environment on every request (no argument exists)."""
    added = [key for key in values if key not in os.environ]
    os.environ.update({key: values[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
