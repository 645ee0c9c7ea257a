"""Shared fixtures: real NIfTI datasets on disk, a private preprocessing cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hpsearch.data.synth import synthesize  # noqa: E402

AFFINE = np.diag([-1.5, -1.5, 4.0, 1.0]) + np.array([[0, 0, 0, 90.0], [0, 0, 0, 120], [0, 0, 0, -40], [0, 0, 0, 0]])


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep every test's preprocessing cache out of the user's home."""
    os.environ["HPSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("hpsearch-cache"))


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_msd(
    root: Path,
    cases: list[tuple[np.ndarray, np.ndarray]],
    labels: dict[int, str],
    modality: dict[int, str] | None = None,
) -> Path:
    """An MSD-layout dataset from (image, label) arrays."""
    modality = modality or {0: "MRI"}
    training = []
    for i, (image, label) in enumerate(cases):
        name = f"case_{i:03d}.nii.gz"
        write_nifti(root / "imagesTr" / name, image.astype(np.float32))
        write_nifti(root / "labelsTr" / name, label.astype(np.uint8))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    manifest = {
        "name": root.name,
        "modality": {str(k): v for k, v in modality.items()},
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": len(training),
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return root


def write_nnunet(
    root: Path,
    cases: list[tuple[np.ndarray, np.ndarray]],
    labels: dict[str, int],
    channel_names: list[str],
) -> Path:
    """An nnU-Net v2 raw dataset: one file per channel, CASE_0000.nii.gz ..."""
    for i, (image, label) in enumerate(cases):
        for c in range(len(channel_names)):
            write_nifti(root / "imagesTr" / f"pat{i:03d}_{c:04d}.nii.gz", image[..., c].astype(np.float32))
        write_nifti(root / "labelsTr" / f"pat{i:03d}.nii.gz", label.astype(np.uint8))
    manifest = {
        "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": labels,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return root


def tissue_case(rng: np.random.Generator, shape=(197, 233, 5)) -> tuple[np.ndarray, np.ndarray]:
    """A brain-MRI-like slab of odd in-plane size: float intensities, three tissue classes."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    radius = np.sqrt(x**2 + (y * 1.1) ** 2)[..., None] + rng.normal(0, 0.01, shape)
    label = np.select([radius < 0.35, radius < 0.6, radius < 0.85], [3, 2, 1], 0)
    image = np.choose(label, [0.0, 310.5, 520.25, 790.75]) * rng.uniform(0.9, 1.1)
    image = image + rng.normal(0, 25, shape) * (label > 0)
    return image.astype(np.float32), label.astype(np.uint8)


@pytest.fixture(scope="session")
def lv_small(tmp_path_factory) -> Path:
    """8 synthetic cardiac cases, 32x32x6."""
    return synthesize("lv", tmp_path_factory.mktemp("data") / "lv", cases=8, seed=1, shape=(32, 32, 6))


@pytest.fixture(scope="session")
def brats_small(tmp_path_factory) -> Path:
    """4 synthetic BraTS cases, 32x32x8x4, labels 0/1/2/4."""
    return synthesize("brats", tmp_path_factory.mktemp("data") / "brats", cases=4, seed=1, shape=(32, 32, 8))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below root with its size and mtime: proof that nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}
