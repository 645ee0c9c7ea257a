"""U-Net (Ronneberger et al., 2015) for 2-D and 3-D segmentation, any input size.

The network returns per-pixel class logits at the input's size. :func:`build_unet`
is the 2-D network; :func:`build_unet_nd` builds either (the 3-D one of
:mod:`hpsearch.models.unet3d` adds nnU-Net's options: strided-convolution
down-sampling, per-axis pooling for anisotropic voxels and a cap on the filters).
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

import math
from collections.abc import Sequence

import keras

from hpsearch.models import blocks
from hpsearch.models.options import UNetOptions

# Each level runs two 3x3 convs; unpadded, each trims one pixel per side.
_CONVS_PER_LEVEL = 2
_CONV_TRIM = 2
_VALID_TRIM = _CONV_TRIM * _CONVS_PER_LEVEL
_KERNEL = 3
DOWNSAMPLES: tuple[str, ...] = ("pool", "strided")


def _factors(depth: int | Sequence[int]) -> list[int]:
    """Per-level pooling factors along one axis: ``depth`` times 2, or as given."""
    if isinstance(depth, Sequence):
        return [int(f) for f in depth]
    return [2] * depth


def valid_output_size(size: int, depth: int | Sequence[int], downsample: str = "pool") -> int | None:
    """Output size of an unpadded U-Net along one axis.

    Args:
        size: Input size along the axis.
        depth: Number of 2x down-sampling steps, or the factor of each step along
            this axis (1 where an anisotropic U-Net leaves the axis alone).
        downsample: ``"pool"`` (max-pool by the factor) or ``"strided"`` (the
            first 3-wide conv of the next level strides by the factor, nnU-Net's way).

    Returns:
        The output size, or None if ``size`` does not work: some down-sampling
        would drop a last row (the skip would no longer line up) or some map
        shrinks below one pixel.
    """
    factors = _factors(depth)
    size -= _VALID_TRIM  # level 0
    for factor in factors:
        if downsample == "pool" or factor == 1:
            # Max-pool (or a stride-1 conv) then the next level's two convs.
            if size < factor or size % factor:
                return None
            size = size // factor - _VALID_TRIM
        else:
            # A 3-wide conv striding by the factor, then the level's second conv.
            if size < _KERNEL or (size - _KERNEL) % factor:
                return None
            size = (size - _KERNEL) // factor + 1 - _CONV_TRIM
    if size < 1:
        return None
    for factor in reversed(factors):
        size = factor * size - _VALID_TRIM
        if size < 1:
            return None
    return size


def valid_input_size(size: int, depth: int | Sequence[int], downsample: str = "pool") -> int:
    """Smallest input size whose unpadded U-Net output is at least ``size``.

    Valid input sizes recur with the period of the total down-sampling, and the
    output grows with the input, so a short upward scan finds it.

    Raises:
        ValueError: ``size`` or ``depth`` is below 1.
    """
    size = blocks.check_int("size", size, 1)
    if not isinstance(depth, Sequence):
        blocks.check_int("depth", depth, 1)
    candidate = size
    while True:
        out = valid_output_size(candidate, depth, downsample)
        if out is not None and out >= size:
            return candidate
        candidate += 1


def valid_padding(
    size: int, depth: int | Sequence[int], downsample: str = "pool"
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Input padding and output cropping that make a valid U-Net size-preserving.

    The unpadded network maps padded-input pixel ``k + border`` to output
    pixel ``k``. Padding the top by ``border + crop_top`` and cropping
    ``crop_top`` off the output therefore puts original pixel j at output pixel j.
    With max-pooling the border is the same on both sides. A kernel-3 strided conv
    puts its output pixels half a pixel off the pooling grid (as nnU-Net's do),
    which can make the border odd; then the extra pixel goes after.

    Args:
        size: Original size along one axis.
        depth: Number of down-sampling steps, or their factors along this axis.
        downsample: ``"pool"`` or ``"strided"``.

    Returns:
        ``((pad_before, pad_after), (crop_before, crop_after))``.
    """
    padded = valid_input_size(size, depth, downsample)
    out = valid_output_size(padded, depth, downsample)
    border = (padded - out) // 2
    crop = blocks.split_evenly(out - size)
    pad_before = border + crop[0]
    return (pad_before, padded - size - pad_before), crop


def _double_conv(x: keras.KerasTensor, filters: int, *, strides: int | Sequence[int] = 1,
                 padding: str, norm: str, activation: str, name: str) -> keras.KerasTensor:
    """The paper's per-level unit: two 3x3 conv -> norm -> activation blocks.

    ``strides`` applies to the first conv: nnU-Net down-samples that way.
    """
    for i in range(1, _CONVS_PER_LEVEL + 1):
        x = blocks.conv_block(x, filters, _KERNEL, strides=strides if i == 1 else 1,
                              padding=padding, norm=norm, activation=activation,
                              name=f"{name}_{i}")
    return x


def check_pool_sizes(pool_sizes: Sequence[Sequence[int]] | None, depth: int,
                     dims: int) -> list[tuple[int, ...]]:
    """Per-level, per-axis down-sampling factors; None means 2 on every axis.

    Raises:
        ValueError: Not ``depth`` entries of ``dims`` integers >= 1.
    """
    if pool_sizes is None:
        return [(2,) * dims] * depth
    try:
        levels = [tuple(blocks.check_int("pool_sizes", f, 1) for f in level)
                  for level in pool_sizes]
        bad = len(levels) != depth or any(len(level) != dims for level in levels)
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise ValueError(f"pool_sizes must be {depth} (depth) lists of {dims} integers >= 1, "
                         f"one per down-sampling, got {pool_sizes!r}")
    return levels


def build_unet_nd(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    dims: int,
    depth: int,
    base_filters: int,
    padding: str,
    norm: str,
    activation: str,
    dropout: float,
    downsample: str = "pool",
    pool_sizes: Sequence[Sequence[int]] | None = None,
    max_filters: int | None = None,
    name: str = "unet",
) -> keras.Model:
    """Builds a 2-D or 3-D U-Net returning float32 per-voxel class logits.

    Args:
        input_shape: Static ``(*spatial, channels)`` with ``dims`` spatial axes.
        num_classes: Number of output channels (logits, no softmax).
        dims: 2 or 3 spatial axes.
        depth: Number of down-sampling steps.
        base_filters: Filters of the first level, doubled per level.
        padding: ``"same"`` or ``"valid"`` (unpadded convs, as in the paper).
        norm: ``"none"``, ``"batch"`` or ``"instance"``.
        activation: ``"relu"`` or ``"leaky_relu"``.
        dropout: Dropout rate after the bottleneck; 0 adds no layer.
        downsample: ``"pool"`` (max-pool) or ``"strided"`` (the first conv of the
            next level strides, nnU-Net's way).
        pool_sizes: Per level, the factor along each axis; None: 2 everywhere.
        max_filters: Cap on the filters of a level; None: no cap.
        name: Model name.

    Raises:
        ValueError: An argument is out of range or an unknown name.
    """
    shape = blocks.check_input_shape(input_shape, dims)
    num_classes = blocks.check_int("num_classes", num_classes, 1)
    depth = blocks.check_int("depth", depth, 1)
    base_filters = blocks.check_int("base_filters", base_filters, 1)
    blocks.check_choice("padding", padding, blocks.PADDINGS)
    blocks.check_choice("norm", norm, blocks.NORMS)
    blocks.check_choice("activation", activation, blocks.ACTIVATIONS)
    blocks.check_choice("downsample", downsample, DOWNSAMPLES)
    dropout = blocks.check_dropout(dropout)
    pools = check_pool_sizes(pool_sizes, depth, dims)
    cap = None if max_filters is None else blocks.check_int("max_filters", max_filters, 1)
    conv_args = {"padding": padding, "norm": norm, "activation": activation}

    def filters(level: int) -> int:
        return base_filters * 2**level if cap is None else min(base_filters * 2**level, cap)

    inputs = keras.Input(shape=shape, name="image")
    axis_factors = list(zip(*pools))  # per axis, the factor of each level
    if padding == "same":
        multiples = [int(math.prod(f)) for f in axis_factors]
        x, crop = blocks.pad_to_multiple(inputs, multiples, name="pad")
    else:
        pads, crop = zip(*(valid_padding(n, list(f), downsample)
                           for n, f in zip(shape[:-1], axis_factors)))
        x = blocks.pad(inputs, pads, name="pad")

    skips = []
    stride: tuple[int, ...] | int = 1
    for level in range(depth):
        x = _double_conv(x, filters(level), strides=stride, name=f"enc{level}", **conv_args)
        skips.append(x)
        if downsample == "pool":
            x = blocks.pool(dims)(pools[level], name=f"enc{level}_pool")(x)
        else:
            stride = pools[level]
    x = _double_conv(x, filters(depth), strides=stride, name="bottleneck", **conv_args)
    if dropout > 0:
        # The paper's drop-out at the end of the contracting path.
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(depth)):
        x = blocks.conv_transpose(dims)(filters(level), pools[level], strides=pools[level],
                                        name=f"dec{level}_up")(x)
        # Valid convs shrink the decoder more than the encoder; the skip is
        # centre-cropped to match (a no-op for "same").
        skip = blocks.center_crop_to(skips[level], blocks.spatial_size(x),
                                     name=f"dec{level}_skip_crop")
        x = keras.layers.Concatenate(name=f"dec{level}_concat")([skip, x])
        x = _double_conv(x, filters(level), name=f"dec{level}", **conv_args)

    # Cropping before the 1x1 conv is equivalent (it is pointwise), cheaper,
    # and leaves the float32 logits layer last for mixed precision.
    x = blocks.crop_back(x, crop, name="crop")
    outputs = blocks.conv(dims)(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


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
    """Builds a 2-D U-Net returning float32 per-pixel class logits.

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
    return build_unet_nd(input_shape, num_classes, dims=2, depth=depth,
                         base_filters=base_filters, padding=padding, norm=norm,
                         activation=activation, dropout=dropout, name="unet")


__all__ = [
    "DOWNSAMPLES",
    "UNetOptions",
    "build_unet",
    "build_unet_nd",
    "check_pool_sizes",
    "valid_input_size",
    "valid_output_size",
    "valid_padding",
]
