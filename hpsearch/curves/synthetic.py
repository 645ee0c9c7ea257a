"""A parametric learning-curve table, for testing replay and benchmarks before real tables exist.

Every configuration gets a ceiling ``a`` and a time constant ``tau`` from its
hyperparameters, and its validation Dice follows a delayed rise to the ceiling plus noise::

    dice(e) = a(config) * (1 - exp(-(e / tau(config)) ** 2)) + noise

The squared exponent gives the early plateau the demo showed (every trial below 0.1 at
epoch 2), which is what makes early stopping at low rungs a gamble. ``a`` peaks at a
learning-rate sweet spot (about 1.5e-3) and drops for weak choices (no normalisation, a
shallow net, plain cross-entropy, much dropout); fast learning rates rise sooner. Some
configurations with a high learning rate and no normalisation diverge (NaN from some epoch
on), as real ones do. It is a test fixture, not a claim about real tasks.

Example:
    >>> table = synthetic_table({"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
    ...                         rows=20, max_epochs=10, seed=0)
    >>> table.val_dice.shape, 0.5 < table.best() < 1
    ((20, 10), True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hpsearch.curves.table import CAP_PARAMS, CurveTable

SWEET_LR = 1.5e-3


def sample_config(space: dict[str, dict[str, Any]], rng: np.random.Generator) -> dict[str, Any]:
    """One configuration drawn uniformly (log-uniformly where the space says so) from ``space``,
    without the names that only cap a curve (``epochs``)."""
    config: dict[str, Any] = {}
    for name, dist in sorted(space.items()):
        if name in CAP_PARAMS:
            continue
        if dist["type"] == "choice":
            config[name] = dist["values"][int(rng.integers(len(dist["values"])))]
        elif dist["type"] == "int":
            config[name] = int(rng.integers(int(dist["low"]), int(dist["high"]) + 1))
        elif dist["type"] == "loguniform":
            config[name] = float(math.exp(rng.uniform(math.log(dist["low"]), math.log(dist["high"]))))
        else:
            config[name] = float(rng.uniform(dist["low"], dist["high"]))
    return config


def synthetic_table(space: dict[str, dict[str, Any]], *, rows: int = 300, max_epochs: int = 20, seed: int = 0,
                    noise: float = 0.005, name: str = "synthetic") -> CurveTable:
    """A table of ``rows`` configurations of ``space`` with curves from the family above.

    Args:
        space: Plain search-space dicts (``{"type": "loguniform", "low": ..., "high": ...}``).
        rows, max_epochs: The table's size.
        seed: Seeds the configurations and the noise: the same seed gives the same table.
        noise: Standard deviation of the per-epoch Dice noise.
    """
    rng = np.random.default_rng(seed)
    configs = [sample_config(space, rng) for _ in range(rows)]
    epochs = np.arange(1, max_epochs + 1, dtype=np.float64)
    dice = np.empty((rows, max_epochs))
    seconds = np.empty((rows, max_epochs))
    for i, config in enumerate(configs):
        ceiling, tau = _ceiling(config), _tau(config)
        dice[i] = np.clip(ceiling * (1 - np.exp(-(epochs / tau) ** 2)) + rng.normal(0, noise, max_epochs), 0, 1)
        seconds[i] = _epoch_seconds(config) * rng.uniform(0.9, 1.1, max_epochs)
        if config.get("norm", "batch") == "none" and config.get("learning_rate", SWEET_LR) > 5e-3 and rng.random() < 0.5:
            dice[i, int(rng.integers(1, max_epochs)):] = np.nan  # diverged
    loss = np.where(np.isnan(dice), np.nan, 1.05 - dice + rng.normal(0, noise, dice.shape))
    meta = {"task": "synthetic", "family": "a(config) * (1 - exp(-(e / tau(config))^2)) + noise", "seed": seed,
            "noise": noise}
    return CurveTable(name, space, configs, val_dice=dice, val_loss=loss, epoch_seconds=seconds, meta=meta)


def _ceiling(config: dict[str, Any]) -> float:
    lr = config.get("learning_rate", SWEET_LR)
    a = 0.92 - 0.15 * math.log10(lr / SWEET_LR) ** 2
    a -= {"none": 0.04, "batch": 0.0, "instance": 0.005}.get(config.get("norm"), 0.0)
    a -= 0.015 * (4 - config.get("depth", 4))
    a -= {"ce": 0.02, "dice": 0.005, "ce_dice": 0.0}.get(config.get("loss"), 0.0)
    a -= 0.1 * max(0.0, config.get("dropout", 0.0) - 0.3)
    a -= 0.1 * (1 - config.get("decay_rate", 1.0)) * (config.get("decay_steps", 1000) == 100)
    return float(np.clip(a, 0.05, 0.95))


def _tau(config: dict[str, Any]) -> float:
    lr = config.get("learning_rate", SWEET_LR)
    tau = 4.0 * (SWEET_LR / lr) ** 0.5 * (config.get("batch_size", 8) / 8) ** 0.3
    return float(np.clip(tau, 1.5, 30.0))


def _epoch_seconds(config: dict[str, Any]) -> float:
    filters, depth = config.get("base_filters", 16), config.get("depth", 4)
    return 6.0 * (filters / 16) ** 1.5 * (1 + 0.25 * (depth - 2))
