"""Fully convolutional network of the NVIDIA DLI left-ventricle segmentation lab.

The lab's network (``depth=2``, ``base_filters=100``)::

    conv 5x5/2 (100) -> maxpool 2 -> conv 5x5/2 (200) -> maxpool 2
    -> conv 3x3 (300) -> conv 3x3 (300) -> conv 1x1 (class scores)
    -> transposed conv (kernel 31, stride 16) back to full size

Generalised: ``depth`` (conv 5x5/2 + maxpool 2) stages give a total stride of
``4**depth``; the input is zero-padded to a multiple of it and the logits are
cropped back to the input size.

Example:
    >>> from hpsearch.models.fcn import FCNOptions, build_fcn
    >>> model = build_fcn((256, 256, 1), 2, **FCNOptions().model_dump())
    >>> tuple(model.output.shape)
    (None, 256, 256, 2)
"""

from __future__ import annotations

import keras

from hpsearch.models import blocks
from hpsearch.models.options import FCNOptions


def build_fcn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    depth: int = 2,
    base_filters: int = 100,
    norm: str = "none",
    activation: str = "relu",
    dropout: float = 0.0,
) -> keras.Model:
    """Builds the lab's FCN returning float32 per-pixel class logits.

    Args:
        input_shape: Static ``(height, width, channels)``; any size works.
        num_classes: Number of output channels (logits, no softmax).
        depth: Number of (conv 5x5 stride 2 + maxpool 2) stages (lab: 2).
        base_filters: Stage ``level`` has ``base_filters * (level + 1)``
            filters, the two 3x3 convs ``base_filters * (depth + 1)`` (lab: 100).
        norm: ``"none"``, ``"batch"`` or ``"instance"``.
        activation: ``"relu"`` or ``"leaky_relu"``.
        dropout: Dropout rate after the two 3x3 convs; 0 adds no layer.

    Returns:
        A functional model mapping (batch, H, W, C) to (batch, H, W, num_classes).

    Raises:
        ValueError: An argument is out of range or an unknown name.
    """
    shape = blocks.check_input_shape(input_shape)
    num_classes = blocks.check_int("num_classes", num_classes, 1)
    depth = blocks.check_int("depth", depth, 1)
    base_filters = blocks.check_int("base_filters", base_filters, 1)
    blocks.check_choice("norm", norm, blocks.NORMS)
    blocks.check_choice("activation", activation, blocks.ACTIVATIONS)
    dropout = blocks.check_dropout(dropout)
    conv_args = {"padding": "same", "norm": norm, "activation": activation}
    stride = 4**depth

    inputs = keras.Input(shape=shape, name="image")
    x, crop = blocks.pad_to_multiple(inputs, stride, name="pad")
    for level in range(depth):
        x = blocks.conv_block(x, base_filters * (level + 1), 5, strides=2,
                              name=f"conv{level + 1}", **conv_args)
        x = keras.layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    top_filters = base_filters * (depth + 1)
    x = blocks.conv_block(x, top_filters, 3, name=f"conv{depth + 1}", **conv_args)
    x = blocks.conv_block(x, top_filters, 3, name=f"conv{depth + 2}", **conv_args)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="score")(x)
    # Kernel 2*stride-1 (31 for stride 16, as in the lab) overlaps neighbouring
    # coarse pixels, so the up-sampling interpolates instead of tiling blocks.
    x = keras.layers.Conv2DTranspose(num_classes, 2 * stride - 1, strides=stride,
                                     padding="same", dtype="float32", name="upscore")(x)
    # float32 so that, under a mixed policy, the crop does not cast the logits
    # back to float16.
    outputs = blocks.crop_back(x, crop, name="crop", dtype="float32")
    return keras.Model(inputs, outputs, name="fcn")


__all__ = ["FCNOptions", "build_fcn"]
