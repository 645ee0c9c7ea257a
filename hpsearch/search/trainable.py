"""The Ray Tune trial: a class Trainable stepping the core :class:`~hpsearch.trainer.Trainer`.

One ``step`` is one epoch, so ASHA's ``training_iteration`` counts epochs. The class
API (rather than a function trainable) lets Ray reuse the actor across trials
(``reuse_actors=True`` + :meth:`reset_config`): TensorFlow's import and runtime start
cost seconds, paid once per actor instead of once per trial.

The preprocessed data arrives through ``tune.with_parameters``: Ray puts it in the
object store once and every trial on a node reads the same read-only arrays. With
cross-validation it is one dataset per fold, trained in sequence by one trial
(:mod:`hpsearch.search.folds` says what such a trial reports and how ASHA judges it).
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from hpsearch.data.preprocess import PreparedData
from hpsearch.data.volume_data import VolumeData
from hpsearch.errors import first_line
from hpsearch.failures import RECURRING, failure_kind
from hpsearch.models.footprint import check_fits
from hpsearch.outcome import ERROR_KEY, FAILURE_KEY
from hpsearch.runtime import RuntimeConfig, configure_tensorflow, trial_memory_bytes
from hpsearch.search.checkpointing import CheckpointClock
from hpsearch.search.folds import FOLDS_FILE, FoldProgress, fold_dir, objective_name
from hpsearch.space import split_config

# Per-epoch keys also reported per fold (``fold1/val_dice``): the child run's per-fold curves.
_PER_FOLD = ("loss", "val_loss", "val_dice")


class SegmentationTrainable(tune.Trainable):
    """One hyperparameter configuration of one model family.

    ``setup`` keyword arguments (bound with ``tune.with_parameters``):
        data: Preprocessed data, one per fold (shared through the object store); with
            more than one, the trial cross-validates (:mod:`hpsearch.search.folds`).
        model: Model family name.
        base_params: The job's ``params``; the trial's config overrides them.
        runtime: The job's ``runtime`` section as a dict; threads follow the
            trial's CPUs.
        max_epochs: Epoch cap of the search (``scheduler.max_epochs``).
        metric, mode: The search metric; the trainer keeps its best epoch by it.
        checkpoint_interval_s: Training seconds between checkpoints (:class:`CheckpointClock`).
        fidelity: ``scheduler.fidelity`` as a dict (cheaper first epochs; :mod:`hpsearch.fidelity`).

    A failure that would only happen again (diverged loss, out of memory, a configuration
    that cannot be built) is reported as the trial's last result (``hpsearch_failure``) and
    ends the trial, rather than raised: Ray would retry a raised error from the last
    checkpoint ``max_failures`` times, paying for the same failure again. Other errors (a
    lost node, a killed actor) are raised and retried.
    """

    def setup(
        self,
        config: dict[str, Any],
        *,
        data: list[PreparedData | VolumeData],
        model: str,
        base_params: dict[str, Any],
        augment: dict[str, Any] | None = None,
        runtime: dict[str, Any],
        max_epochs: int,
        metric: str = "val_dice",
        mode: str = "max",
        checkpoint_interval_s: float = 0.0,
        fidelity: dict[str, Any] | None = None,
    ) -> None:
        resources = self.trial_resources.required_resources if self.trial_resources else {}
        self._runtime = RuntimeConfig(**{**runtime, "intra_op_threads": max(1, round(resources.get("CPU", 1)))})
        self._gpus = resources.get("GPU", 0)
        configure_tensorflow(self._runtime, gpu_fraction=self._gpus)  # a GPU share caps its memory
        self._data, self._model, self._base, self._augment = list(data), model, base_params, augment or {}
        self._max_epochs, self._metric, self._mode, self._fidelity = max_epochs, metric, mode, fidelity
        self._folds_tmp: Path | None = None
        self._clock = CheckpointClock(checkpoint_interval_s)
        self._build(config)

    def _build(self, config: dict[str, Any]) -> None:
        # A new trial (setup, or reset_config in a reused actor) starts at fold 0.
        self._config = config
        self._clock.restart()
        self._clear_folds()
        self._progress = FoldProgress(len(self._data), self._max_epochs) if len(self._data) > 1 else None
        self._build_fold(0)

    def _build_fold(self, fold: int) -> None:
        import keras

        from hpsearch.trainer import Trainer

        # Free the previous trial's (or fold's) graph and weights before building the next
        # model in a reused actor; without it memory grows trial after trial.
        self._close_trainer()
        self._setup_failure = None
        self._fold = fold
        keras.backend.clear_session()
        gc.collect()
        config = self._config
        self._epoch_cap = min(config.get("epochs", self._base.get("epochs", self._max_epochs)), self._max_epochs)
        try:
            params, augment = split_config(config)
            self.trainer = Trainer(self._data[fold], self._model, {**self._base, **params}, seed=self._runtime.seed,
                                   metric=self._metric, mode=self._mode, augment={**self._augment, **augment},
                                   workers=self._runtime.loader_workers, fidelity=self._fidelity)
            check_fits(self.trainer.model, self.trainer.train_params.batch_size, self._memory_budget())
        except Exception as exc:  # reported by the first step, where Tune records results
            self._setup_failure = exc
            return
        self._epoch_cap = min(self.trainer.train_params.epochs, self._max_epochs)

    def step(self) -> dict[str, Any]:
        progress = self._progress
        try:
            if progress is not None and not progress.finished and self._fold != progress.current:
                self._build_fold(progress.current)  # the previous fold is done: a fresh model
            if self._setup_failure is not None:
                raise self._setup_failure
            final = self.trainer.epoch >= self._epoch_cap and self.trainer.history
            if final and (progress is None or progress.finished):
                # Restored from the checkpoint of its final epoch (the driver died before
                # recording the result): report that epoch again rather than train past it.
                result = dict(self.trainer.history[-1])
            else:
                result = self.trainer.train_epoch().metrics()
                if progress is not None and self.trainer.epoch >= self._epoch_cap:
                    self._finish_fold()
        except Exception as exc:
            kind = failure_kind(exc)
            if kind not in RECURRING:
                raise  # Tune retries it (max_failures) from the last checkpoint
            failed = {self._metric: math.nan, FAILURE_KEY: kind, ERROR_KEY: first_line(exc, 400),
                      "epoch_cap": self._trial_cap(), "done": True}
            if progress is not None:
                failed[objective_name(self._metric, progress.num_folds)] = math.nan
            return failed
        result[f"best_{self._metric}"] = self.trainer.best_value
        # Which Ray node trained this epoch: MLflow shows where a trial ran and moved.
        result["node_id"] = ray.get_runtime_context().get_node_id()
        result["epoch_cap"] = self._trial_cap()
        if progress is None:
            # A sampled `epochs` below the search's cap ends the trial there.
            result["done"] = self.trainer.epoch >= self._epoch_cap
            return self._clock.mark(result)
        result.update({f"fold{self._fold}/{key}": result[key] for key in _PER_FOLD if key in result})
        result.update(progress.report(self._metric, self._fold, self.trainer.epoch, result[self._metric]))
        result[f"best_{objective_name(self._metric, progress.num_folds)}"] = progress.mean if progress.done else math.nan
        result["done"] = progress.finished
        return self._clock.mark(result)

    def _trial_cap(self) -> int:
        """Epochs of a complete trial: its epochs, times the folds when it cross-validates."""
        return self._epoch_cap * (self._progress.num_folds if self._progress else 1)

    def _finish_fold(self) -> None:
        """Keep the finished fold's state (its best weights are an ensemble member) and record it."""
        if self._folds_tmp is None:
            self._folds_tmp = Path(tempfile.mkdtemp(prefix="hpsearch-folds-"))
        self.trainer.save(self._folds_tmp / fold_dir(self._fold))
        self._progress.finish_fold(best_value=self.trainer.best_value, best_epoch=self.trainer.best_epoch,
                                   best_val_dice=self.trainer.best_val_dice,
                                   intensity=self._data[self._fold].info.get("intensity"))

    def _memory_budget(self) -> int:
        return trial_memory_bytes(self._runtime, self._runtime.intra_op_threads, self._gpus)

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self._clock.restart()
        if self.trainer is not None:  # None: the configuration could not be built
            self.trainer.save(checkpoint_dir)
        if self._progress is None:
            return
        for done in self._progress.done:
            shutil.copytree(self._folds_tmp / done["dir"], Path(checkpoint_dir) / done["dir"], dirs_exist_ok=True)
        # Last: a checkpoint with folds.json is complete. `trainer_fold` says whose state the
        # top-level files are (a finished fold's, until the next fold's first epoch).
        state = {**self._progress.to_dict(), "trainer_fold": self._fold}
        (Path(checkpoint_dir) / FOLDS_FILE).write_text(json.dumps(state, indent=2))

    def load_checkpoint(self, checkpoint: str) -> None:
        self._clock.restart()
        folds_file = Path(checkpoint) / FOLDS_FILE
        if self._progress is None or not folds_file.is_file():
            self.trainer.restore(checkpoint)
            return
        state = json.loads(folds_file.read_text())
        self._clear_folds()
        self._progress = FoldProgress.from_dict(state)
        if self._progress.done:  # copied out: Ray may delete the checkpoint folder it restored from
            self._folds_tmp = Path(tempfile.mkdtemp(prefix="hpsearch-folds-"))
            for done in self._progress.done:
                shutil.copytree(Path(checkpoint) / done["dir"], self._folds_tmp / done["dir"])
        fold = int(state["trainer_fold"])
        if fold != self._fold:
            self._build_fold(fold)
        if self.trainer is not None:
            self.trainer.restore(checkpoint)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)
        return True

    def _close_trainer(self) -> None:
        if getattr(self, "trainer", None) is not None:
            self.trainer.close()  # its patch workers
        self.trainer = None

    def _clear_folds(self) -> None:
        if getattr(self, "_folds_tmp", None) is not None:
            shutil.rmtree(self._folds_tmp, ignore_errors=True)
        self._folds_tmp = None

    def cleanup(self) -> None:
        import keras

        self._close_trainer()
        self._clear_folds()
        keras.backend.clear_session()
