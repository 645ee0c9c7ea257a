"""On-the-fly augmentation of training patches with nnU-Net's own library, batchgenerators.

:class:`AugmentConfig` is the job file's ``augment:`` section (every key searchable as
``augment.<key>``); :func:`build_transforms` turns it into a batchgenerators ``Compose``
in nnU-Net's order (spatial, noise, blur, brightness, contrast, low resolution, gamma,
mirror), and :func:`augment_batch` applies it deterministically for a seed.

Why batchgenerators: it is numpy-native (the loader's workers never import a deep-learning
framework), covers 2D and 3D with the same transforms, and is what nnU-Net's published
results were trained with; MONAI and TorchIO pull in PyTorch, albumentations is 2D-first.

nnU-Net's "initial patch size": rotating or zooming out a patch pulls in voxels from
outside it. So the sampler cuts a larger box (:func:`sample_size`) around the patch
centre, and ``SpatialTransform`` (``random_crop=False``) resamples the final patch from
the box's centre: the corners of a rotated patch show real image, not padding.

batchgenerators draws from the *global* ``np.random`` (and, for the noise variance, from
Python's ``random``); :func:`augment_batch` seeds both per batch under a lock and restores
their previous states, so a batch is a pure function of its seed in the loader's worker
processes and in-process alike.

Example:
    >>> config = AugmentConfig(rotation=0, scale=(1, 1), elastic_p=0)
    >>> sample_size(config, (32, 32))
    (32, 32)
    >>> x, y = augment_batch(build_transforms(config, (32, 32)), np.zeros((2, 1, 32, 32), np.float32),
    ...                      np.zeros((2, 32, 32), np.uint8), seed=7)
    >>> x.shape, y.dtype
    ((2, 1, 32, 32), dtype('uint8'))
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence

import numpy as np
import pydantic
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchgenerators.transforms.abstract_transforms import Compose
# batchgenerators (with scikit-image: ~3 s) is imported where transforms are built: the job
# file's `augment:` section is validated by every command, which must not pay for it.

Range = tuple[float, float]
# Every ``*_p`` field is a per-sample probability; every field named in RANGES is a (low, high) interval.
RANGES = ("scale", "elastic_alpha", "elastic_sigma", "gamma", "noise_variance", "blur_sigma",
          "brightness", "contrast", "lowres_zoom")
_GLOBAL_RNG_LOCK = threading.Lock()


class AugmentConfig(pydantic.BaseModel):
    """The ``augment:`` section: nnU-Net's default augmentation (its v1 trainer's values).

    Attributes:
        enabled: False turns every transform off (:meth:`none`).
        mirror: Flip each spatial axis with probability 0.5.
        rotation: Maximum absolute angle in degrees (uniform in ``[-rotation, rotation]``;
            2D: in plane; 3D: about each axis, or only about the short axis of a patch
            more than 3 times longer than it is short, see :func:`rotation_axes`); 0 disables.
        scale: Zoom factor range (> 1 zooms out: the patch covers more of the case).
        elastic_alpha, elastic_sigma: Elastic deformation magnitude and smoothness (voxels),
            batchgenerators' units.
        gamma: Gamma range (intensity mean and std kept).
        noise_variance: Variance range of additive Gaussian noise.
        blur_sigma: Gaussian blur sigma range (voxels).
        brightness: Multiplicative brightness range.
        contrast: Contrast factor range.
        lowres_zoom: Downsampling factor range for the simulated low resolution.
        *_p: Per-sample probability of each transform.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    mirror: bool = True
    rotation: float = pydantic.Field(15.0, ge=0, le=180)
    rotation_p: float = 0.2
    scale: Range = (0.85, 1.25)
    scale_p: float = 0.2
    elastic_p: float = 0.2
    elastic_alpha: Range = (0.0, 900.0)
    elastic_sigma: Range = (9.0, 13.0)
    gamma: Range = (0.7, 1.5)
    gamma_p: float = 0.3
    noise_p: float = 0.1
    noise_variance: Range = (0.0, 0.1)
    blur_p: float = 0.2
    blur_sigma: Range = (0.5, 1.0)
    brightness_p: float = 0.15
    brightness: Range = (0.75, 1.25)
    contrast_p: float = 0.15
    contrast: Range = (0.75, 1.25)
    lowres_p: float = 0.25
    lowres_zoom: Range = (0.5, 1.0)

    @pydantic.field_validator("*")
    @classmethod
    def _check(cls, value, info: pydantic.ValidationInfo):
        name = info.field_name
        if name.endswith("_p") and not 0 <= value <= 1:
            raise ValueError(f"{name} is a probability: give a number from 0 to 1, not {value}")
        if name in RANGES:
            low, high = value
            if low > high:
                raise ValueError(f"{name} is a range [low, high]: low {low} is above high {high}; swap them")
            if low < 0 or (name in ("scale", "gamma", "brightness", "contrast", "lowres_zoom") and low <= 0):
                raise ValueError(f"{name} must be positive, not [{low}, {high}]")
        return value

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (validation-like patches)."""
        return cls(enabled=False)

    @property
    def spatial(self) -> bool:
        """Whether rotation, scaling or elastic deformation can happen (``SpatialTransform`` needed)."""
        return self.enabled and (self._rotates or self._scales or self.elastic_p > 0)

    @property
    def _rotates(self) -> bool:
        return self.rotation > 0 and self.rotation_p > 0

    @property
    def _scales(self) -> bool:
        return self.scale != (1.0, 1.0) and self.scale_p > 0


def sample_size(config: AugmentConfig, patch_size: Sequence[int]) -> tuple[int, ...]:
    """The box to cut around a patch so that rotation and zoom-out resample real voxels.

    Per axis: the bounding box of the patch rotated by up to ``rotation`` about each other
    axis (the largest over the single-axis rotations, as nnU-Net's ``get_patch_size``),
    times ``max(1, scale[1])``; rounded up to keep ``size - patch`` even, so the box's
    centre crop is exactly the patch (no half-voxel shift when a sample is not transformed).
    """
    patch = [int(p) for p in patch_size]
    if not config.spatial:
        return tuple(patch)
    extent = [float(p) for p in patch]
    if config._rotates:
        r = math.radians(config.rotation)
        planes = [(0, 1)] if len(patch) == 2 else [tuple(a for a in range(3) if a != axis)
                                                  for axis in rotation_axes(patch)]
        for i, j in planes:
            for a, b in ((i, j), (j, i)):
                extent[a] = max(extent[a], _rotated_extent(patch[a], patch[b], r))
    zoom = max(1.0, config.scale[1]) if config._scales else 1.0
    sizes = [max(p, math.ceil(e * zoom - 1e-6)) for p, e in zip(patch, extent)]
    return tuple(s + (s - p) % 2 for s, p in zip(sizes, patch))


def rotation_axes(patch_size: Sequence[int]) -> tuple[int, ...]:
    """The axes a 3D patch is rotated about: all three, or only the short one when anisotropic.

    nnU-Net's rule (``ANISO_THRESHOLD`` 3): a patch of thick-slice data, e.g. 20x160x160,
    is rotated only in the plane of its long axes; tilting it would need many slices the
    patch does not have and mixes the coarse axis into the fine ones.
    """
    if max(patch_size) > 3 * min(patch_size):
        return (int(np.argmin(patch_size)),)
    return (0, 1, 2)


def _rotated_extent(along: int, across: int, max_angle: float) -> float:
    """Largest extent along one axis of an ``along x across`` rectangle rotated by up to ``max_angle`` rad."""
    peak = math.atan2(across, along)  # the angle at which the diagonal lies along the axis
    if max_angle >= peak:
        return math.hypot(along, across)
    return along * math.cos(max_angle) + across * math.sin(max_angle)


def build_transforms(config: AugmentConfig, patch_size: Sequence[int]) -> Compose:
    """A ``Compose`` turning ``(B, C, *sample_size)`` boxes into augmented ``(B, C, *patch_size)`` patches.

    2D or 3D follows ``len(patch_size)``. Data are resampled with cubic splines, labels
    with order 0 (nearest: no class appears that was not there); outside the box both are 0.
    With nothing spatial enabled the list holds no ``SpatialTransform``; then the box *is*
    the patch (:func:`sample_size`).
    """
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (
        BrightnessMultiplicativeTransform,
        ContrastAugmentationTransform,
        GammaTransform,
    )
    from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    patch = tuple(int(p) for p in patch_size)
    dims = len(patch)
    if dims not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 entries, not {patch}")
    if not config.enabled:
        return Compose([])
    transforms = []
    if config.spatial:
        angle = math.radians(config.rotation)
        # batchgenerators' angle_x/y/z rotate about axes 0/1/2 (2D uses angle_x only).
        about = rotation_axes(patch) if dims == 3 else (0,)
        angles = [(-angle, angle) if axis in about else (0.0, 0.0) for axis in range(3)]
        transforms.append(SpatialTransform(
            patch, patch_center_dist_from_border=None, random_crop=False,
            do_elastic_deform=config.elastic_p > 0, alpha=config.elastic_alpha, sigma=config.elastic_sigma,
            p_el_per_sample=config.elastic_p,
            do_rotation=config._rotates, angle_x=angles[0], angle_y=angles[1], angle_z=angles[2],
            p_rot_per_sample=config.rotation_p,
            do_scale=config._scales, scale=config.scale, p_scale_per_sample=config.scale_p,
            border_mode_data="constant", border_cval_data=0, order_data=3,
            border_mode_seg="constant", border_cval_seg=0, order_seg=0))
    if config.noise_p > 0:
        transforms.append(GaussianNoiseTransform(config.noise_variance, p_per_sample=config.noise_p))
    if config.blur_p > 0:
        transforms.append(GaussianBlurTransform(config.blur_sigma, different_sigma_per_channel=True,
                                                p_per_sample=config.blur_p, p_per_channel=0.5))
    if config.brightness_p > 0:
        transforms.append(BrightnessMultiplicativeTransform(config.brightness, p_per_sample=config.brightness_p))
    if config.contrast_p > 0:
        transforms.append(ContrastAugmentationTransform(config.contrast, p_per_sample=config.contrast_p))
    if config.lowres_p > 0:
        transforms.append(SimulateLowResolutionTransform(
            config.lowres_zoom, per_channel=True, p_per_channel=0.5, order_downsample=0, order_upsample=3,
            p_per_sample=config.lowres_p))
    if config.gamma_p > 0:
        transforms.append(GammaTransform(config.gamma, invert_image=False, per_channel=True, retain_stats=True,
                                         p_per_sample=config.gamma_p))
    if config.mirror:
        transforms.append(MirrorTransform(tuple(range(dims))))
    return Compose(transforms)


def augment_batch(
    transforms: Compose, images: np.ndarray, labels: np.ndarray, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``transforms`` to ``images (B, C, *box)`` float32 and ``labels (B, *box)``.

    The global ``np.random`` and ``random`` (batchgenerators' sources of randomness) are
    seeded with ``seed`` under a lock and put back afterwards, so the result depends on
    ``seed`` alone and the caller's own use of either is untouched.

    Returns:
        ``(B, C, *patch)`` float32 and ``(B, *patch)`` uint8.
    """
    batch = {"data": np.ascontiguousarray(images, dtype=np.float32),
             "seg": np.ascontiguousarray(labels[:, None], dtype=np.float32)}
    with _GLOBAL_RNG_LOCK:
        previous = np.random.get_state(), random.getstate()
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            batch = transforms(**batch)
        finally:
            np.random.set_state(previous[0])
            random.setstate(previous[1])
    return batch["data"].astype(np.float32, copy=False), np.rint(batch["seg"][:, 0]).astype(np.uint8)
