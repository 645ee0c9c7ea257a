"""U-Net (Ronneberger et al., 2015) for 2-D segmentation, any input size.

The network returns per-pixel class logits at the input's height and width.
With ``padding="same"`` the input is zero-padded to a multiple of
``2**depth`` and the output cropped back. With ``padding="valid"`` the convs
are unpadded as in the paper; the input is zero-padded to the smallest size
whose valid output covers it and the output is centre-cropped so that output
pixel j lines up with input pixel j.

Example:
    >>> from hpsearch.models.unet import UNetOptions, build_unet, valid_output_size
    >>> opts = UNetOptions(depth=2, base_filters=4, padding="valid")
    >>> model = build_unet((37, 41, 1), 3, **opts.model_dump())
    >>> tuple(model.output.shape)
    (None, 37, 41, 3)
    >>> valid_output_size(572, 4)  # the paper's tile: 572 in, 388 out
    388
"""

from __future__ import annotations

import keras

from hpsearch.models import blocks
from hpsearch.models.options import UNetOptions

# Each level runs two 3x3 convs; unpadded, each trims one pixel per side.
_CONVS_PER_LEVEL = 2
_VALID_TRIM = 2 * _CONVS_PER_LEVEL


def valid_output_size(size: int, depth: int) -> int | None:
    """Output size of an unpadded U-Net along one axis.

    Args:
        size: Input size along the axis.
        depth: Number of 2x2 max-pool steps.

    Returns:
        The output size, or None if ``size`` does not work: some map before a
        pooling is odd (its last row would be dropped and the skip would no
        longer line up) or some map shrinks below one pixel.
    """
    for _ in range(depth):
        size -= _VALID_TRIM
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= _VALID_TRIM  # bottleneck
    if size < 1:
        return None
    for _ in range(depth):
        size = 2 * size - _VALID_TRIM
        if size < 1:
            return None
    return size


def valid_input_size(size: int, depth: int) -> int:
    """Smallest input size whose unpadded U-Net output is at least ``size``.

    Valid input sizes form an arithmetic progression with step ``2**depth`` and
    the output is the input minus a constant border, so a short upward scan
    finds it (at most ``size + border + 2**depth`` steps).

    Raises:
        ValueError: ``size`` or ``depth`` is below 1.
    """
    size = blocks.check_int("size", size, 1)
    depth = blocks.check_int("depth", depth, 1)
    candidate = size
    while True:
        out = valid_output_size(candidate, depth)
        if out is not None and out >= size:
            return candidate
        candidate += 1


def valid_padding(size: int, depth: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Input padding and output cropping that make a valid U-Net size-preserving.

    The unpadded network maps padded-input pixel ``k + border`` to output
    pixel ``k`` (the border is the same on both sides). Padding the top by
    ``border + crop_top`` and cropping ``crop_top`` off the output therefore
    puts original pixel j at output pixel j.

    Args:
        size: Original size along one axis.
        depth: Number of pooling steps.

    Returns:
        ``((pad_before, pad_after), (crop_before, crop_after))``.
    """
    padded = valid_input_size(size, depth)
    out = valid_output_size(padded, depth)
    if out is None or (padded - out) % 2:  # cannot happen; guards a future edit
        raise ValueError(f"no symmetric valid U-Net border for size {size}, depth {depth}")
    border = (padded - out) // 2
    crop = blocks.split_evenly(out - size)
    pad_before = border + crop[0]
    return (pad_before, padded - size - pad_before), crop


def _double_conv(x: keras.KerasTensor, filters: int, *, padding: str, norm: str,
                 activation: str, name: str) -> keras.KerasTensor:
    """The paper's per-level unit: two 3x3 conv -> norm -> activation blocks."""
    for i in range(1, _CONVS_PER_LEVEL + 1):
        x = blocks.conv_block(x, filters, 3, padding=padding, norm=norm,
                              activation=activation, name=f"{name}_{i}")
    return x


def build_unet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    depth: int = 4,
    base_filters: int = 16,
    padding: str = "same",
    norm: str = "none",
    activation: str = "relu",
    dropout: float = 0.0,
) -> keras.Model:
    """Builds a U-Net returning float32 per-pixel class logits.

    Args:
        input_shape: Static ``(height, width, channels)``; any size works.
        num_classes: Number of output channels (logits, no softmax).
        depth: Number of 2x2 max-pool down-sampling steps (paper: 4).
        base_filters: Filters of the first level, doubled per level.
        padding: ``"same"`` or ``"valid"`` (unpadded convs, as in the paper).
        norm: ``"none"``, ``"batch"`` or ``"instance"``.
        activation: ``"relu"`` or ``"leaky_relu"``.
        dropout: Dropout rate after the bottleneck; 0 adds no layer.

    Returns:
        A functional model mapping (batch, H, W, C) to (batch, H, W, num_classes).

    Raises:
        ValueError: An argument is out of range or an unknown name.
    """
    height, width, _ = shape = blocks.check_input_shape(input_shape)
    num_classes = blocks.check_int("num_classes", num_classes, 1)
    depth = blocks.check_int("depth", depth, 1)
    base_filters = blocks.check_int("base_filters", base_filters, 1)
    blocks.check_choice("padding", padding, blocks.PADDINGS)
    blocks.check_choice("norm", norm, blocks.NORMS)
    blocks.check_choice("activation", activation, blocks.ACTIVATIONS)
    dropout = blocks.check_dropout(dropout)
    conv_args = {"padding": padding, "norm": norm, "activation": activation}

    inputs = keras.Input(shape=shape, name="image")
    if padding == "same":
        x, crop = blocks.pad_to_multiple(inputs, 2**depth, name="pad")
    else:
        (pad_h, crop_h), (pad_w, crop_w) = valid_padding(height, depth), valid_padding(width, depth)
        x, crop = blocks.pad2d(inputs, (pad_h, pad_w), name="pad"), (crop_h, crop_w)

    skips = []
    for level in range(depth):
        x = _double_conv(x, base_filters * 2**level, name=f"enc{level}", **conv_args)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _double_conv(x, base_filters * 2**depth, name="bottleneck", **conv_args)
    if dropout > 0:
        # The paper's drop-out at the end of the contracting path.
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        # Valid convs shrink the decoder more than the encoder; the skip is
        # centre-cropped to match (a no-op for "same").
        skip = blocks.center_crop_to(skips[level], blocks.spatial_size(x),
                                     name=f"dec{level}_skip_crop")
        x = keras.layers.Concatenate(name=f"dec{level}_concat")([skip, x])
        x = _double_conv(x, filters, name=f"dec{level}", **conv_args)

    # Cropping before the 1x1 conv is equivalent (it is pointwise), cheaper,
    # and leaves the float32 logits layer last for mixed precision.
    x = blocks.crop_back(x, crop, name="crop")
    outputs = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="unet")


__all__ = [
    "UNetOptions",
    "build_unet",
    "valid_input_size",
    "valid_output_size",
    "valid_padding",
]
