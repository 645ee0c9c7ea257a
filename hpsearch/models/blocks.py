"""Shared building blocks for the segmentation models, in 2D and 3D.

One code path serves both: the layer classes come from :func:`conv`, :func:`pool`
and friends, chosen by the number of spatial axes of the tensor they are applied
to, so the 2D and 3D U-Nets are the same function of their arguments.

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

# ((before, after), ...) per spatial axis, the format ZeroPadding2D/3D and
# Cropping2D/3D take.
Padding = tuple[tuple[int, int], ...]

_LAYERS = {
    2: {"conv": keras.layers.Conv2D, "conv_transpose": keras.layers.Conv2DTranspose,
        "pool": keras.layers.MaxPooling2D, "zero_padding": keras.layers.ZeroPadding2D,
        "cropping": keras.layers.Cropping2D},
    3: {"conv": keras.layers.Conv3D, "conv_transpose": keras.layers.Conv3DTranspose,
        "pool": keras.layers.MaxPooling3D, "zero_padding": keras.layers.ZeroPadding3D,
        "cropping": keras.layers.Cropping3D},
}
_AXIS_NAMES = {2: "height, width", 3: "depth, height, width"}


def _layer(kind: str, dims: int) -> type[keras.layers.Layer]:
    if dims not in _LAYERS:
        raise ValueError(f"only 2 or 3 spatial axes are supported, got {dims}")
    return _LAYERS[dims][kind]


def conv(dims: int) -> type[keras.layers.Layer]:
    """``Conv2D`` or ``Conv3D`` for ``dims`` spatial axes."""
    return _layer("conv", dims)


def conv_transpose(dims: int) -> type[keras.layers.Layer]:
    """``Conv2DTranspose`` or ``Conv3DTranspose``: the U-Net's learned up-sampling."""
    return _layer("conv_transpose", dims)


def pool(dims: int) -> type[keras.layers.Layer]:
    """``MaxPooling2D`` or ``MaxPooling3D``."""
    return _layer("pool", dims)


def spatial_dims(x: keras.KerasTensor) -> int:
    """Number of spatial axes of a channels-last (batch, *spatial, C) tensor."""
    return len(x.shape) - 2


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


def check_input_shape(input_shape: Sequence[int], dims: int = 2) -> tuple[int, ...]:
    """Validates a static ``(*spatial, channels)`` input shape with ``dims`` spatial axes.

    Lists (as they come from YAML/JSON job files) are accepted too.

    Raises:
        ValueError: Not ``dims + 1`` positive integers.
    """
    axes = _AXIS_NAMES[dims]
    try:
        # operator.index accepts numpy integers but not floats like 64.0.
        sizes = list(input_shape)
        shape = tuple(int(operator.index(d)) for d in sizes)
        bad = len(shape) != dims + 1 or any(isinstance(d, bool) or d <= 0 for d in sizes)
    except TypeError:
        bad = True
    if bad:
        count = ("three", "four")[dims - 2]
        raise ValueError(
            f"input_shape must be {count} positive integers ({axes}, channels), "
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
    strides: int | Sequence[int] = 1,
    padding: str,
    norm: str,
    activation: str,
    name: str,
) -> keras.KerasTensor:
    """Applies conv -> optional norm -> activation.

    The conv has no bias when a norm follows: the norm's own shift makes it
    redundant.

    Args:
        x: Input tensor (batch, H, W, C) or (batch, D, H, W, C); picks Conv2D or Conv3D.
        filters: Output channels.
        kernel_size: Kernel size along every spatial axis.
        strides: Conv stride, one for all axes or one per axis.
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
    x = conv(spatial_dims(x))(
        filters,
        kernel_size,
        strides=_ints(strides),
        padding=padding,
        use_bias=normalise is None,
        # He init suits (leaky) ReLU; it is what Ronneberger et al. use.
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    if normalise is not None:
        x = normalise(x)
    return act(x)


def _ints(value: int | Sequence[int]) -> int | tuple[int, ...]:
    # Plain ints keep the layer configs JSON-serialisable for .keras files, even
    # when a search space samples numpy integers.
    if isinstance(value, numbers.Integral):
        return int(value)
    return tuple(int(v) for v in value)


def spatial_size(x: keras.KerasTensor) -> tuple[int, ...]:
    """Static spatial size of a (batch, *spatial, C) tensor.

    Raises:
        ValueError: Some spatial axis is not static.
    """
    size = x.shape[1:-1]
    if any(d is None for d in size):
        raise ValueError(f"need a static spatial size, got shape {tuple(x.shape)}")
    return tuple(int(d) for d in size)


def split_evenly(total: int) -> tuple[int, int]:
    """Splits ``total`` into (before, after) with ``after`` taking the odd one."""
    return total // 2, total - total // 2


def pad(x: keras.KerasTensor, padding: Padding, *, name: str) -> keras.KerasTensor:
    """Zero-pads by ``((before, after), ...)`` per spatial axis; adds no layer for zero."""
    if not any(any(p) for p in padding):
        return x
    return _layer("zero_padding", spatial_dims(x))(tuple(padding), name=name)(x)


def crop(
    x: keras.KerasTensor, cropping: Padding, *, name: str, dtype: str | None = None
) -> keras.KerasTensor:
    """Crops ``((before, after), ...)`` per spatial axis; adds no layer for zero.

    Args:
        x: Input tensor.
        cropping: Pixels to remove from each side of each spatial axis.
        name: Layer name.
        dtype: Layer dtype policy. Pass ``"float32"`` after a float32 logits
            layer: under a mixed policy the crop would otherwise cast back to
            float16.
    """
    if not any(any(c) for c in cropping):
        return x
    return _layer("cropping", spatial_dims(x))(tuple(cropping), name=name, dtype=dtype)(x)


def center_crop_to(x: keras.KerasTensor, size: Sequence[int], *, name: str) -> keras.KerasTensor:
    """Center-crops ``x`` to the spatial ``size``, e.g. a U-Net skip.

    Raises:
        ValueError: ``x`` is smaller than ``size``.
    """
    current = spatial_size(x)
    if any(have < want for have, want in zip(current, size)):
        raise ValueError(f"cannot crop {current} to the larger {tuple(size)}")
    return crop(x, tuple(split_evenly(have - want) for have, want in zip(current, size)),
                name=name)


def pad_to_multiple(
    x: keras.KerasTensor, multiple: int | Sequence[int], *, name: str = "pad"
) -> tuple[keras.KerasTensor, Padding]:
    """Zero-pads every spatial axis up to a multiple of ``multiple``.

    The padding is split evenly between the two sides so the image stays
    centred; odd pixels go to the bottom/right/back.

    Args:
        x: Input tensor (batch, *spatial, C) with a static spatial size.
        multiple: Required divisor of the padded size, for all axes or per axis
            (an anisotropic U-Net pools some axes less often).
        name: Name of the padding layer (only added if padding is needed).

    Returns:
        The padded tensor and the cropping that undoes the padding, for
        :func:`crop_back`.
    """
    size = spatial_size(x)
    multiples = [multiple] * len(size) if isinstance(multiple, numbers.Integral) else multiple
    if len(multiples) != len(size):
        raise ValueError(f"need one multiple per spatial axis {size}, got {multiple!r}")
    multiples = [check_int("multiple", m, 1) for m in multiples]
    padding = tuple(split_evenly(-n % m) for n, m in zip(size, multiples))
    return pad(x, padding, name=name), padding


def crop_back(
    x: keras.KerasTensor, cropping: Padding, *, name: str = "crop", dtype: str | None = None
) -> keras.KerasTensor:
    """Undoes :func:`pad_to_multiple` (or any padding) with a cropping layer."""
    return crop(x, cropping, name=name, dtype=dtype)
