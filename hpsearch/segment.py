"""Segmenting one whole case in patch mode: the one path validation and prediction share.

``val_dice`` promises what ``hpsearch predict`` would score on the validation cases, so
both go through :func:`case_logits`: sliding-window logits at the target spacing
(:func:`hpsearch.inference.predict_case`), then back to the scan's own grid
(:func:`hpsearch.data.physical.to_original_geometry`). Prediction first runs the training
preprocessing (:func:`hpsearch.data.physical.preprocess_case`) on the scan, which the
cache ran on the validation cases with the same function and settings.

``settings`` is a mapping with ``plan``, ``volume_config`` and ``intensity``: a prepared
dataset's ``info`` during training, ``hpsearch-model.json`` after export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from hpsearch.data import physical
from hpsearch.data.config import VolumeConfig
from hpsearch.inference import predict_case

OVERLAP = 0.5  # nnU-Net's tile_step_size


def case_logits(
    image: np.ndarray,
    predict_batch: Callable[[np.ndarray], np.ndarray],
    settings: Mapping[str, Any],
    original_shape: Sequence[int],
    spacing: Sequence[float],
    *,
    batch_size: int = 8,
    mirror: bool = False,
) -> np.ndarray:
    """Logits ``(X, Y, Z, K)`` on the original grid of a case preprocessed to ``(C, X', Y', Z')``.

    Args:
        image: The case after :func:`~hpsearch.data.physical.preprocess_case`.
        predict_batch: Patches to logits (:func:`keras_logits`).
        settings: ``plan``, ``volume_config`` (see the module docstring).
        original_shape: The scan's voxel grid ``(X, Y, Z)``.
        spacing: The scan's voxel size in mm.
        batch_size: Windows per network call.
        mirror: Test-time mirroring.
    """
    plan = settings["plan"]
    overlap = (settings.get("inference") or {}).get("overlap", OVERLAP)
    logits = predict_case(image, predict_batch, plan["patch_size"], len(settings["label_values"]),
                          slice_axis=plan.get("slice_axis"), overlap=overlap, batch_size=batch_size, mirror=mirror)
    target = physical.case_target(spacing, VolumeConfig(**settings["volume_config"]))
    return physical.to_original_geometry(logits, tuple(original_shape), spacing, target)


def segment_scan(
    image: np.ndarray,
    spacing: Sequence[float],
    predict_batch: Callable[[np.ndarray], np.ndarray],
    settings: Mapping[str, Any],
    *,
    batch_size: int = 8,
    mirror: bool = False,
) -> np.ndarray:
    """Class indices ``(X, Y, Z)`` of a raw scan ``(X, Y, Z, C)``: preprocess, predict, restore."""
    config = VolumeConfig(**settings["volume_config"])
    prepared = physical.preprocess_case(image, spacing, config, settings.get("intensity") or {})
    logits = case_logits(prepared, predict_batch, settings, image.shape[:3], spacing,
                         batch_size=batch_size, mirror=mirror)
    return np.argmax(logits, axis=-1).astype(np.uint8)


def keras_logits(model) -> Callable[[np.ndarray], np.ndarray]:
    """A Keras model as ``predict_batch``: a direct call (no ``predict()`` tracing per batch
    size), float32 out whatever the model's precision."""

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False), np.float32)

    return predict


def ensemble_logits(models: Sequence) -> Callable[[np.ndarray], np.ndarray]:
    """Several Keras models as one ``predict_batch``: :func:`mean_probability_logits` of their
    outputs, so a later softmax gives the mean of their probabilities exactly."""
    members = [keras_logits(model) for model in models]

    def predict(batch: np.ndarray) -> np.ndarray:
        return mean_probability_logits(member(batch) for member in members)  # one output held at a time

    return predict


def mean_probability_logits(logits: Iterable[np.ndarray]) -> np.ndarray:
    """``log(mean_i softmax(logits_i))`` over the last axis, in float32.

    A running log-sum-exp of log-softmaxes: no probability underflows to ``log(0)``, and
    only one member's output is held besides the sum (3D patch batches are large).

    Example:
        >>> z = mean_probability_logits([np.array([0.0, 0.0]), np.array([0.0, np.log(3)])])
        >>> np.round(np.exp(z), 3).tolist()  # mean of [0.5, 0.5] and [0.25, 0.75]
        [0.375, 0.625]
    """
    total, count = None, 0
    for z in logits:
        z = np.asarray(z, np.float32)
        shifted = z - z.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        total = log_probs if total is None else np.logaddexp(total, log_probs)
        count += 1
    if total is None:
        raise ValueError("no logits to average")
    return (total - np.float32(np.log(count))).astype(np.float32)
