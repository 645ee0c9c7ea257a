"""Shared building blocks for the segmentation models.

Everything here creates built-in Keras layers only (no ``Lambda``, no custom
classes), so a model saved as ``.keras`` reloads with
``keras.models.load_model(path, safe_mode=True)`` and no ``custom_objects``.

Example:
    >>> import keras
    >>> from hpsearch.models.blocks import conv_block, crop_back, pad_to_multiple
    >>> inputs = keras.Input((37, 41, 1))
    >>> x, crop = pad_to_multiple(inputs, 8)
    >>> tuple(x.shape)
    (None, 40, 48, 1)
    >>> x = conv_block(x, 4, 3, padding="same", norm="batch", activation="relu", name="c1")
    >>> tuple(crop_back(x, crop).shape)
    (None, 37, 41, 4)
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence
from typing import Any

import keras

NORMS: tuple[str, ...] = ("none", "batch", "instance")
ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu")
PADDINGS: tuple[str, ...] = ("same", "valid")

# nnU-Net's choice; small enough to behave like ReLU, large enough that no unit
# dies for good.
LEAKY_RELU_SLOPE = 0.01

# ((top, bottom), (left, right)), the format ZeroPadding2D / Cropping2D take.
Padding2D = tuple[tuple[int, int], tuple[int, int]]
NO_PADDING: Padding2D = ((0, 0), (0, 0))


def check_choice(kind: str, value: Any, accepted: Sequence[str]) -> str:
    """Returns ``value`` if it is one of ``accepted``.

    Args:
        kind: What the value names, for the message (e.g. ``"norm"``).
        value: The value to check.
        accepted: The accepted values.

    Raises:
        ValueError: ``value`` is not accepted; the message lists what is.
    """
    if value not in accepted:
        choices = ", ".join(repr(a) for a in accepted)
        raise ValueError(f"unknown {kind} {value!r}; expected one of: {choices}")
    return value


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validates a static ``(height, width, channels)`` input shape.

    Lists (as they come from YAML/JSON job files) are accepted too.

    Raises:
        ValueError: Not three positive integers.
    """
    try:
        # operator.index accepts numpy integers but not floats like 64.0.
        dims = list(input_shape)
        shape = tuple(int(operator.index(d)) for d in dims)
        bad = len(shape) != 3 or any(isinstance(d, bool) or d <= 0 for d in dims)
    except TypeError:
        bad = True
    if bad:
        raise ValueError(
            "input_shape must be three positive integers (height, width, channels), "
            f"got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


def check_int(name: str, value: Any, minimum: int) -> int:
    """Returns ``value`` as a Python int if it is an integer ``>= minimum``.

    Numpy integers (as search spaces may sample them) are accepted and
    converted, so layer configs stay JSON-serialisable for ``.keras`` files.

    Raises:
        ValueError: Not an integer, or below ``minimum``.
    """
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(number)


def check_dropout(rate: Any) -> float:
    """Returns ``rate`` as a Python float if it is in [0, 1), else raises ValueError."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {rate!r}")
    return float(rate)


def activation_layer(name: str, *, layer_name: str | None = None) -> keras.layers.Layer:
    """Creates the activation layer called ``name``.

    Args:
        name: ``"relu"`` or ``"leaky_relu"`` (negative slope 0.01).
        layer_name: Keras name of the created layer.

    Raises:
        ValueError: Unknown activation name.
    """
    check_choice("activation", name, ACTIVATIONS)
    if name == "relu":
        return keras.layers.ReLU(name=layer_name)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, name=layer_name)


def norm_layer(name: str, *, layer_name: str | None = None) -> keras.layers.Layer | None:
    """Creates the normalisation layer called ``name``.

    Args:
        name: ``"none"`` (returns None), ``"batch"`` or ``"instance"``.
        layer_name: Keras name of the created layer.

    Raises:
        ValueError: Unknown norm name.
    """
    check_choice("norm", name, NORMS)
    if name == "batch":
        return keras.layers.BatchNormalization(name=layer_name)
    if name == "instance":
        # One group per channel == instance norm, and a built-in layer, so the
        # model stays loadable in safe mode.
        return keras.layers.GroupNormalization(groups=-1, name=layer_name)
    return None


def conv_block(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int,
    *,
    strides: int = 1,
    padding: str,
    norm: str,
    activation: str,
    name: str,
) -> keras.KerasTensor:
    """Applies conv -> optional norm -> activation.

    The conv has no bias when a norm follows: the norm's own shift makes it
    redundant.

    Args:
        x: Input tensor (batch, H, W, C).
        filters: Output channels.
        kernel_size: Square kernel size.
        strides: Conv stride.
        padding: ``"same"`` or ``"valid"``.
        norm: See :func:`norm_layer`.
        activation: See :func:`activation_layer`.
        name: Prefix of the layer names (``{name}_conv``, ``_norm``, ``_act``).

    Raises:
        ValueError: Unknown padding, norm or activation name.
    """
    check_choice("padding", padding, PADDINGS)
    normalise = norm_layer(norm, layer_name=f"{name}_norm")
    act = activation_layer(activation, layer_name=f"{name}_act")
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=normalise is None,
        # He init suits (leaky) ReLU; it is what Ronneberger et al. use.
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    if normalise is not None:
        x = normalise(x)
    return act(x)


def spatial_size(x: keras.KerasTensor) -> tuple[int, int]:
    """Static (height, width) of a (batch, H, W, C) tensor.

    Raises:
        ValueError: Height or width is not static.
    """
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        raise ValueError(f"need a static spatial size, got shape {tuple(x.shape)}")
    return int(height), int(width)


def split_evenly(total: int) -> tuple[int, int]:
    """Splits ``total`` into (before, after) with ``after`` taking the odd one."""
    return total // 2, total - total // 2


def pad2d(x: keras.KerasTensor, padding: Padding2D, *, name: str) -> keras.KerasTensor:
    """Zero-pads by ``((top, bottom), (left, right))``; adds no layer for zero."""
    if padding == NO_PADDING:
        return x
    return keras.layers.ZeroPadding2D(padding, name=name)(x)


def crop2d(
    x: keras.KerasTensor, cropping: Padding2D, *, name: str, dtype: str | None = None
) -> keras.KerasTensor:
    """Crops ``((top, bottom), (left, right))``; adds no layer for zero.

    Args:
        x: Input tensor.
        cropping: Pixels to remove from each side.
        name: Layer name.
        dtype: Layer dtype policy. Pass ``"float32"`` after a float32 logits
            layer: under a mixed policy the crop would otherwise cast back to
            float16.
    """
    if cropping == NO_PADDING:
        return x
    return keras.layers.Cropping2D(cropping, name=name, dtype=dtype)(x)


def center_crop_to(x: keras.KerasTensor, size: tuple[int, int], *, name: str) -> keras.KerasTensor:
    """Center-crops ``x`` to ``size`` (height, width), e.g. a U-Net skip.

    Raises:
        ValueError: ``x`` is smaller than ``size``.
    """
    height, width = spatial_size(x)
    if height < size[0] or width < size[1]:
        raise ValueError(f"cannot crop {(height, width)} to the larger {size}")
    return crop2d(x, (split_evenly(height - size[0]), split_evenly(width - size[1])), name=name)


def pad_to_multiple(
    x: keras.KerasTensor, multiple: int, *, name: str = "pad"
) -> tuple[keras.KerasTensor, Padding2D]:
    """Zero-pads height and width up to a multiple of ``multiple``.

    The padding is split evenly between the two sides so the image stays
    centred; odd pixels go to the bottom/right.

    Args:
        x: Input tensor (batch, H, W, C) with static H, W.
        multiple: Required divisor of the padded height and width.
        name: Name of the ZeroPadding2D layer (only added if padding is needed).

    Returns:
        The padded tensor and the cropping that undoes the padding, for
        :func:`crop_back`.
    """
    check_int("multiple", multiple, 1)
    height, width = spatial_size(x)
    padding = (split_evenly(-height % multiple), split_evenly(-width % multiple))
    return pad2d(x, padding, name=name), padding


def crop_back(
    x: keras.KerasTensor, crop: Padding2D, *, name: str = "crop", dtype: str | None = None
) -> keras.KerasTensor:
    """Undoes :func:`pad_to_multiple` (or any padding) with a Cropping2D layer."""
    return crop2d(x, crop, name=name, dtype=dtype)
