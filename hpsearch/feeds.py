"""What a trainer trains and validates on: slices (slice mode) or patches (patch mode).

A feed turns prepared data into an epoch of training batches and scores a model on the
validation cases. :class:`~hpsearch.trainer.Trainer` asks its feed and knows nothing of
how the data was prepared.

* :class:`SliceFeed` (``dataset.dims`` unset): every kept training slice once per epoch,
  shuffled; validation Dice per case over its resized slices.
* :class:`PatchFeed` (``dataset.dims`` 2 or 3): a fixed number of augmented patches per
  epoch from background workers (:class:`~hpsearch.data.loader.PatchLoader`), so an
  epoch's compute does not depend on the batch size and ASHA's rungs stay comparable;
  validation segments each whole validation case exactly as ``hpsearch predict`` does
  (:func:`hpsearch.segment.segment_case`) and scores it in the scan's original geometry.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import keras
import numpy as np

from hpsearch.data.augment import AugmentConfig
from hpsearch.data.loader import PatchLoader
from hpsearch.data.preprocess import PreparedData
from hpsearch.data.volume_data import VolumeData, load_volume_data
from hpsearch.fidelity import case_subset, downsample
from hpsearch.metrics import DiceMetric, SegmentationScores
from hpsearch.segment import case_logits, keras_logits


class _Batches(keras.utils.PyDataset):
    """Shuffled batches gathered from (possibly memory-mapped) arrays.

    Gathering per batch keeps memory at one batch, where ``x[permutation]`` would copy
    the whole training set every epoch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, order: np.ndarray,
                 size: tuple[int, int] | None = None):
        super().__init__()
        self.x, self.y, self.batch_size, self.order, self.size = x, y, batch_size, order, size

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, index: int):
        # Sorted within a batch: memory-mapped reads go forward through the file.
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        x, y = np.asarray(self.x[rows]), np.asarray(self.y[rows])
        return downsample(x, y, self.size) if self.size is not None else (x, y)


class SliceFeed:
    """Slice mode: the training slices of :class:`PreparedData`, resized validation slices."""

    def __init__(self, data: PreparedData, *, seed: int):
        self.data, self.seed = data, seed

    @property
    def info(self) -> dict[str, Any]:
        return self.data.info

    def epoch(self, epoch: int, batch_size: int, *, case_fraction: float = 1.0,
              size: tuple[int, int] | None = None) -> tuple[Iterable, int | None]:
        """The batches of one epoch, and how many steps they make (None: the dataset says).

        A low-fidelity epoch (:mod:`hpsearch.fidelity`) trains on the slices of a seeded
        ``case_fraction`` of the training cases, down-sampled to ``size``.
        """
        rows = np.arange(len(self.data.train_x))
        if case_fraction < 1:
            rows = case_subset(self.data.train_case, len(self.info["train_cases"]), case_fraction, self.seed)
        order = rows[np.random.default_rng([self.seed, epoch]).permutation(len(rows))]
        return _Batches(self.data.train_x, self.data.train_y, batch_size, order, size), None

    def evaluate(self, model: keras.Model, loss_fn: Callable, batch_size: int) -> tuple[float, SegmentationScores]:
        """Validation loss (mean over slices) and per-case Dice/IoU over the resized slices."""
        data = self.data
        metric = DiceMetric(data.num_classes, regions=region_classes(data.info))
        batch = max(batch_size, 32)
        predictions = np.empty(data.val_y.shape, np.uint8)
        loss_sum = 0.0
        for start in range(0, len(data.val_x), batch):
            x = np.asarray(data.val_x[start : start + batch])
            y = np.asarray(data.val_y[start : start + batch])
            logits = model.predict_on_batch(x)
            loss_sum += float(loss_fn(y, logits)) * len(x)
            predictions[start : start + len(x)] = np.argmax(logits, axis=-1)
        metric.update_slices(predictions, np.asarray(data.val_y), np.asarray(data.val_case))
        return loss_sum / max(len(data.val_x), 1), metric.aggregate()

    def close(self) -> None:
        """Nothing runs in the background in slice mode."""


def region_classes(info: dict[str, Any]) -> dict[str, list[int]]:
    """The dataset's evaluation regions (label values in ``info["regions"]``) as class indices."""
    index = {int(v): i for i, v in enumerate(info.get("label_values", ()))}
    return {name: [index[int(v)] for v in values] for name, values in (info.get("regions") or {}).items()}


class PatchFeed:
    """Patch mode: augmented patches per epoch; whole-case validation in the original geometry.

    Args:
        data: The preprocessed cases (memory-mapped from a cache entry).
        augment: Augmentation of training batches.
        seed: Seed of patch sampling and augmentation: batch ``k`` of epoch ``e`` is the
            same for the same seed, however many workers make it.
        workers: Background processes making batches (0: in the training process).
        mirror: Test-time mirroring in validation (as ``hpsearch predict --mirror``).
    """

    def __init__(self, data: VolumeData, *, augment: AugmentConfig, seed: int, workers: int = 1,
                 mirror: bool = False):
        self.data, self.augment, self.seed, self.workers, self.mirror = data, augment, seed, workers, mirror
        self.plan = data.info["plan"]
        self._loader: PatchLoader | None = None
        self._batch_size = 0

    @property
    def info(self) -> dict[str, Any]:
        return self.data.info

    def _entry(self) -> str | None:
        """The cache entry, when this node has it (a cluster node without the driver's cache
        got the data through Ray's object store instead)."""
        entry = self.data.info.get("entry")
        return entry if entry and Path(entry, "info.json").is_file() else None

    def _open_data(self) -> VolumeData | Callable[[], VolumeData]:
        # Workers reopen the cache entry memory-mapped: the page cache is shared, not copied.
        entry = self._entry()
        return functools.partial(load_volume_data, entry) if entry else self.data

    def epoch(self, epoch: int, batch_size: int) -> tuple[Iterable, int]:
        """``samples_per_epoch / batch_size`` (rounded up) augmented batches of epoch ``epoch``."""
        if self._loader is None or batch_size != self._batch_size:
            self.close()
            settings = self.data.info["sampling"]
            self._loader = PatchLoader(
                self._open_data(),
                dims=int(self.plan["dims"]),
                patch_size=tuple(self.plan["patch_size"]),
                slice_axis=2 if self.plan.get("slice_axis") is None else int(self.plan["slice_axis"]),
                batch_size=batch_size,
                samples_per_epoch=int(settings["samples_per_epoch"]),
                foreground_fraction=float(settings["foreground_fraction"]),
                augment=self.augment,
                seed=self.seed,
                # Without the entry on this node, batches are made in this process.
                workers=self.workers if self._entry() else 0,
            )
            self._batch_size = batch_size
        steps = math.ceil(int(self.data.info["sampling"]["samples_per_epoch"]) / batch_size)
        return self._loader.epoch(epoch), steps

    def evaluate(self, model: keras.Model, loss_fn: Callable, batch_size: int) -> tuple[float, SegmentationScores]:
        """Loss and per-case Dice/IoU of each whole validation case, in its original geometry.

        The case goes through :func:`~hpsearch.segment.case_logits`, the function
        ``hpsearch predict`` uses, so ``val_dice`` is the Dice its output would score.
        """
        data, info = self.data, self.data.info
        metric = DiceMetric(data.num_classes, regions=region_classes(data.info))
        predict = keras_logits(model)
        losses = []
        for image, label, spacing in zip(data.val_images, data.val_labels, info["val_spacings"]):
            logits = case_logits(np.asarray(image), predict, info, label.shape, spacing,
                                 batch_size=max(batch_size, 8), mirror=self.mirror)
            label = np.asarray(label)
            losses.append(float(loss_fn(label[None], logits[None])))
            metric.update(np.argmax(logits, axis=-1), label)
        return float(np.mean(losses)) if losses else math.nan, metric.aggregate()

    def close(self) -> None:
        """Stop the background workers (also when training ended with an error)."""
        if self._loader is not None:
            self._loader.close()
            self._loader = None


def make_feed(data: PreparedData | VolumeData, *, seed: int, augment: AugmentConfig | Mapping | None = None,
              workers: int = 1) -> SliceFeed | PatchFeed:
    """The feed for prepared data: slices for :class:`PreparedData`, patches for :class:`VolumeData`."""
    if isinstance(data, VolumeData):
        config = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**(augment or {}))
        return PatchFeed(data, augment=config, seed=seed, workers=workers)
    return SliceFeed(data, seed=seed)


__all__ = ["PatchFeed", "SliceFeed", "make_feed"]
