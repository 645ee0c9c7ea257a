"""The ``"brain"`` synthetic kind: T1-weighted brain MRI with grey/white-matter labels.

A stand-in for a real tissue-segmentation task (registered T1 scans with odd in-plane
sizes such as 197 x 233, labels 1 grey matter, 2 white matter). What it copies from
real scans is the *difficulty*, not the anatomy:

* a thin cortical grey-matter ribbon (2-3 mm) folded into gyri and sulci, so the
  structure that matters is one to three voxels thick at 1 mm in-plane and loses
  much of its Dice when slices are resized to 128 x 128 and back;
* T1 contrast (white matter brighter than grey matter brighter than CSF), partial
  volume at every boundary, a smooth bias field and Rician noise;
* skull-stripped: exactly zero outside a thin rim of CSF around the brain;
* subject variability (brain size and position, fold pattern, sulcal depth, cortical
  thickness, contrast, noise) drawn from the case's seed.

How the folds are made: ``depth`` is the distance (mm) below the outer brain surface.
Sulci are clefts carved from that surface along the zero set of a smooth random field
``F`` (narrow because only ``|F|`` close to 0 counts), plus the interhemispheric
fissure. The carved surface is the pial surface ``phi = 0`` with
``phi = depth - carve``; normalised by its gradient, ``phi`` is a signed distance, so
``0 < phi < T`` is a ribbon of thickness ``T`` that follows every fold. Deep grey
nuclei (labelled grey matter) and lateral ventricles (CSF, background) sit inside.

Everything is built in millimetres, so the anatomy does not depend on the grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# The helpers are shared with the other kinds; synth.py imports this module lazily.
from hpsearch.data.synth import _bias_field, _ellipsoid_rho, _smooth_noise

# T1-weighted intensity of each tissue, relative to white matter.
_CSF, _GM, _DEEP_GM, _WM = 0.22, 0.64, 0.76, 1.0
_EDGE_MM = 0.3  # width of the partial-volume transition at a tissue boundary


def brain_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing0: np.ndarray):
    """One skull-stripped T1 volume with labels 0 background/CSF, 1 grey, 2 white matter.

    Args:
        rng: The case's generator (all randomness comes from it).
        shape: Grid (X, Y, Z).
        spacing0: Voxel spacing in mm (fixed per dataset: the scans are registered).

    Returns:
        (image float32 (X, Y, Z), label uint8 (X, Y, Z), spacing in mm).
    """
    spacing = tuple(float(s) for s in np.asarray(spacing0).round(4))
    x, y, z = (((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(shape, spacing))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    mm = np.array(spacing)

    # The brain envelope: an ellipsoid (size and position vary), slightly irregular.
    semi = np.array([66.0, 82.0, 60.0]) * rng.uniform(0.9, 1.06) * rng.uniform(0.96, 1.04, 3)
    centre = np.array([rng.normal(0, 2), rng.normal(0, 4), rng.uniform(-4, 12)])
    radius = float(np.cbrt(semi.prod()))
    rho = _ellipsoid_rho(x, y, z, centre, semi) + 0.02 * _smooth_noise(rng, shape, 12.0 / mm)
    depth = (1.0 - rho) * radius  # mm below the outer surface (negative outside)

    # Sulci: narrow clefts along F = 0, as deep as a varying sulcal depth; the fissure.
    fold = _smooth_noise(rng, shape, rng.uniform(1.8, 2.2) / mm)
    sulcal_depth = rng.uniform(16.0, 24.0) * (1.0 + 0.3 * _smooth_noise(rng, shape, 20.0 / mm))
    carve = sulcal_depth * np.exp(-((fold / rng.uniform(0.18, 0.26)) ** 2))
    fissure = rng.uniform(28.0, 36.0) * np.exp(-(((x - centre[0]) / 1.2) ** 2)) * (np.abs(y - centre[1]) < 0.8 * semi[1])
    phi = depth - np.maximum(carve, fissure)
    phi /= np.maximum(np.linalg.norm(np.gradient(phi, *spacing), axis=0), 0.2)  # signed distance, mm

    # Cortical thickness varies a little over the brain and between subjects.
    thickness = rng.uniform(2.0, 2.6) * (1.0 + 0.12 * _smooth_noise(rng, shape, 15.0 / mm))
    label = np.where(phi > 0, np.where(phi < thickness, 1, 2), 0).astype(np.uint8)
    tissue_in = _sigmoid(phi / _EDGE_MM)
    white = _sigmoid((phi - thickness) / _EDGE_MM)
    intensity = _CSF * (1 - tissue_in) + tissue_in * (_GM * (1 - white) + _WM * white)

    # Deep grey nuclei (grey matter) and lateral ventricles (CSF) inside the white matter.
    for side in (-1.0, 1.0):
        for offset, semi_axes, value, klass in (
            ((0.28, 0.05, -0.05), (0.12, 0.14, 0.16), _DEEP_GM, 1),  # lentiform / thalamus
            ((0.12, -0.02, 0.12), (0.06, 0.28, 0.2), _CSF, 0),  # lateral ventricle
        ):
            c = centre + semi * np.array([side * offset[0], *offset[1:]]) + rng.normal(0, 1.5, 3)
            r = semi * semi_axes * rng.uniform(0.85, 1.15, 3)
            inside = (1.0 - _ellipsoid_rho(x, y, z, c, r)) * float(np.cbrt(r.prod()))
            label[(inside > 0) & (label == 2)] = klass
            weight = _sigmoid(inside / _EDGE_MM) * (phi > thickness)
            intensity = intensity * (1 - weight) + value * weight

    # Acquisition: texture, point-spread/slab blur, bias field, contrast, Rician noise.
    intensity *= 1.0 + 0.03 * _smooth_noise(rng, shape, 1.5 / mm)
    image = ndimage.gaussian_filter(intensity.astype(np.float32), 0.5 / mm * [1, 1, 1.5])
    image *= _bias_field(rng, shape, 0.2) * rng.uniform(700.0, 1300.0)
    sigma = rng.uniform(0.04, 0.07) * float(image[label == 2].mean())
    image = np.hypot(image + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    head = depth > -rng.uniform(1.5, 3.0)  # skull-stripping keeps a thin rim of outer CSF
    return np.where(head, image, 0.0).astype(np.float32), np.where(head, label, 0).astype(np.uint8), spacing


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -30.0, 30.0)))
