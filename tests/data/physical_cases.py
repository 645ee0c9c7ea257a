"""Small CT-like datasets on anisotropic, non-unit voxel grids of odd shapes, as real NIfTI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import write_msd

# (shape, spacing in mm): odd sizes, fine in-plane and coarse along Z, no two alike.
GRIDS = [
    ((37, 29, 11), (0.7, 0.9, 3.0)),
    ((35, 31, 12), (0.75, 0.85, 2.5)),
    ((39, 27, 10), (0.7, 0.9, 3.5)),
    ((37, 29, 11), (0.65, 0.95, 3.0)),
    ((33, 29, 13), (0.7, 0.9, 3.0)),
    ((41, 31, 11), (0.8, 0.9, 3.0)),
]
LABELS = {0: "background", 1: "organ", 2: "lesion"}


def phantom(shape, spacing, rng: np.random.Generator, organ_hu: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like case: air, a body, an organ (label 1) holding a lesion (label 2), in physical mm."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    body = (x / 12) ** 2 + (y / 12) ** 2 < 1
    organ = (x / 8) ** 2 + ((y - 1) / 7) ** 2 + (z / 11) ** 2 < 1
    lesion = ((x - 2) / 3.5) ** 2 + ((y - 1) / 3.5) ** 2 + (z / 5) ** 2 < 1
    label = np.select([lesion, organ], [2, 1], 0).astype(np.uint8)
    image = np.select([lesion, organ, body], [organ_hu + 80, organ_hu, 0.0], -1000.0)
    image = image + rng.normal(0, 15, shape)
    return image.astype(np.float32), label


def write_dataset(root: Path, grids=GRIDS, seed: int = 0, bright: set[int] = frozenset()) -> Path:
    """An MSD dataset ``case_000`` ... with one case per grid; cases in ``bright`` get a
    foreground 3000 HU brighter (to tell whether a statistic saw them)."""
    rng = np.random.default_rng(seed)
    cases, affines = [], []
    for i, (shape, spacing) in enumerate(grids):
        cases.append(phantom(shape, spacing, rng, organ_hu=3060.0 if i in bright else 60.0))
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = [-20.0, 15.0, -30.0]
        affines.append(affine)
    return write_msd(root, cases, LABELS, modality={0: "CT"}, affines=affines)
