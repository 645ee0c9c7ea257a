"""The registry of segmentation model families, looked up by name.

Each family pairs a builder (a plain function of explicit arguments returning
a ``keras.Model`` of float32 per-pixel logits) with the pydantic model of its
options, which job files are validated against.

Example:
    >>> from hpsearch.models import build_model, get_family
    >>> model = build_model("unet", (37, 41, 1), 2, depth=2, base_filters=4)
    >>> tuple(model.output.shape)
    (None, 37, 41, 2)
    >>> get_family("fcn").options().depth
    2
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import keras
import pydantic

from hpsearch.models.fcn import build_fcn
from hpsearch.models.options import FCNOptions, UNet3DOptions, UNetOptions, options_for
from hpsearch.models.unet import build_unet
from hpsearch.models.unet3d import build_unet3d


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A model architecture selectable by name.

    Attributes:
        name: Registry key, as written in job files.
        build: ``build(input_shape, num_classes, **options) -> keras.Model``.
        options: Pydantic model of the keyword options of ``build``.
    """

    name: str
    build: Callable[..., keras.Model]
    options: type[pydantic.BaseModel]


MODELS: dict[str, ModelFamily] = {
    "unet": ModelFamily("unet", build_unet, UNetOptions),
    "fcn": ModelFamily("fcn", build_fcn, FCNOptions),
    "unet3d": ModelFamily("unet3d", build_unet3d, UNet3DOptions),
}


def get_family(name: str) -> ModelFamily:
    """Returns the model family registered as ``name``.

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    options_for(name)  # the one place that names the known families in its error
    return MODELS[name]


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **options: Any
) -> keras.Model:
    """Validates ``options`` against the family's options model, then builds.

    Args:
        name: Registry key (``"unet"``, ``"fcn"`` or ``"unet3d"``).
        input_shape: Static ``(height, width, channels)``, or
            ``(depth, height, width, channels)`` for ``"unet3d"``.
        num_classes: Number of output logits per pixel.
        **options: Family options; missing ones take the defaults.

    Raises:
        ValueError: Unknown model name, or a bad input_shape / num_classes.
        pydantic.ValidationError: An option is unknown or out of range.
    """
    family = get_family(name)
    validated = family.options(**options)
    return family.build(tuple(input_shape), num_classes, **validated.model_dump())


__all__ = [
    "FCNOptions",
    "MODELS",
    "ModelFamily",
    "UNet3DOptions",
    "UNetOptions",
    "build_fcn",
    "build_model",
    "build_unet",
    "build_unet3d",
    "get_family",
]
