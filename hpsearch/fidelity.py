"""Cheaper first epochs: training at a lower resolution and on a fraction of the training
cases until ASHA's first rung (issue #12, section 4), in slice mode.

ASHA decides at its first rung from a few epochs of every trial; most trials are stopped
there, so most of a search's compute is spent on epochs whose only use is that decision.
``scheduler.fidelity`` makes those epochs cheaper:

* ``resolution``: the training slices are down-sampled (images by linear interpolation,
  labels by nearest neighbour) to about that fraction of their size along each axis, a
  multiple of what the network halves them to (:func:`low_size`); the same weights train at
  both sizes (the networks are fully convolutional), so nothing is retrained later;
* ``case_fraction``: the slices of a seeded subset of the training cases
  (:func:`case_subset`), the same subset every low-fidelity epoch of a trial.

After ``epochs`` epochs (default: ``scheduler.grace_period``) a trial trains on every case
at full size. Validation is always on every validation case at full size, so a rung
compares trials on the Dice they would have at the end and a curve goes on where it was.
Whether this lowers the compute a search needs to reach a good model is measured by
``benchmarks/fidelity.py`` (README, "Measuring search strategies").

Example:
    >>> fidelity = FidelityConfig(resolution=0.5, case_fraction=0.5, epochs=2)
    >>> low_size((96, 96), fidelity.resolution, multiple=16)
    (48, 48)
    >>> case_subset(np.array([0, 0, 1, 1, 2, 3]), cases=4, fraction=0.5, seed=0).tolist()
    [0, 1, 4]
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage


class FidelityConfig(BaseModel):
    """``scheduler.fidelity`` of a job.

    Attributes:
        resolution: Fraction of the slice size (per axis) the first ``epochs`` train at.
        case_fraction: Fraction of the training cases the first ``epochs`` train on.
        epochs: How many epochs of a trial (of each fold, when it cross-validates) train
            so; ``None`` until the job fills in ``scheduler.grace_period``.
    """

    model_config = ConfigDict(extra="forbid")

    resolution: float = Field(1.0, gt=0.0, le=1.0)
    case_fraction: float = Field(1.0, gt=0.0, le=1.0)
    epochs: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _something_is_cheaper(self):
        if self.resolution == 1.0 and self.case_fraction == 1.0:
            raise ValueError("resolution and case_fraction are both 1, so no epoch is cheaper; "
                             "lower one of them or remove scheduler.fidelity")
        return self

    def applies(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) trains at low fidelity."""
        return self.epochs is not None and epoch < self.epochs


def low_size(size: tuple[int, ...], resolution: float, multiple: int) -> tuple[int, ...]:
    """The size the low-fidelity epochs train at: ``resolution`` of ``size`` per axis, rounded
    to a multiple of ``multiple`` (what the network halves a slice to), at least ``multiple``.

    Raises:
        ValueError: ``size`` itself is not a multiple of ``multiple``: the network then pads
            its input by a fixed amount, and the same weights cannot take another size.
    """
    if any(n % multiple for n in size):
        raise ValueError(f"slices of {'x'.join(map(str, size))} do not divide by {multiple}, which the network "
                         f"halves them to, so it cannot also train at a lower resolution; choose a "
                         f"dataset.image_size divisible by {multiple}")
    return tuple(max(multiple, round(n * resolution / multiple) * multiple) for n in size)


def case_subset(slice_cases: np.ndarray, cases: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of the slices of ``ceil(fraction * cases)`` training cases, drawn with ``seed``.

    Args:
        slice_cases: Each training slice's case (position in the data's ``train_cases``).
        cases: How many training cases there are.
        fraction: Fraction of them to keep (at least one case is kept).
        seed: The trial's seed: the same subset for every low-fidelity epoch of it.
    """
    keep = max(1, math.ceil(fraction * cases))
    chosen = np.random.default_rng([seed, 0x5EED]).choice(cases, size=keep, replace=False)
    return np.flatnonzero(np.isin(slice_cases, chosen))


def downsample(x: np.ndarray, y: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A batch of ``(N, H, W, C)`` images and ``(N, H, W)`` labels at ``size`` (H', W').

    Images are interpolated linearly (after a Gaussian blur against aliasing, as
    ``skimage.transform.resize`` does), labels by nearest neighbour, so a label stays
    one of the classes.
    """
    factors = [new / old for new, old in zip(size, x.shape[1:3])]
    sigma = [0.0, *(max(0.0, (1 / f - 1) / 2) for f in factors), 0.0]
    smooth = ndimage.gaussian_filter(x, sigma, mode="nearest") if any(sigma) else x
    images = ndimage.zoom(smooth, [1.0, *factors, 1.0], order=1, mode="nearest", grid_mode=True)
    labels = ndimage.zoom(y, [1.0, *factors], order=0, mode="nearest", grid_mode=True)
    return images.astype(x.dtype, copy=False), labels.astype(y.dtype, copy=False)


__all__ = ["FidelityConfig", "case_subset", "downsample", "low_size"]
