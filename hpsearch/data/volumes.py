"""Reading one case's NIfTI volumes, with every defect reported instead of raised.

:func:`read_case` is the single code path for both ``hpsearch data check`` (which
wants *all* defects of a dataset) and training (which stops at the first one, through
:func:`load_case`). Volumes come back as ``image (X, Y, Z, C) float32`` and
``label (X, Y, Z) uint8`` holding contiguous class indices (see
:attr:`DatasetIndex.label_values`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

from hpsearch.data.guard import MISSING, not_a
from hpsearch.data.layouts import CaseFiles, DatasetIndex, Defect
from hpsearch.errors import HpsearchError

# Image and label grids must agree to well below a voxel; scanners write affines as
# float32, so exact equality is too strict.
AFFINE_TOLERANCE_MM = 1e-3


class _Volume(NamedTuple):
    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


@dataclasses.dataclass
class CaseVolumes:
    """A case as read from disk; arrays are ``None`` where a defect prevented reading.

    Attributes:
        case: The files this came from.
        image: ``(X, Y, Z, C)`` float32 intensities.
        label: ``(X, Y, Z)`` uint8 class indices.
        affine: The image's voxel-to-world affine.
        spacing: Voxel size in mm along X, Y, Z.
        label_counts: Voxels per *original* label value, including undeclared ones.
        defects: Everything found wrong with this case.
    """

    case: CaseFiles
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    affine: np.ndarray | None = None
    spacing: tuple[float, float, float] | None = None
    label_counts: dict[int, int] = dataclasses.field(default_factory=dict)
    defects: list[Defect] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.defects


def header_spacing(image: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel size in mm along X, Y, Z: the header's zooms (training and prediction both read it here)."""
    return tuple(float(z) for z in image.header.get_zooms()[:3])  # type: ignore[return-value]


def read_case(index: DatasetIndex, case: CaseFiles) -> CaseVolumes:
    """Read and validate one case, collecting every defect found."""
    result = CaseVolumes(case)
    channels = [_read_volume(path, result.defects) for path in case.images]
    label_pair = _read_volume(case.label, result.defects)
    if result.defects:
        return result

    image, affine = _stack_channels(index, case, channels, result.defects)
    label_raw, label_affine = label_pair.data, label_pair.affine
    if image is None:
        return result
    if label_raw.ndim != 3:
        result.defects.append(Defect(case.label, f"label must be 3D, got shape {label_raw.shape}"))
        return result
    if image.shape[:3] != label_raw.shape:
        result.defects.append(
            Defect(case.label, f"shape {label_raw.shape} differs from image shape {image.shape[:3]}")
        )
    elif not np.allclose(affine, label_affine, atol=AFFINE_TOLERANCE_MM):
        result.defects.append(
            Defect(case.label, "affine differs from the image's: they are not on the same voxel grid")
        )
    if not np.isfinite(image).all():
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        result.defects.append(Defect(case.images[0], f"{bad} voxels are NaN or infinite"))

    label, counts, problem = _map_labels(label_raw, index.label_values)
    result.label_counts = counts
    if problem:
        result.defects.append(Defect(case.label, problem))
    result.image, result.label, result.affine = image, label, affine
    result.spacing = channels[0].spacing
    return result


def load_case(index: DatasetIndex, case: CaseFiles) -> CaseVolumes:
    """Like :func:`read_case`, but raise the first defect as an :class:`HpsearchError`."""
    volumes = read_case(index, case)
    refuse_defects(index, volumes.defects)
    return volumes


def refuse_defects(index: DatasetIndex, defects: list[Defect] | tuple[Defect, ...]) -> None:
    """Raise the first defect as one line (pointing at ``data check`` for the others), if any."""
    if defects:
        more = len(defects) - 1
        suffix = f" (and {more} more; run `hpsearch data check {index.root}`)" if more else ""
        raise HpsearchError(f"{defects[0]}{suffix}")


def _read_volume(path: Path, defects: list[Defect]) -> _Volume | None:
    problem = not_a(path, "file")
    if problem:
        defects.append(Defect(path, "file is missing" if problem == MISSING else problem))
        return None
    try:
        image = nib.load(path)
        # Reading the data is what fails on a truncated .nii.gz, not nib.load.
        data = np.asarray(image.dataobj)
    except Exception as exc:  # nibabel, gzip and zlib raise many types for bad files
        defects.append(Defect(path, f"unreadable or truncated NIfTI ({type(exc).__name__}: {exc})"))
        return None
    return _Volume(data, image.affine, header_spacing(image))


def _stack_channels(
    index: DatasetIndex,
    case: CaseFiles,
    channels: list[_Volume],
    defects: list[Defect],
) -> tuple[np.ndarray | None, np.ndarray | None]:
    expected = len(index.channel_names)
    first, affine = channels[0].data, channels[0].affine
    if len(channels) == 1:
        if first.ndim == 3 and expected == 1:
            return first[..., None].astype(np.float32), affine
        if first.ndim == 4 and first.shape[3] == expected:
            return first.astype(np.float32), affine
        defects.append(
            Defect(
                case.images[0],
                f"shape {first.shape} does not hold the {expected} declared channel(s) "
                "(expected 3D for one channel, or 4D with channels last)",
            )
        )
        return None, None
    for path, (data, channel_affine, _) in zip(case.images, channels):
        if data.shape != first.shape or data.ndim != 3:
            defects.append(Defect(path, f"shape {data.shape} differs from channel 0's {first.shape}"))
        elif not np.allclose(channel_affine, affine, atol=AFFINE_TOLERANCE_MM):
            defects.append(Defect(path, "affine differs from channel 0's"))
    if defects:
        return None, None
    return np.stack([c.data for c in channels], axis=-1).astype(np.float32), affine


def _map_labels(
    raw: np.ndarray, label_values: tuple[int, ...]
) -> tuple[np.ndarray, dict[int, int], str | None]:
    """Map original label values to class indices; report non-integer or undeclared values."""
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            return np.zeros(raw.shape, np.uint8), {}, "label holds non-integer values"
    raw = raw.astype(np.int64)
    values, counts = np.unique(raw, return_counts=True)
    counts_by_value = {int(v): int(c) for v, c in zip(values, counts)}
    undeclared = sorted(set(counts_by_value) - set(label_values))
    declared = np.asarray(label_values)
    # searchsorted gives each value's position among the declared ones: its class index.
    indices = np.clip(np.searchsorted(declared, raw), 0, len(declared) - 1).astype(np.uint8)
    problem = None
    if undeclared:
        problem = (
            f"label values {undeclared} are not declared in dataset.json labels "
            f"(declared: {list(label_values)})"
        )
    return indices, counts_by_value, problem
