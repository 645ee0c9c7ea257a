"""A Ray Tune trial that answers each epoch from a :class:`~hpsearch.curves.table.CurveTable`.

:class:`ReplayTrainable` stands in for :class:`~hpsearch.search.trainable.SegmentationTrainable`
and reports the same result keys (``val_dice``, ``val_loss``, ``epoch_seconds``,
``best_<metric>``, ``epoch_cap``, ``done``, ``node_id``; a failed row as the real trial reports
a failure a retry cannot fix), so the real Tuner, OptunaSearch, ConcurrencyLimiter,
schedulers, :class:`~hpsearch.tracking.tracker.MLflowTracker`, progress and results code run
unchanged on it. Only the epochs are not trained: a trial answers from the recorded
configuration nearest to its own (:meth:`CurveTable.nearest`), cut at its sampled ``epochs``.

Time is simulated: each step sleeps the recorded ``epoch_seconds`` times ``time_scale``, so
which trial reports first, and so what ASHA and TPE have seen when they decide, follows the
recorded durations. A curve that ended before its cap (a recorded run that diverged or
failed) is reported as the real trial reports a diverged run: ``hpsearch_failure: nan``.

The table goes to the actors once, through ``tune.with_parameters`` (Ray's object store).

Example:
    >>> tuner = build_tuner(job, space, None, name="replay", storage=str(tmp),  # doctest: +SKIP
    ...                     callbacks=[tracker], trainable=replay_trainable(table, job, time_scale=0.002))
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune

from hpsearch.curves.table import CurveTable
from hpsearch.errors import HpsearchError
from hpsearch.failures import NAN
from hpsearch.outcome import ERROR_KEY, FAILURE_KEY
from hpsearch.search.checkpointing import CheckpointClock

STATE_FILE = "replay.json"
SIMULATED_KEY = "simulated_seconds"  # the trial's recorded seconds so far (not slept ones)
ROW_KEY = "replay_row"               # which recorded configuration answered
METRICS = ("val_dice", "val_loss")   # what a table records, so what a replayed search may rank by


class ReplayTrainable(tune.Trainable):
    """One configuration, replayed from a learning-curve table.

    ``setup`` keyword arguments (bound with ``tune.with_parameters``):
        table: The recorded curves.
        max_epochs: Epoch cap of the search (``scheduler.max_epochs``).
        epochs: Epochs of a trial whose configuration does not sample ``epochs`` (the
            job's ``params.epochs``; default ``max_epochs``).
        metric, mode: The search metric (``val_dice`` or ``val_loss``) for ``best_<metric>``.
        time_scale: Seconds slept per recorded second of an epoch (0: no sleep).
        checkpoint_interval_s: Recorded training seconds between checkpoints, so a replayed
            trial saves them when the recorded one would have
            (:class:`~hpsearch.search.checkpointing.CheckpointClock`).
    """

    def setup(self, config: dict[str, Any], *, table: CurveTable, max_epochs: int, epochs: int | None = None,
              metric: str = "val_dice", mode: str = "max", time_scale: float = 0.0,
              checkpoint_interval_s: float = 0.0) -> None:
        check_replayable(table, max_epochs, metric)
        self._table, self._max_epochs, self._default_epochs = table, max_epochs, epochs or max_epochs
        self._metric, self._mode, self._time_scale = metric, mode, time_scale
        self._node = ray.get_runtime_context().get_node_id()
        self._simulated = 0.0
        self._clock = CheckpointClock(checkpoint_interval_s, now=lambda: self._simulated)
        self._build(config)

    def _build(self, config: dict[str, Any]) -> None:
        # A new trial (setup, or reset_config in a reused actor) starts at epoch 0.
        self._row = self._table.nearest(config)
        self._cap = min(int(config.get("epochs", self._default_epochs)), self._max_epochs)
        self._curve = self._table.curve(self._row, self._cap)
        self._epoch, self._simulated = 0, 0.0
        self._clock.restart()
        self._best = -math.inf if self._mode == "max" else math.inf

    def step(self) -> dict[str, Any]:
        recorded = len(self._curve["val_dice"])
        if self._epoch >= self._cap:
            # Restored from the checkpoint of its final epoch: report that epoch again.
            return self._result(self._epoch - 1)
        if self._epoch >= recorded:  # the recorded run ended here: it diverged or failed
            return {self._metric: math.nan, FAILURE_KEY: NAN, "epoch_cap": self._cap, "done": True,
                    ERROR_KEY: f"TrainingDiverged: the recorded run of table {self._table.name} row {self._row} "
                               f"ended after epoch {recorded}"}
        seconds = float(self._curve["epoch_seconds"][self._epoch])
        if self._time_scale > 0:
            time.sleep(seconds * self._time_scale)
        self._simulated += seconds
        self._epoch += 1
        value = float(self._curve[self._metric][self._epoch - 1])
        if math.isfinite(value) and (value > self._best if self._mode == "max" else value < self._best):
            self._best = value
        return self._result(self._epoch - 1)

    def _result(self, index: int) -> dict[str, Any]:
        return self._clock.mark({
            "epoch": index + 1,
            "val_dice": float(self._curve["val_dice"][index]),
            "val_loss": float(self._curve["val_loss"][index]),
            "epoch_seconds": float(self._curve["epoch_seconds"][index]),
            f"best_{self._metric}": self._best,
            SIMULATED_KEY: self._simulated,
            ROW_KEY: self._row,
            "node_id": self._node,
            "epoch_cap": self._cap,
            "done": index + 1 >= self._cap,
        })

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self._clock.restart()
        state = {"row": self._row, "epoch": self._epoch, "best": self._best, "simulated": self._simulated}
        (Path(checkpoint_dir) / STATE_FILE).write_text(json.dumps(state))

    def load_checkpoint(self, checkpoint: str) -> None:
        state = json.loads((Path(checkpoint) / STATE_FILE).read_text())
        if state["row"] != self._row:  # the table changed under a resumed search
            raise HpsearchError(f"{checkpoint}: replayed row {state['row']} but table {self._table.name} now "
                                f"answers row {self._row}; resume with the table the search started with")
        self._epoch, self._best, self._simulated = state["epoch"], state["best"], state["simulated"]
        self._clock.restart()

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)
        return True


def check_replayable(table: CurveTable, max_epochs: int, metric: str) -> None:
    """Refuse a search the table cannot answer.

    Raises:
        HpsearchError: ``max_epochs`` exceeds the recorded epochs, or ``metric`` is not recorded.
    """
    if max_epochs > table.max_epochs:
        raise HpsearchError(f"scheduler.max_epochs: {max_epochs} exceeds the {table.max_epochs} epochs table "
                            f"{table.name} recorded; lower it or record longer curves")
    if metric not in METRICS:
        raise HpsearchError(f"search.metric: {metric} is not in table {table.name}; a replayed search ranks by "
                            f"{' or '.join(METRICS)}")


def replay_trainable(table: CurveTable, job, *, time_scale: float = 0.0) -> Callable:
    """:class:`ReplayTrainable` bound to ``table`` (in the object store) and the job's search settings,
    with the job's resources per trial: what ``build_tuner(..., trainable=...)`` takes.

    Raises:
        HpsearchError: The table cannot answer the job's search (:func:`check_replayable`).
    """
    check_replayable(table, job.scheduler.max_epochs, job.search.metric)
    bound = tune.with_parameters(
        ReplayTrainable, table=table, max_epochs=job.scheduler.max_epochs,
        epochs=job.params.get("epochs"), metric=job.search.metric, mode=job.search.mode, time_scale=time_scale,
        checkpoint_interval_s=job.storage.checkpoint_interval_s)
    return tune.with_resources(bound, {"cpu": job.resources.cpus_per_trial, "gpu": job.resources.gpus_per_trial})
