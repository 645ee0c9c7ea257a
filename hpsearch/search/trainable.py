"""The Ray Tune trial: a class Trainable stepping the core :class:`~hpsearch.trainer.Trainer`.

One ``step`` is one epoch, so ASHA's ``training_iteration`` counts epochs. The class
API (rather than a function trainable) lets Ray reuse the actor across trials
(``reuse_actors=True`` + :meth:`reset_config`): TensorFlow's import and runtime start
cost seconds, paid once per actor instead of once per trial.

The preprocessed data arrives through ``tune.with_parameters``: Ray puts it in the
object store once and every trial on a node reads the same read-only arrays.
"""

from __future__ import annotations

import gc
import math
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
from hpsearch.space import split_config


class SegmentationTrainable(tune.Trainable):
    """One hyperparameter configuration of one model family.

    ``setup`` keyword arguments (bound with ``tune.with_parameters``):
        data: Preprocessed slices (shared through the object store).
        model: Model family name.
        base_params: The job's ``params``; the trial's config overrides them.
        runtime: The job's ``runtime`` section as a dict; threads follow the
            trial's CPUs.
        max_epochs: Epoch cap of the search (``scheduler.max_epochs``).
        metric, mode: The search metric; the trainer keeps its best epoch by it.

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
        data: PreparedData | VolumeData,
        model: str,
        base_params: dict[str, Any],
        augment: dict[str, Any] | None = None,
        runtime: dict[str, Any],
        max_epochs: int,
        metric: str = "val_dice",
        mode: str = "max",
    ) -> None:
        resources = self.trial_resources.required_resources if self.trial_resources else {}
        self._runtime = RuntimeConfig(**{**runtime, "intra_op_threads": max(1, round(resources.get("CPU", 1)))})
        self._gpus = resources.get("GPU", 0)
        configure_tensorflow(self._runtime, gpu_fraction=self._gpus)  # a GPU share caps its memory
        self._data, self._model, self._base, self._augment = data, model, base_params, augment or {}
        self._max_epochs, self._metric, self._mode = max_epochs, metric, mode
        self._build(config)

    def _build(self, config: dict[str, Any]) -> None:
        import keras

        from hpsearch.trainer import Trainer

        # Free the previous trial's graph and weights before building the next model
        # in a reused actor; without it memory grows trial after trial.
        self._close_trainer()
        self._setup_failure = None
        keras.backend.clear_session()
        gc.collect()
        self._epoch_cap = min(config.get("epochs", self._base.get("epochs", self._max_epochs)), self._max_epochs)
        try:
            params, augment = split_config(config)
            self.trainer = Trainer(self._data, self._model, {**self._base, **params}, seed=self._runtime.seed,
                                   metric=self._metric, mode=self._mode, augment={**self._augment, **augment},
                                   workers=self._runtime.loader_workers)
            check_fits(self.trainer.model, self.trainer.train_params.batch_size, self._memory_budget())
        except Exception as exc:  # reported by the first step, where Tune records results
            self._setup_failure = exc
            return
        self._epoch_cap = min(self.trainer.train_params.epochs, self._max_epochs)

    def step(self) -> dict[str, Any]:
        try:
            if self._setup_failure is not None:
                raise self._setup_failure
            if self.trainer.epoch >= self._epoch_cap and self.trainer.history:
                # Restored from the checkpoint of its final epoch (the driver died before
                # recording the result): report that epoch again rather than train past it.
                result = dict(self.trainer.history[-1])
            else:
                result = self.trainer.train_epoch().metrics()
        except Exception as exc:
            kind = failure_kind(exc)
            if kind not in RECURRING:
                raise  # Tune retries it (max_failures) from the last checkpoint
            return {self._metric: math.nan, FAILURE_KEY: kind, ERROR_KEY: first_line(exc, 400),
                    "epoch_cap": self._epoch_cap, "done": True}
        result[f"best_{self._metric}"] = self.trainer.best_value
        # Which Ray node trained this epoch: MLflow shows where a trial ran and moved.
        result["node_id"] = ray.get_runtime_context().get_node_id()
        result["epoch_cap"] = self._epoch_cap
        # A sampled `epochs` below the search's cap ends the trial there.
        result["done"] = self.trainer.epoch >= self._epoch_cap
        return result

    def _memory_budget(self) -> int:
        return trial_memory_bytes(self._runtime, self._runtime.intra_op_threads, self._gpus)

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        if self.trainer is not None:  # None: the configuration could not be built
            self.trainer.save(checkpoint_dir)

    def load_checkpoint(self, checkpoint: str) -> None:
        self.trainer.restore(checkpoint)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)
        return True

    def _close_trainer(self) -> None:
        if getattr(self, "trainer", None) is not None:
            self.trainer.close()  # its patch workers
        self.trainer = None

    def cleanup(self) -> None:
        import keras

        self._close_trainer()
        keras.backend.clear_session()
