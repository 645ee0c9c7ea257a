"""Losses on hand-made logits with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpsearch.losses import (
    LOSSES,
    ce_dice_loss,
    cross_entropy_loss,
    get_loss,
    soft_dice_loss,
)


def _logits(probabilities):
    return np.log(np.asarray(probabilities, np.float32))


def test_cross_entropy_of_uniform_logits_is_log_c():
    y = np.zeros((2, 3, 3), np.uint8)
    logits = np.zeros((2, 3, 3, 4), np.float32)
    assert float(cross_entropy_loss(y, logits)) == pytest.approx(math.log(4), rel=1e-5)


def test_soft_dice_hand_value():
    # Two pixels, foreground probabilities 0.8 (true fg) and 0.4 (true bg):
    # intersection 0.8, sums 1.2 + 1 -> dice 1.6 / 2.2.
    y = np.array([[[1, 0]]])
    logits = _logits([[[[0.2, 0.8], [0.6, 0.4]]]])
    assert float(soft_dice_loss(y, logits)) == pytest.approx(1 - 1.6 / 2.2, rel=1e-4)


def test_soft_dice_ignores_background_and_accepts_channel_targets():
    y = np.array([[[0, 0]]])
    logits = _logits([[[[0.9, 0.1], [0.9, 0.1]]]])
    # Foreground absent everywhere but predicted with 0.2 mass: dice ~ 0 -> loss ~ 1.
    assert float(soft_dice_loss(y, logits)) == pytest.approx(1.0, abs=1e-3)
    assert float(soft_dice_loss(y[..., None], logits)) == pytest.approx(float(soft_dice_loss(y, logits)))


def test_ce_dice_is_the_sum():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (2, 4, 4))
    logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    total = float(ce_dice_loss(y, logits))
    assert total == pytest.approx(float(cross_entropy_loss(y, logits)) + float(soft_dice_loss(y, logits)), rel=1e-5)


def test_registry():
    assert set(LOSSES) == {"ce", "dice", "ce_dice"}
    with pytest.raises(ValueError, match="choose one of"):
        get_loss("focal")
