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

from collections.abc import Callable, Mapping, Sequence
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
