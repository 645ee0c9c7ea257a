"""Training one configuration, one epoch at a time, with savable state.

:class:`Trainer` is what ``hpsearch train`` loops over and what a search trial steps:
build the model and optimizer from validated hyperparameters, :meth:`train_epoch`
(fit one pass, then validate per case), :meth:`save` / :meth:`restore` the full
state (weights, optimizer slots and step, epoch, best Dice and its weights, history).
It knows nothing of Ray or MLflow; it reads slices from :class:`PreparedData` (which
may be memory-mapped or shared through an object store) and never copies the
training set.

Example:
    >>> trainer = Trainer(data, "unet", {"epochs": 2, "depth": 2})   # doctest: +SKIP
    >>> while not trainer.done:                                       # doctest: +SKIP
    ...     print(trainer.train_epoch().format(data.class_names))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import keras
import numpy as np
from pydantic import BaseModel

from hpsearch.data.augment import AugmentConfig
from hpsearch.data.preprocess import PreparedData
from hpsearch.data.volume_data import VolumeData
from hpsearch.errors import HpsearchError
from hpsearch.feeds import make_feed
from hpsearch.fidelity import FidelityConfig, low_size
from hpsearch.losses import get_loss
from hpsearch.metrics import SegmentationScores
from hpsearch.network import build_network, dims_of, family, size_multiple
from hpsearch.params import TrainParams, model_options, train_options, validate_params
from hpsearch.selection import metric_name

STATE_FILE = "trainer_state.json"
BEST_WEIGHTS_FILE = "best_weights.npz"


class TrainingDiverged(HpsearchError):
    """The loss became NaN or infinite; usually the learning rate is too high."""

    failure_kind = "nan"  # the same configuration diverges again (see hpsearch.failures)


@dataclasses.dataclass(frozen=True)
class EpochResult:
    """What one epoch achieved; :meth:`metrics` is the flat dict a search reports."""

    epoch: int
    loss: float
    val_loss: float
    scores: SegmentationScores
    learning_rate: float
    seconds: float
    class_names: tuple[str, ...]
    fidelity: float | None = None  # share of a full epoch's training pixels (scheduler.fidelity)

    @property
    def val_dice(self) -> float:
        return self.scores.mean_dice

    def metrics(self) -> dict[str, float]:
        """``loss``, ``val_loss``, ``val_dice``, ``val_dice_<class>``, ``val_iou``, ``lr``,
        ``epoch_seconds``, with ``scheduler.fidelity`` also ``fidelity`` (class names made
        metric-safe: ``necrotic core`` -> ``necrotic_core``)."""
        out = {
            "epoch": self.epoch,
            "loss": self.loss,
            "val_loss": self.val_loss,
            "val_dice": self.val_dice,
            "val_iou": self.scores.mean_iou,
            "lr": self.learning_rate,
            "epoch_seconds": self.seconds,
        }
        if self.fidelity is not None:
            out["fidelity"] = self.fidelity
        for name, dice in zip(self.class_names[1:], self.scores.dice[1:]):
            out[f"val_dice_{metric_name(name)}"] = float(dice)
        for name, dice in self.scores.region_dice.items():  # evaluation regions, named like classes
            out[f"val_dice_{metric_name(name)}"] = float(dice)
        return out

    def format(self) -> str:
        per_class = " ".join(
            f"{name}={dice:.4f}" for name, dice in zip(self.class_names[1:], self.scores.dice[1:])
        )
        return (
            f"epoch {self.epoch:3d}  loss {self.loss:.4f}  val_loss {self.val_loss:.4f}  "
            f"val_dice {self.val_dice:.4f} [{per_class}]  lr {self.learning_rate:.3g}  "
            + (f"fidelity {self.fidelity:.2f}  " if self.fidelity is not None and self.fidelity < 1 else "")
            + f"{self.seconds:.1f}s"
        )


class Trainer:
    """One configuration of one model family on one prepared dataset.

    Args:
        data: Preprocessed slices (slice mode) or whole cases (patch mode), with
            validation cases (see :mod:`hpsearch.feeds`).
        model: Model family name as a job names it (``unet``, ``fcn``); on 3D patches
            ``unet`` is the 3D U-Net (:func:`hpsearch.network.family`).
        params: Flat hyperparameters (validated; defaults filled in).
        seed: Seed of weight initialisation and batch order; with the same seed
            and data, a restored trainer continues exactly as an uninterrupted one.
        metric, mode: What picks the best epoch (whose weights are kept and exported):
            any per-epoch metric of :meth:`EpochResult.metrics` (a search passes its
            ``search.metric``), maximised or minimised.
        augment: Augmentation of training patches (patch mode; ``augment:`` of a job).
        workers: Background processes making training patches (patch mode).
        fidelity: Cheaper first epochs (slice mode; ``scheduler.fidelity`` of a job, with
            its ``epochs`` set): see :mod:`hpsearch.fidelity`.

    Call :meth:`close` when done: it stops the patch workers.

    Raises:
        HpsearchError: ``fidelity`` with patch-mode data, or a resolution this network
            cannot train at (unpadded convolutions, or slices it pads).
    """

    def __init__(
        self,
        data: PreparedData | VolumeData,
        model: str,
        params: Mapping[str, Any] | BaseModel,
        *,
        seed: int = 0,
        metric: str = "val_dice",
        mode: str = "max",
        augment: AugmentConfig | Mapping[str, Any] | None = None,
        workers: int = 1,
        fidelity: FidelityConfig | Mapping[str, Any] | None = None,
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
        self.metric, self.mode = metric, mode
        self.data = data
        self.model_name = family(model, dims_of(data.info))
        self.params = validate_params(self.model_name, params)
        self.train_params: TrainParams = train_options(self.params)
        self.seed = seed
        keras.utils.set_random_seed(seed)
        self.model = build_network(self.model_name, model_options(self.params), data.info)
        self.feed = make_feed(data, seed=seed, augment=augment, workers=workers)
        p = self.train_params
        self.schedule = keras.optimizers.schedules.ExponentialDecay(
            p.learning_rate, decay_steps=p.decay_steps, decay_rate=p.decay_rate, staircase=True
        )
        self.optimizer = _make_optimizer(p, self.schedule)
        self.loss_fn: Callable = get_loss(p.loss)
        self.fidelity = FidelityConfig(**fidelity) if isinstance(fidelity, Mapping) else fidelity
        # Cloned before compiling: Keras would re-create an uncompiled copy's loss by name.
        self._low_model, self._low_size = self._build_low_fidelity() if self.fidelity else (None, None)
        self.model.compile(optimizer=self.optimizer, loss=self.loss_fn)
        self.epoch = 0
        self.best_value = -math.inf if mode == "max" else math.inf
        self.best_epoch = 0
        self.history: list[dict[str, float]] = []
        self._best_weights: list[np.ndarray] | None = None

    @property
    def done(self) -> bool:
        """Whether the configured number of epochs has been trained."""
        return self.epoch >= self.train_params.epochs

    def train_epoch(self) -> EpochResult:
        """Train one epoch (every training slice, or ``samples_per_epoch`` patches), then
        validate per case.

        Raises:
            TrainingDiverged: The training loss is NaN or infinite.
        """
        started = time.perf_counter()
        low = self.fidelity if self.fidelity is not None and self.fidelity.applies(self.epoch) else None
        model = self._low_model if low is not None and self._low_model is not None else self.model
        lower = {"case_fraction": low.case_fraction, "size": self._low_size} if low is not None else {}
        batches, steps = self.feed.epoch(self.epoch, self.train_params.batch_size, **lower)
        history = model.fit(  # the low-fidelity model shares the weights and the optimizer
            batches, steps_per_epoch=steps, initial_epoch=self.epoch, epochs=self.epoch + 1, verbose=0, shuffle=False
        )
        trained = self._trained_fraction(batches) if self.fidelity is not None else None
        loss = float(history.history["loss"][-1])
        self.epoch += 1
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged at epoch {self.epoch} (loss is {loss}); lower learning_rate "
                f"(now {self.train_params.learning_rate:g}) or look for NaN/inf in the data "
                "with `hpsearch data check`"
            )
        val_loss, scores = self.evaluate()
        result = EpochResult(
            epoch=self.epoch,
            loss=loss,
            val_loss=val_loss,
            scores=scores,
            learning_rate=float(self.schedule(self.optimizer.iterations)),
            seconds=time.perf_counter() - started,
            class_names=tuple(self.data.class_names),
            fidelity=trained,
        )
        metrics = result.metrics()
        if self.metric not in metrics:
            raise HpsearchError(f"search.metric: {self.metric} is not reported by training; choose one of "
                                f"{', '.join(sorted(metrics))}")
        if self._improves(metrics[self.metric]):
            self.best_value, self.best_epoch = metrics[self.metric], self.epoch
            self._best_weights = self.model.get_weights()
        self.history.append(metrics)
        return result

    def _build_low_fidelity(self) -> tuple[keras.Model | None, tuple[int, int] | None]:
        """The model for low-resolution epochs (the same layers, so the same weights, on a
        smaller input) and its slice size; ``(None, None)`` at full resolution."""
        if not isinstance(self.data, PreparedData):
            raise HpsearchError("scheduler.fidelity: slice mode only; a patch-mode epoch is a fixed number of "
                                "patches of the planned size")
        if self.fidelity.resolution == 1.0:
            return None, None
        multiple = size_multiple(self.model_name, model_options(self.params))
        if multiple is None:
            raise HpsearchError(f"scheduler.fidelity.resolution: a {self.model_name} with unpadded convolutions "
                                "takes only the slice size it was built for; use padding: same or resolution 1")
        *size, channels = self.data.input_shape
        try:
            low = low_size(tuple(size), self.fidelity.resolution, multiple)
        except ValueError as exc:
            raise HpsearchError(f"scheduler.fidelity.resolution: {exc}") from None
        inputs = keras.Input((*low, channels), name="image")
        model = keras.models.clone_model(self.model, input_tensors=inputs, clone_function=lambda layer: layer)
        model.compile(optimizer=self.optimizer, loss=self.loss_fn)
        return model, low

    def _trained_fraction(self, batches) -> float:
        """How much of a full epoch's pixels this epoch trained on (1 at full fidelity)."""
        data = self.data
        size = batches.size or data.input_shape[:2]
        return len(batches.order) * size[0] * size[1] / (len(data.train_x) * math.prod(data.input_shape[:2]))

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value > self.best_value if self.mode == "max" else value < self.best_value

    @property
    def best_val_dice(self) -> float:
        """Validation Dice of the best epoch (by :attr:`metric`); -inf before any epoch."""
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), None)
        return best["val_dice"] if best else -math.inf

    def evaluate(self) -> tuple[float, SegmentationScores]:
        """Validation loss and per-case Dice/IoU (on resized slices, or whole cases in
        their original geometry in patch mode)."""
        return self.feed.evaluate(self.model, self.loss_fn, self.train_params.batch_size)

    def close(self) -> None:
        """Stop background work (patch workers); the trainer can still save and evaluate."""
        self.feed.close()

    def fit(self, on_epoch: Callable[[EpochResult], None] | None = None) -> float:
        """Train the remaining epochs; return the best value of :attr:`metric`."""
        while not self.done:
            result = self.train_epoch()
            if on_epoch:
                on_epoch(result)
        return self.best_value

    def use_best_weights(self) -> None:
        """Load the weights of the best epoch (by :attr:`metric`)."""
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)

    # -- state ---------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the full training state into ``directory`` (created if needed).

        Each file is written under a temporary name and renamed; the state file goes
        last, so a folder with ``trainer_state.json`` is always complete.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "weights.npz": self.model.get_weights(),
            BEST_WEIGHTS_FILE: self._best_weights or self.model.get_weights(),
            "optimizer.npz": [np.asarray(v) for v in self.optimizer.variables],
        }
        for name, values in arrays.items():
            _atomic_write(directory / name, lambda f, v=values: np.savez(f, *v))
        state = {
            "model": self.model_name,
            "params": self.params.model_dump(),
            "seed": self.seed,
            "epoch": self.epoch,
            "best_val_dice": self.best_val_dice if self._best_weights is not None else None,
            "metric": self.metric,
            "mode": self.mode,
            "best_value": self.best_value if self._best_weights is not None else None,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "data_digest": self.data.info.get("digest", ""),
        }
        _atomic_write(directory / STATE_FILE, lambda f: f.write(json.dumps(state, indent=2).encode()))
        return directory

    def restore(self, directory: str | Path) -> None:
        """Load a state written by :meth:`save` into this trainer.

        Raises:
            HpsearchError: The folder holds no complete state, or one of another
                model family.
        """
        directory = Path(directory)
        state_file = directory / STATE_FILE
        if not state_file.is_file():
            raise HpsearchError(f"{directory}: no {STATE_FILE}; not a complete trainer checkpoint")
        state = json.loads(state_file.read_text())
        if state["model"] != self.model_name:
            raise HpsearchError(
                f"{directory}: checkpoint of model '{state['model']}', trainer is '{self.model_name}'"
            )
        self.model.set_weights(load_arrays(directory / "weights.npz"))
        if not self.optimizer.built:
            self.optimizer.build(self.model.trainable_variables)
        for variable, value in zip(self.optimizer.variables, load_arrays(directory / "optimizer.npz")):
            variable.assign(value)
        self.epoch = state["epoch"]
        self.best_epoch = state["best_epoch"]
        if state.get("metric", "val_dice") != self.metric:
            raise HpsearchError(f"{directory}: checkpoint picks its best epoch by {state.get('metric', 'val_dice')}, "
                                f"this trainer by {self.metric}")
        has_best = state["best_val_dice"] is not None
        self.best_value = state.get("best_value", state["best_val_dice"]) if has_best else self.best_value
        self._best_weights = load_arrays(directory / BEST_WEIGHTS_FILE) if has_best else None
        self.history = list(state["history"])


def _make_optimizer(p: TrainParams, schedule) -> keras.optimizers.Optimizer:
    decay = p.weight_decay or None
    if p.optimizer == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=decay)
    if p.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=p.weight_decay)
    if p.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=p.momentum, nesterov=True, weight_decay=decay)
    return keras.optimizers.RMSprop(schedule, momentum=p.momentum, weight_decay=decay)


def _atomic_write(path: Path, write: Callable) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays of a checkpoint file (``weights.npz``, ...) in the order they were saved."""
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]
