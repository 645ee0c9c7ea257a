"""Segmentation model families: U-Net (2-D and 3-D) and the DLI lab's FCN, by name.

Each family pairs a builder (a plain function of explicit arguments returning a
``keras.Model`` of float32 per-pixel logits) with the pydantic model of its options.
The options (:mod:`hpsearch.models.options`) import without Keras; the builders and
the registry load Keras on first use, so validating a job never starts TensorFlow.

Example:
    >>> from hpsearch.models import build_model
    >>> model = build_model("unet", (37, 41, 1), 2, depth=2, base_filters=4)
    >>> tuple(model.output.shape)
    (None, 37, 41, 2)
"""

from __future__ import annotations

import importlib

from hpsearch.models.options import (
    MODEL_OPTIONS,
    FCNOptions,
    UNet3DOptions,
    UNetOptions,
    options_for,
)

_LAZY = {
    "build_unet": "hpsearch.models.unet",
    "build_fcn": "hpsearch.models.fcn",
    "build_unet3d": "hpsearch.models.unet3d",
    "ModelFamily": "hpsearch.models.registry",
    "MODELS": "hpsearch.models.registry",
    "get_family": "hpsearch.models.registry",
    "build_model": "hpsearch.models.registry",
}

__all__ = ["FCNOptions", "MODEL_OPTIONS", "UNet3DOptions", "UNetOptions", "options_for",
           *sorted(_LAZY)]


def __getattr__(name: str):
    # PEP 562: Keras is imported only when a builder or the registry is asked for.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpsearch.models' has no attribute {name!r}")
