"""Synthetic datasets in Medical Segmentation Decathlon layout, for demos and tests.

Three kinds, each a small stand-in for a real task that a U-Net can learn in minutes:

* ``"lv"``: cardiac short-axis cine MRI (Sunnybrook left ventricle); 3D images,
  label 1 = LV blood pool. Default shape (96, 96, 12), spacing ~(1.4, 1.4, 8.0) mm.
* ``"brats"``: skull-stripped multi-parametric brain MRI (BraTS); 4D images with
  T1, T1ce, T2, FLAIR on the last axis, labels 1 necrotic core, 2 edema,
  4 enhancing tumour. Default shape (64, 64, 24), spacing (1.0, 1.0, 2.5) mm.
* ``"brain"``: skull-stripped T1-weighted brain MRI (a tissue-segmentation task):
  labels 1 grey matter (a thin folded cortical ribbon), 2 white matter. Default
  shape (197, 233, 40), spacing (1.0, 1.0, 3.0) mm. See :mod:`hpsearch.data.synth_brain`.

The nominal field of view is fixed, so a non-default ``shape`` changes the voxel
spacing rather than the anatomy. Output is deterministic for a given seed.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "demo-lv"
    >>> synthesize("lv", out, cases=2, seed=0).joinpath("dataset.json").is_file()
    True
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from hpsearch.errors import HpsearchError

KINDS = ("lv", "brats", "brain")
_DEFAULT_SHAPE = {"lv": (96, 96, 12), "brats": (64, 64, 24), "brain": (197, 233, 40)}
_DEFAULT_SPACING = {"lv": (1.4, 1.4, 8.0), "brats": (1.0, 1.0, 2.5), "brain": (1.0, 1.0, 3.0)}
_MIN_SHAPE = {"lv": (32, 32, 4), "brats": (24, 24, 8), "brain": (32, 32, 8)}
_MANIFEST = {
    "lv": {
        "name": "SynthLV",
        "description": "Synthetic cardiac short-axis MRI, left-ventricle blood pool",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "LV"},
    },
    "brats": {
        "name": "SynthBraTS",
        "description": "Synthetic multi-parametric brain MRI with glioma sub-regions",
        "tensorImageSize": "4D",
        "modality": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
        "labels": {"0": "background", "1": "necrotic core", "2": "edema", "4": "enhancing tumour"},
    },
    "brain": {
        "name": "SynthBrainTissue",
        "description": "Synthetic skull-stripped T1-weighted brain MRI, grey and white matter",
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": {"0": "background", "1": "grey matter", "2": "white matter"},
    },
}
# Relative intensity of each BraTS tissue class in T1, T1ce, T2, FLAIR: what a reader
# uses to tell the regions apart (e.g. only the enhancing rim lights up in T1ce).
_BRATS_TISSUE = np.array([
    [0.00, 0.00, 0.00, 0.00],  # outside the head (skull-stripped)
    [0.85, 0.80, 0.45, 0.50],  # white matter
    [0.60, 0.58, 0.62, 0.62],  # grey matter
    [0.20, 0.20, 1.00, 0.15],  # CSF
    [0.45, 0.50, 0.88, 1.00],  # edema
    [0.48, 1.35, 0.70, 0.75],  # enhancing tumour
    [0.28, 0.22, 0.95, 0.55],  # necrotic core
], dtype=np.float32)  # fmt: skip
_BRATS_SCALE = np.array([800.0, 900.0, 1000.0, 700.0], dtype=np.float32)


def synthesize(
    kind: str,
    out: Path | str,
    cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
) -> Path:
    """Write a synthetic dataset in Medical Segmentation Decathlon layout into ``out``.

    The dataset is built in a hidden sibling folder and renamed into place at the
    end, so an interrupted run never leaves a half-written dataset at ``out``.

    Args:
        kind: ``"lv"``, ``"brats"`` or ``"brain"``.
        out: Destination folder; must not exist or be empty.
        cases: Number of training cases (>= 1).
        seed: Non-negative seed; equal arguments give identical voxel data.
        shape: Spatial shape (X, Y, Z); defaults to the kind's default shape.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        HpsearchError: On an unknown kind, bad counts or shape, or a non-empty ``out``.
    """
    if kind not in KINDS:
        accepted = ", ".join(KINDS)
        raise HpsearchError(f"unknown synthetic dataset kind {kind!r}; accepted kinds: {accepted}")
    if not isinstance(cases, int) or cases < 1:
        raise HpsearchError(f"cases must be a positive integer, got {cases!r}")
    if not isinstance(seed, int) or seed < 0:
        raise HpsearchError(f"seed must be a non-negative integer, got {seed!r}")
    shape = _check_shape(kind, shape)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HpsearchError(
            f"{out} already exists and is not empty; choose another --out or remove it"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        make_case = _case_maker(kind)
        # Fixed nominal field of view: a finer grid means smaller voxels, same anatomy.
        spacing0 = np.array(_DEFAULT_SPACING[kind]) * _DEFAULT_SHAPE[kind] / np.array(shape)
        width = max(3, len(str(cases - 1)))
        training = []
        for i in range(cases):
            case_id = f"{kind}_{i:0{width}d}"
            rng = np.random.default_rng([seed, i])
            image, label, spacing = make_case(rng, shape, spacing0)
            affine = _affine(rng, spacing, shape)
            _write_nifti(tmp / "imagesTr" / f"{case_id}.nii.gz", image, affine, spacing)
            _write_nifti(tmp / "labelsTr" / f"{case_id}.nii.gz", label, affine, spacing)
            training.append(
                {"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"}
            )
        manifest = dict(_MANIFEST[kind], numTraining=cases, numTest=0, training=training, test=[])
        manifest["description"] += f" (hpsearch synth, seed={seed})"
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above); rename() cannot replace a directory portably
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _case_maker(kind: str):
    """The kind's case function: (rng, shape, spacing) -> (image, label, spacing)."""
    if kind == "brain":
        from hpsearch.data.synth_brain import brain_case  # lazy: it imports this module's helpers

        return brain_case
    return _lv_case if kind == "lv" else _brats_case


def _check_shape(kind: str, shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """Return ``shape`` (or the default) after checking it is big enough for ``kind``."""
    if shape is None:
        return _DEFAULT_SHAPE[kind]
    shape = tuple(shape)
    minimum = _MIN_SHAPE[kind]
    ok = all(isinstance(n, (int, np.integer)) and n >= m for n, m in zip(shape, minimum))
    if len(shape) != 3 or not ok:
        raise HpsearchError(
            f"shape for {kind!r} must be 3 integers of at least {minimum}, got {shape!r}"
        )
    return tuple(int(n) for n in shape)


def _affine(rng: np.random.Generator, spacing: tuple[float, ...], shape: tuple[int, ...]):
    """A scanner-like affine: flipped x/y axes as in LPS-stored data, centred near isocentre."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    centre = (np.array(shape[:3]) - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre + rng.normal(0.0, 8.0, 3).round(2)
    return affine


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, spacing: tuple[float, ...]):
    """Save ``data`` as NIfTI-1 with consistent zooms, units and qform/sform (code 1 = scanner)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(spacing) + (1.0,) * (data.ndim - 3))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    """A smooth multiplicative field (quadratic polynomial), like receive-coil inhomogeneity."""
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    terms = (x, y, z, x * y, x * x, y * y, 0.5 * z * z)
    field = 1.0 + sum(c * t for c, t in zip(rng.uniform(-strength, strength, len(terms)), terms))
    return np.clip(field, 0.5, 1.5).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (tissue texture, irregular boundaries)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-6)


def _soft(signed_dist: np.ndarray, width: float = 0.7) -> np.ndarray:
    """Soft inside-indicator of a shape, so edges show partial-volume blur."""
    return 1.0 / (1.0 + np.exp(np.clip(signed_dist / width, -30.0, 30.0)))


def _ellipse_dist(x, y, cx, cy, ra, rb, theta):
    """Approximate signed in-plane distance (px) to a rotated ellipse boundary."""
    c, s = np.cos(theta), np.sin(theta)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    rho = np.sqrt((u / ra) ** 2 + (v / rb) ** 2)
    return (rho - 1.0) * np.sqrt(ra * rb)


def _ellipsoid_rho(u, v, w, centre, semi) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid: < 1 inside, 1 on the surface."""
    return np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip((u, v, w), centre, semi)))


def _lv_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing0: np.ndarray):
    """One short-axis cine MRI volume with its LV blood-pool label.

    Returns:
        (image float32 (X, Y, Z), label uint8 (X, Y, Z), spacing in mm).
    """
    nx, ny, nz = shape
    px = min(nx, ny) / 96.0  # anatomy sizes below are in pixels at the default 96 px
    in_plane, through = rng.uniform(0.93, 1.07), rng.uniform(0.9, 1.1)  # protocols differ a little
    spacing = tuple(float(s) for s in (spacing0 * [in_plane, in_plane, through]).round(4))
    x = np.arange(nx, dtype=np.float32)[:, None, None]
    y = np.arange(ny, dtype=np.float32)[None, :, None]
    z = np.arange(nz)

    # Thorax: medium-intensity ellipse with a bright subcutaneous fat rim.
    bx, by = nx / 2 + rng.normal(0, 2 * px), ny / 2 + rng.normal(0, 2 * px)
    ba, bb = 0.44 * nx * rng.uniform(0.9, 1.05), 0.34 * ny * rng.uniform(0.9, 1.05)
    body_d = _ellipse_dist(x, y, bx, by, ba, bb, 0.0)
    body = _soft(body_d)
    fat = body * (1.0 - _soft(body_d + 3.5 * px))

    # Which slices show the LV: the apex (high z) runs out first, the base sometimes.
    n_apex = int(rng.integers(1, min(3, max(1, nz // 4)) + 1))
    first = int(nz >= 8 and rng.random() < 0.35)
    last = nz - 1 - n_apex
    t = np.clip((z - first) / max(last - first, 1), 0.0, 1.0)
    present = (z >= first) & (z <= last)

    # LV geometry, varying smoothly from base (large) to apex (small).
    r0 = rng.uniform(7.0, 14.0) * px
    r = r0 * (1.0 - 0.55 * t**1.3)
    ecc, theta = rng.uniform(0.85, 1.15), rng.uniform(0, np.pi)
    cx = bx + 0.08 * nx + rng.normal(0, 3 * px) + rng.normal(0, 1.5 * px) * t
    cy = by - 0.04 * ny + rng.normal(0, 3 * px) + rng.normal(0, 1.5 * px) * t
    wall = np.maximum(r * rng.uniform(0.35, 0.5), 2.0 * px)
    ra, rb = r * np.sqrt(ecc), r / np.sqrt(ecc)
    cav_d = _ellipse_dist(x, y, cx, cy, ra, rb, theta)
    myo_d = _ellipse_dist(x, y, cx, cy, ra + wall, rb + wall, theta)

    # RV: a crescent-ish blob on the patient's right, abutting the septum; ends before the apex.
    phi = np.pi * rng.uniform(0.85, 1.1)
    rv_rad, rv_tan = 0.7 * r0 * (1 - 0.4 * t), 1.3 * r0 * (1 - 0.4 * t)
    reach = r + wall + rv_rad + 0.5 * px
    rvx, rvy = cx + reach * np.cos(phi), cy + reach * np.sin(phi)
    rv_d = _ellipse_dist(x, y, rvx, rvy, rv_rad, rv_tan, phi)
    rv = _soft(rv_d) * (z < last)

    # Papillary muscles: dark dots inside the cavity, labelled LV as in Sunnybrook contours.
    pap = sum(
        _soft(np.hypot(x - cx - 0.55 * r * np.cos(a), y - cy - 0.55 * r * np.sin(a)) - 0.18 * r0)
        for a in theta + np.array([0.8, 2.4]) + rng.normal(0, 0.2, 2)
    )

    cavity, myo = _soft(cav_d) * present, _soft(myo_d) * present
    texture = 1.0 + 0.06 * _smooth_noise(rng, shape, (4, 4, 1))
    img = body * 220.0 * texture + fat * 300.0
    img = img * (1 - rv) + rv * 560.0
    img = img * (1 - myo) + myo * 120.0
    img = img * (1 - cavity) + cavity * (720.0 - 430.0 * np.minimum(pap, 1.0) * (t < 0.8))
    img = ndimage.gaussian_filter(img.astype(np.float32), (0.6 * px, 0.6 * px, 0))
    img *= _bias_field(rng, shape, 0.25) * rng.uniform(0.8, 1.25)
    sigma = rng.uniform(15.0, 30.0)  # Rician: magnitude of a complex signal with Gaussian noise
    img = np.hypot(img + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    img = img.astype(np.float32)
    label = ((cav_d < 0) & present).astype(np.uint8)
    return img, label, spacing


def _tumour_labels(rng: np.random.Generator, u, v, w, shape: tuple[int, int, int]) -> np.ndarray:
    """Nested glioma sub-regions (0, 1, 2, 4) from one irregular scalar field.

    Thresholding one field at rising levels nests the regions; the dilations then
    guarantee the enhancing shell fully wraps the necrosis, and edema wraps both.
    """
    centre = np.array([*rng.uniform(-0.3, 0.3, 2), rng.uniform(-0.2, 0.2)])
    size = rng.uniform(0.2, 0.32)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(3, 6))):
        c = centre + rng.normal(0, 0.35 * size, 3) * [1, 1, 0.85]
        rad = size * rng.uniform(0.5, 0.9, 3) * [1, 1, 0.85]
        field += np.exp(-0.5 * _ellipsoid_rho(u, v, w, c, rad) ** 2)
    field *= 1.0 + 0.2 * _smooth_noise(rng, shape, (2, 2, 1))
    top = field.max()
    ball = ndimage.generate_binary_structure(3, 3)
    necrosis = field > rng.uniform(0.55, 0.65) * top
    core = (field > rng.uniform(0.3, 0.4) * top) | ndimage.binary_dilation(necrosis, ball)
    whole = (field > rng.uniform(0.1, 0.16) * top) | ndimage.binary_dilation(core, ball)
    label = np.where(whole, 2, 0).astype(np.uint8)
    label[core] = 4
    label[necrosis] = 1
    return label


def _brats_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing0: np.ndarray):
    """One skull-stripped 4-channel brain MRI with nested tumour labels.

    Returns:
        (image float32 (X, Y, Z, 4), label uint8 (X, Y, Z), spacing in mm).
    """
    # BraTS volumes are co-registered to one atlas, so no per-case spacing jitter.
    spacing = tuple(float(s) for s in spacing0.round(4))
    u, v, w = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]

    semi = np.array([0.78, 0.88, 0.92]) * rng.uniform(0.93, 1.03)
    c = rng.normal(0, 0.03, 3)
    rho = _ellipsoid_rho(u, v, w, c, semi) + 0.03 * _smooth_noise(rng, shape, (3, 3, 1.5))
    label = _tumour_labels(rng, u, v, w, shape)
    head = (rho < 1.0) | (label > 0)  # mass effect: the tumour never sticks out of the head

    # Tissue classes: cortical grey rim, deep grey islands, two lateral ventricles.
    tissue = np.where(head, 1, 0).astype(np.uint8)
    tissue[head & ((rho > 0.84) | (_smooth_noise(rng, shape, (3, 3, 1.5)) > 1.0))] = 2
    for side in (-1.0, 1.0):
        tissue[_ellipsoid_rho(u, v, w, c + [side * 0.11, 0.05, 0], (0.07, 0.24, 0.18)) < 1] = 3
    tissue[label == 2], tissue[label == 4], tissue[label == 1] = 4, 5, 6

    img = _BRATS_TISSUE[tissue] * (1.0 + 0.05 * _smooth_noise(rng, shape, (2, 2, 1)))[..., None]
    img = ndimage.gaussian_filter(img, (0.7, 0.7, 0.4, 0))
    for ch in range(4):
        img[..., ch] *= _bias_field(rng, shape, 0.15) * _BRATS_SCALE[ch] * rng.uniform(0.85, 1.15)
    img += rng.normal(0, 1.0, img.shape).astype(np.float32) * (_BRATS_SCALE * 0.03)
    img = np.where(head[..., None], np.maximum(img, 0.0), 0.0).astype(np.float32)
    return img, label, spacing
