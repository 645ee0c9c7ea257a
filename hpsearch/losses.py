"""Training losses on per-pixel logits: cross-entropy, soft Dice, and their sum.

All take sparse targets ``(B, H, W)`` of class indices and logits ``(B, H, W, C)``
and return a scalar. Written with ``keras.ops`` so they run on any Keras backend.
Logits are cast to float32 first, so the losses stay stable under mixed precision.

Example:
    >>> import numpy as np
    >>> y = np.array([[[0, 1]]])
    >>> perfect = np.array([[[[9.0, -9.0], [-9.0, 9.0]]]])
    >>> round(float(soft_dice_loss(y, perfect)), 3)
    0.0
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import ops

# Keeps 0/0 finite for a class absent from both target and batch prediction.
_SMOOTH = 1e-5


def _prepare(y_true, logits):
    logits = ops.cast(logits, "float32")
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == len(logits.shape):  # (B, H, W, 1) targets
        y_true = ops.squeeze(y_true, axis=-1)
    return y_true, logits


def cross_entropy_loss(y_true, logits):
    """Mean sparse categorical cross-entropy from logits."""
    y_true, logits = _prepare(y_true, logits)
    return ops.mean(keras.losses.sparse_categorical_crossentropy(y_true, logits, from_logits=True))


def soft_dice_loss(y_true, logits):
    """``1 -`` mean soft Dice of the foreground classes, pooled over the batch.

    Pooling over the batch ("batch Dice", as nnU-Net does for 2D) keeps the gradient
    defined on slices where a class is absent; background is left out so a small
    structure is not outweighed by the background's near-perfect overlap.
    """
    y_true, logits = _prepare(y_true, logits)
    num_classes = logits.shape[-1]
    probs = ops.softmax(logits, axis=-1)
    target = ops.one_hot(y_true, num_classes, dtype="float32")
    axes = tuple(range(len(logits.shape) - 1))
    intersection = ops.sum(probs * target, axis=axes)
    denominator = ops.sum(probs, axis=axes) + ops.sum(target, axis=axes)
    dice = (2.0 * intersection + _SMOOTH) / (denominator + _SMOOTH)
    return 1.0 - ops.mean(dice[1:])


def ce_dice_loss(y_true, logits):
    """Cross-entropy plus soft Dice: the nnU-Net default."""
    return cross_entropy_loss(y_true, logits) + soft_dice_loss(y_true, logits)


LOSSES: dict[str, Callable] = {
    "ce": cross_entropy_loss,
    "dice": soft_dice_loss,
    "ce_dice": ce_dice_loss,
}


def get_loss(name: str) -> Callable:
    """The loss function called ``name`` (``ce``, ``dice``, ``ce_dice``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss '{name}'; choose one of {sorted(LOSSES)}") from None
