"""MLflow tracking of a search: one parent run, one nested child run per Ray Tune trial.

Logged by a Tune callback on the driver, so trials on other nodes never need the tracking
server, and not by Ray's ``MLflowLoggerCallback``: it has no nested runs (ray#19978) and
re-logs the epochs a restored trial replays (ray#48664). Exactly once: a child's steps are
1, 2, ... across retries, restores and ``Tuner.restore`` by a new driver (its high-water mark
is its latest ``training_iteration``, logged in the same ``log_batch`` as each epoch). While
MLflow is down, writes queue up in order and are sent later; tracking never fails a search.
Child ``hpsearch.status`` is an :class:`~hpsearch.outcome.Outcome` word: ``running``,
``completed``, ``stopped_early`` (+ ``hpsearch.stopped_at_epoch``, e.g. by ASHA), ``failed``
(+ ``hpsearch.error`` and ``hpsearch.failure``, the :mod:`hpsearch.failures` kind) or ``lost``.
The parent is FINISHED once every trial has ended; an interrupted search (Ctrl-C) stays
RUNNING (``hpsearch.status=interrupted``) for ``Tuner.restore``, unless ``close_parent()``.

Example:
    >>> uri = "sqlite:///mlflow.db"
    >>> parent = start_search_run(uri, "demo-lv", run_name="search-1", params={},  # doctest: +SKIP
    ...     tags={"hpsearch.job": "demo-lv"}, artifacts={"job.yaml": Path("jobs/demo.yaml")})
    >>> experiment_id = MlflowClient(uri).get_run(parent).info.experiment_id  # doctest: +SKIP
    >>> tracker = MLflowTracker(uri, experiment_id, parent)  # doctest: +SKIP
    >>> tune.Tuner(trainable, run_config=tune.RunConfig(callbacks=[tracker])).fit()  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import numbers
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from ray.tune import Callback

from hpsearch.failures import classify_failure, trial_error_text
from hpsearch.outcome import ENDED, ERROR_KEY, FAILURE_KEY, Outcome, SearchStatus, decide_outcome
from hpsearch.tracking.runs import (
    MAX_TAG_LENGTH,
    MAX_TRIALS,
    PARENT_TAG,
    STATUS_TAG,
    TRIAL_TAG,
    flatten_params,
    log_params,
)
from hpsearch.tracking.store import scoped_env

_LOG = logging.getLogger(__name__)

DEFAULT_METRICS = frozenset({"loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds", "fidelity",
                             "fold", "budget"})  # the last two: where a cross-validated trial is
STEP_METRIC = "training_iteration"  # in every batch: the run's high-water mark
NONFINITE_TAG = "hpsearch.nonfinite_metrics"
NODE_KEY = "node_id"  # a trial's results name the Ray node that produced them
# Errors a retry cannot fix (a bad key, a deleted run) drop the write rather than block the queue
# forever; others (refused connection, timeout, 5xx, a locked database) are an outage: retried.
_PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                        "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"})


_PER_FOLD_KEY = re.compile(r"^fold\d+/")
_MAX_BATCH_METRICS = 900  # MLflow takes at most 1000 metrics in one log_batch


def default_metric_keys(key: str) -> bool:
    """The per-epoch metrics of :meth:`hpsearch.trainer.EpochResult.metrics` worth a chart, and
    a cross-validated trial's objective (``cv_*``) and per-fold curves (``fold1/val_dice``)."""
    return (key in DEFAULT_METRICS or key.startswith(("val_dice_", "val_iou_", "cv_"))
            or bool(_PER_FOLD_KEY.match(key)))


@dataclasses.dataclass
class _Op:
    trial_id: str
    kind: str  # "start" (params in tags), "metrics" (one epoch), "tags", "end" (+ status)
    step: int = 0
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    status: str | None = None


class MLflowTracker(Callback):
    """Ray Tune callback logging each trial as a child run of ``parent_run_id``.

    Args:
        tracking_uri, experiment_id, parent_run_id: MLflow store and the parent run.
        metric, mode: The search metric; each child run gets ``best_<metric>`` when it ends.
        metric_keys: Which numeric result keys to log (default :func:`default_metric_keys`).
        max_epochs: Epochs of a complete trial if results have no ``epoch_cap`` and the
            config no ``epochs``; with none, a trial Tune stopped counts as stopped early.
        http_retries, http_timeout_s: Per MLflow request unless set in the environment
            (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._TIMEOUT``): MLflow's 7 retries with
            backoff would block Ray's driver loop for minutes per call while a server is down.
        end_flush_s: How long :meth:`on_experiment_end` retries queued writes.
        send_interval_s: Epochs and tags wait in the queue until this long after the last
            send (a trial's start and end go at once; Tune's loop drains the queue after every
            step). One ``log_batch`` then carries every queued epoch of a trial: a sqlite
            ``log_batch`` costs the driver ~20 ms of CPU whatever its size, which at one call
            per epoch made MLflow the driver's largest cost when epochs are short (one second
            keeps MLflow's UI and the dashboard current). 0 sends every write at once.
            Waiting loses nothing on a killed driver: Tune asks every callback for its state
            (:meth:`get_state`) while it saves an experiment snapshot, before the snapshot
            reaches storage, and the tracker sends its queue then. A restored search resumes
            its trials from the snapshot's checkpoints, so every epoch it does not train again
            is in MLflow.

    Tune pickles callbacks into ``tuner.pkl`` and ``Tuner.restore`` uses those copies: only
    the arguments are pickled; all other state is read back from MLflow.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, *,
                 metric: str = "val_dice", mode: str = "max",
                 metric_keys: Callable[[str], bool] | None = None, max_epochs: int | None = None,
                 http_retries: int = 1, http_timeout_s: int = 10, end_flush_s: float = 30.0,
                 send_interval_s: float = 1.0):
        if not (tracking_uri and experiment_id and parent_run_id):
            raise ValueError("tracking_uri, experiment_id and parent_run_id are required")
        self._args = {k: v for k, v in locals().items() if k != "self"}
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.metric, self.mode = metric, mode  # the search's: its best goes to the child run
        self._metric_keys, self._max_epochs = metric_keys or default_metric_keys, max_epochs
        self._http_env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(http_retries), "MLFLOW_HTTP_REQUEST_TIMEOUT":
                          str(http_timeout_s)} if tracking_uri.startswith("http") else {}
        self._client, self._end_flush_s = MlflowClient(tracking_uri), end_flush_s
        self._send_interval_s, self._last_send = send_interval_s, 0.0
        self._pending: collections.deque[_Op] = collections.deque()
        # Per trial id: child run id, highest step in MLflow (high-water mark), highest step
        # queued, the hpsearch.status it ended with, non-finite metric keys.
        self._run_ids, self._hwm, self._queued, self._outcome = {}, {}, {}, {}
        self._nonfinite: dict[str, set[str]] = collections.defaultdict(set)
        self._nodes: dict[str, list[str]] = collections.defaultdict(list)  # Ray nodes, in order
        # Child runs an earlier driver created, by trial id, read once in setup(); None: not read
        # (or an outage since, when a create_run whose response was lost may have stored a run).
        self._earlier: dict[str, Any] | None = None
        # Trial ids with a queued start, whose run this process ended, that Tune stopped.
        self._started, self._closed, self._done_by_tune = set(), set(), set()
        self._outage = False

    def __getstate__(self) -> dict:
        return dict(self._args)  # no client, no queue: MLflow holds the state

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def get_state(self) -> None:
        """Send the queue: Tune calls this while it saves an experiment snapshot.

        Ray writes the snapshot (each trial's latest checkpoint) to its driver staging folder,
        then the searcher's and the callbacks' state, and only then syncs it to storage, where
        ``Tuner.restore`` reads it (``TuneController.save_to_dir``, ``sync_up_experiment_state``).
        So every epoch up to a checkpoint a restore would start from reaches MLflow first (or
        stays queued through an outage, as any write does). No state of its own: None.
        """
        self._drain()
        return None

    @property
    def pending(self) -> int:
        """Queued writes not yet accepted by MLflow."""
        return len(self._pending)

    # Tune hooks: they run in Ray's driver loop, so nothing may raise because of MLflow.

    def setup(self, **info):
        self._guarded(self._client.set_tag, self.parent_run_id, STATUS_TAG, SearchStatus.RUNNING.value)
        self._guarded(self._read_earlier_runs)

    def on_step_end(self, iteration, trials, **info):
        if self._pending and time.monotonic() - self._last_send >= self._send_interval_s:
            self._drain()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._push(trial, None, start=True)  # also for retries, restores and reused actors

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid, step, seen = trial.trial_id, result.get(STEP_METRIC), self._queued.get(trial.trial_id, 0)
        node = result.get(NODE_KEY)
        if node and self._nodes[tid][-1:] != [node]:  # first result, or moved after a restore
            self._nodes[tid].append(node)
            self._push(trial, _Op(tid, "tags", tags={
                "hpsearch.node_id": node, "hpsearch.nodes": ",".join(self._nodes[tid])}))
        if not isinstance(step, numbers.Integral) or step <= max(self._hwm.get(tid, 0), seen):
            return self._push(trial, None)  # an epoch a restored trial replays: logged already
        if result.get("done"):  # set by Tune on a STOP decision (scheduler, stopper)
            self._done_by_tune.add(tid)
        step, stamp = int(step), int(time.time() * 1000)
        metrics = [Metric(STEP_METRIC, float(step), stamp, step)] + [
            Metric(key, float(value), stamp, step) for key, value in result.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool)
            and key != STEP_METRIC and self._metric_keys(key)]
        self._queued[tid] = step
        return self._push(trial, _Op(tid, "metrics", step, metrics))

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune calls this for a trial that ended by itself and for one a scheduler (ASHA) or
        # stopper stopped, after setting done=True in its last result: only the epoch count
        # tells them apart (TuneController._process_trial_result, stop_trial). A trainable
        # that met a failure a retry cannot fix reports it and ends (see hpsearch.failures).
        last, config = trial.last_result or {}, trial.config if isinstance(trial.config, Mapping) else {}
        epoch, epochs = int(last.get(STEP_METRIC) or 0), last.get("epoch_cap") or config.get("epochs")
        failure = last.get(FAILURE_KEY)
        outcome = decide_outcome(epochs_run=epoch, epoch_cap=int(epochs or self._max_epochs or 0) or None,
                                 failed=bool(failure), stopped_by_scheduler=trial.trial_id in self._done_by_tune)
        tags = {STATUS_TAG: outcome.value}
        if outcome is Outcome.STOPPED_EARLY:
            tags["hpsearch.stopped_at_epoch"] = str(epoch)
        elif outcome is Outcome.FAILED:
            tags.update({"hpsearch.failure": str(failure), "hpsearch.error": str(last.get(ERROR_KEY, ""))[:500]})
        self._end(trial, tags, "FAILED" if outcome is Outcome.FAILED else "FINISHED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A failed attempt that Tune retries (FailureConfig.max_failures): not failed yet.
        self._push(trial, _Op(trial.trial_id, "tags", tags={
            "hpsearch.retries": str(trial.num_failures), "hpsearch.retry_error": trial_error_text(trial)}))

    def on_trial_error(self, iteration, trials, trial, **info):
        # Called only once Tune gives up on the trial (TuneController._process_trial_failure).
        error = trial_error_text(trial)
        self._end(trial, {STATUS_TAG: Outcome.FAILED.value, "hpsearch.error": error,
                          "hpsearch.failure": classify_failure(error),
                          "hpsearch.retries": str(max(trial.num_failures - 1, 0))}, "FAILED")

    def on_experiment_end(self, trials, **info):
        # Tune calls this after a Ctrl-C too (tune.run -> runner.cleanup()), unfinished trials set
        # TERMINATED but never completed: a trial has ended only if we (or an earlier driver) said so.
        self.flush(self._end_flush_s)
        statuses = self._statuses()
        self._close_lost(statuses, {t.trial_id for t in trials})
        unfinished = sum(statuses.get(t.trial_id) not in ENDED for t in trials)
        if unfinished:
            _LOG.warning("search interrupted with %d unfinished trials: parent run %s stays RUNNING "
                         "for Tuner.restore; close_parent() ends it", unfinished, self.parent_run_id)
        self._guarded(self._close_parent, None if unfinished else "FINISHED", statuses)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Retry queued writes with short backoff until none is left or ``timeout_s`` passed;
        return how many are still pending (0: all are in MLflow)."""
        deadline, delay = time.monotonic() + timeout_s, 0.1
        pending = self._drain()
        while pending and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay, pending = min(delay * 2, 2.0), self._drain()
        if pending:
            _LOG.warning("%d tracking batches still pending for %s", pending, self.tracking_uri)
        return pending

    def close_parent(self, status: str = "FINISHED") -> bool:
        """End the parent run (``FINISHED``, ``FAILED``, ``KILLED``) with trial counts, e.g.
        for an interrupted search that will not be resumed; return whether MLflow took it."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
        self.flush(0)
        return self._guarded(self._close_parent, status, None)

    def _push(self, trial, op: _Op | None, start: bool = False) -> None:
        if start or trial.trial_id not in self._started:  # e.g. a trial failing before it started
            self._started.add(trial.trial_id)
            params = flatten_params(trial.config if isinstance(trial.config, Mapping) else {})
            self._pending.append(_Op(trial.trial_id, "start", tags=params))
        if op is not None:
            self._pending.append(op)
        waits = not start and (op is None or op.kind in ("metrics", "tags"))
        if not (waits and time.monotonic() - self._last_send < self._send_interval_s):
            self._drain()

    def _end(self, trial, tags: dict[str, str], status: str) -> None:
        step = int((trial.last_result or {}).get(STEP_METRIC) or 0)
        best = (trial.metric_analysis or {}).get(self.metric, {}).get(self.mode)  # incl. earlier drivers'
        if (trial.last_result or {}).get("cv_folds"):  # cross-validated: the mean over its folds
            best = trial.last_result.get(self.metric)
        stamp, ok = int(time.time() * 1000), isinstance(best, numbers.Real) and math.isfinite(best)
        metrics = [Metric(f"best_{self.metric}", float(best), stamp, step)] if ok else []
        self._outcome[trial.trial_id] = Outcome(tags[STATUS_TAG])
        self._push(trial, _Op(trial.trial_id, "end", step, metrics, tags, status=status))

    def _drain(self) -> int:
        """Send queued writes in order (each trial's in its order; a trial's queued epochs
        together), up to the first outage; return how many are left."""
        self._last_send = time.monotonic()
        while self._pending:
            op = self._pending[0]
            batch = self._batch_of(op)
            try:
                with scoped_env(self._http_env):
                    self._send(op, batch[1:])
            except Exception as exc:  # the resilience boundary: tracking never fails a search
                # requests' ConnectionError and Timeout are OSErrors; any other type is a bug.
                if isinstance(exc, OSError) or (isinstance(exc, MlflowException)
                                                and exc.error_code not in _PERMANENT):
                    self._hwm.pop(op.trial_id, None)  # a lost response may have stored it
                    self._earlier = None  # ... or created a run: look runs up by trial id again
                    if not self._outage:
                        self._outage = True
                        _LOG.warning("MLflow at %s unavailable, queueing results: %s",
                                     self.tracking_uri, str(exc)[:300])
                    return len(self._pending)
                _LOG.warning("MLflow refused a %s write of trial %s, dropped: %s", op.kind, op.trial_id,
                             exc, exc_info=not isinstance(exc, MlflowException))
            self._pending.popleft()
            if len(batch) > 1:
                sent = {id(b) for b in batch}
                self._pending = collections.deque(o for o in self._pending if id(o) not in sent)
        if self._outage:
            self._outage = False
            _LOG.warning("MLflow at %s is back; queued results sent", self.tracking_uri)
        return 0

    def _batch_of(self, op: _Op) -> list[_Op]:
        """``op``, and for an epoch every later queued epoch of its trial up to the trial's next
        other write (its order kept), within MLflow's 1000 metrics per ``log_batch``."""
        if op.kind != "metrics":
            return [op]
        batch, size = [op], len(op.metrics)
        for later in itertools.islice(self._pending, 1, None):
            if later.trial_id != op.trial_id:
                continue
            if later.kind != "metrics" or size + len(later.metrics) > _MAX_BATCH_METRICS:
                break
            batch.append(later)
            size += len(later.metrics)
        return batch

    def _send(self, op: _Op, more: list[_Op] = ()) -> None:
        """One write; ``more`` are later epochs of the same trial, sent in the same call."""
        tid, client = op.trial_id, self._client
        if op.kind == "start":
            self._open_run(op)
            return
        if (run_id := self._run_ids.get(tid)) is None:  # its start was refused
            raise MlflowException(f"no MLflow run for trial {tid}", error_code="RESOURCE_DOES_NOT_EXIST")
        tags = [RunTag(k, v[:MAX_TAG_LENGTH]) for k, v in op.tags.items()]
        if op.kind == "metrics":
            if tid not in self._hwm:  # forgotten in an outage: ask MLflow again
                self._note_logged(tid, client.get_run(run_id))
            epochs, step = [], self._hwm[tid]
            for epoch in (op, *more):  # skip what an earlier driver logged, or before a lost response
                if epoch.step > step:
                    epochs.append(epoch)
                    step = epoch.step
            if not epochs:
                return
            metrics = [m for epoch in epochs for m in epoch.metrics]
            # MLflow 3 stores NaN as NaN but clamps +-inf to +-1.8e308: both are logged and named.
            if nonfinite := {m.key for m in metrics if not math.isfinite(m.value)}:
                self._nonfinite[tid].update(nonfinite)
                tags.append(RunTag(NONFINITE_TAG, ",".join(sorted(self._nonfinite[tid]))))
            client.log_batch(run_id, metrics=metrics, tags=tags)  # one call for the trial's queued epochs
            self._hwm[tid] = step
            return
        client.log_batch(run_id, metrics=op.metrics, tags=tags)
        if op.status:
            client.set_terminated(run_id, op.status)
            self._closed.add(tid)

    def _open_run(self, op: _Op) -> None:
        """Get or create the trial's child run; set an ended one RUNNING again (a resume)."""
        tid, client = op.trial_id, self._client
        if tid in self._run_ids and tid not in self._closed:
            return
        # A new driver (Tuner.restore) finds and continues the run an earlier one created.
        if tid in self._run_ids:
            runs = [client.get_run(self._run_ids[tid])]
        elif self._earlier is not None:
            runs = [self._earlier.pop(tid)] if tid in self._earlier else []
        else:
            runs = client.search_runs([self.experiment_id], max_results=1, filter_string=(
                f"tags.`{TRIAL_TAG}` = '{tid}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"))
        if not runs:
            n = tid.rsplit("_", 1)[-1]  # Tune's trial ids are <experiment hash>_<counter>
            run = client.create_run(self.experiment_id, run_name=f"trial-{n}" if n.isdigit() else tid,
                                    tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: tid,
                                          STATUS_TAG: Outcome.RUNNING.value})
        elif (run := runs[0]).info.status != "RUNNING" or run.data.tags.get(STATUS_TAG) != Outcome.RUNNING:
            client.update_run(run.info.run_id, status="RUNNING")
            client.set_tag(run.info.run_id, STATUS_TAG, Outcome.RUNNING.value)
        log_params(client, run.info.run_id, {k: v for k, v in op.tags.items() if k not in run.data.params})
        self._run_ids[tid] = run.info.run_id
        self._closed.discard(tid)
        self._note_logged(tid, run)

    def _note_logged(self, tid: str, run) -> None:
        """What the trial's run holds already: its high-water mark and non-finite metric keys."""
        self._hwm[tid] = int(run.data.metrics.get(STEP_METRIC, 0))
        self._nonfinite[tid].update(filter(None, run.data.tags.get(NONFINITE_TAG, "").split(",")))

    def _read_earlier_runs(self) -> None:
        """The child runs of this search in MLflow, by trial id: one query in setup instead
        of one per trial start (a sqlite tag search costs more as a search grows)."""
        runs = self._client.search_runs([self.experiment_id], max_results=MAX_TRIALS, filter_string=(
            f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'"))
        self._earlier = {tid: run for run in runs if (tid := run.data.tags.get(TRIAL_TAG))}

    def _statuses(self) -> dict[str | None, str | None]:
        """Trial id -> ``hpsearch.status`` of every child run, this process's view first."""
        found: dict = {}
        try:
            with scoped_env(self._http_env):
                runs = self._client.search_runs([self.experiment_id], max_results=MAX_TRIALS, filter_string=(
                    f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'"))
            found = {r.data.tags.get(TRIAL_TAG): Outcome.parse(r.data.tags.get(STATUS_TAG)) for r in runs}
            for run in runs:
                self._run_ids.setdefault(run.data.tags.get(TRIAL_TAG), run.info.run_id)
        except Exception as exc:  # resilience boundary: an unknown status keeps the parent open
            _LOG.warning("cannot read trial statuses from MLflow: %s", exc)
        return {**found, **self._outcome}

    def _close_lost(self, statuses: dict, known: set[str]) -> None:
        """End child runs of trials this search no longer knows, so none stays RUNNING forever.

        A driver killed between starting a trial and Ray's next experiment snapshot leaves a
        run whose trial the resumed search never saw: Optuna proposes that slot anew.
        """
        for tid, status in list(statuses.items()):
            if tid is None or tid in known or status in ENDED or tid not in self._run_ids:
                continue
            ok = self._guarded(self._client.log_batch, self._run_ids[tid], [], [], [
                RunTag(STATUS_TAG, Outcome.LOST.value),
                RunTag("hpsearch.note", "started by a driver that was killed before Ray saved the trial; "
                                        "the resumed search proposed a new trial instead")])
            if ok and self._guarded(self._client.set_terminated, self._run_ids[tid], "KILLED"):
                statuses[tid] = self._outcome[tid] = Outcome.LOST

    def _close_parent(self, status: str | None, statuses: dict | None) -> None:
        counts = collections.Counter((statuses or self._statuses()).values())
        tags = {f"hpsearch.trials_{name}": str(counts[name]) for name in sorted(ENDED)}
        tags["hpsearch.trials_total"] = str(sum(counts.values()))
        tags[STATUS_TAG] = SearchStatus.INTERRUPTED.value if status is None else status.lower()
        self._client.log_batch(self.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if status is not None:
            self._client.set_terminated(self.parent_run_id, status)

    def _guarded(self, fn: Callable, *args: Any) -> bool:
        try:
            with scoped_env(self._http_env):
                fn(*args)
            return True
        except Exception as exc:  # resilience boundary: never raise into Ray's loop
            _LOG.warning("MLflow update of parent run %s failed: %s", self.parent_run_id, exc)
            return False
