"""3-D U-Net with nnU-Net's options, any input size.

The same network as the 2-D :func:`~hpsearch.models.unet.build_unet` (one code path,
:func:`~hpsearch.models.unet.build_unet_nd`, with Conv3D layers), plus what nnU-Net's
3-D configurations use:

* ``downsample="strided"``: the first 3x3x3 conv of each level strides instead of a
  max-pool before it;
* ``pool_sizes``: the factor of each down-sampling along each axis, e.g.
  ``[[1, 2, 2], [2, 2, 2], ...]`` for slices thicker than their pixels (the plan of
  ``hpsearch data plan --dims 3`` gives how often each axis can pool);
* ``max_filters``: filters double per level up to a cap (nnU-Net: 320), which keeps
  deep 3-D networks within memory.

Example:
    >>> from hpsearch.models.unet3d import build_unet3d
    >>> model = build_unet3d((13, 17, 19, 1), 2, depth=2, base_filters=2,
    ...                      pool_sizes=[[1, 2, 2], [2, 2, 2]], downsample="strided")
    >>> tuple(model.output.shape)
    (None, 13, 17, 19, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from hpsearch.models.options import UNet3DOptions
from hpsearch.models.unet import build_unet_nd


def build_unet3d(
    input_shape: tuple[int, int, int, int],
    num_classes: int,
    *,
    depth: int = 4,
    base_filters: int = 32,
    padding: str = "same",
    norm: str = "none",
    activation: str = "relu",
    dropout: float = 0.0,
    downsample: str = "pool",
    pool_sizes: Sequence[Sequence[int]] | None = None,
    max_filters: int = 320,
) -> keras.Model:
    """Builds a 3-D U-Net returning float32 per-voxel class logits.

    Args:
        input_shape: Static ``(depth, height, width, channels)``; any size works
            (padded inside the model and cropped back).
        num_classes: Number of output channels (logits, no softmax).
        depth: Number of down-sampling steps.
        base_filters: Filters of the first level, doubled per level (nnU-Net: 32).
        padding: ``"same"`` or ``"valid"`` (unpadded convs, as in the U-Net paper).
        norm: ``"none"``, ``"batch"`` or ``"instance"`` (nnU-Net: instance).
        activation: ``"relu"`` or ``"leaky_relu"`` (nnU-Net: leaky_relu).
        dropout: Dropout rate after the bottleneck; 0 adds no layer.
        downsample: ``"pool"`` (2x2x2 max-pool) or ``"strided"`` (nnU-Net's).
        pool_sizes: ``depth`` lists of 3 factors (depth, height, width axes), one
            per down-sampling; None: 2 on every axis.
        max_filters: Cap on the filters of a level (nnU-Net: 320).

    Returns:
        A functional model mapping (batch, D, H, W, C) to (batch, D, H, W, num_classes).

    Raises:
        ValueError: An argument is out of range or an unknown name.
    """
    return build_unet_nd(input_shape, num_classes, dims=3, depth=depth,
                         base_filters=base_filters, padding=padding, norm=norm,
                         activation=activation, dropout=dropout, downsample=downsample,
                         pool_sizes=pool_sizes, max_filters=max_filters, name="unet3d")


__all__ = ["UNet3DOptions", "build_unet3d"]
