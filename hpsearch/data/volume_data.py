"""Whole preprocessed cases for patch training (``dataset.dims`` 2 or 3).

Slice mode (:class:`~hpsearch.data.preprocess.PreparedData`) stores every training slice
at one fixed size. Patch mode keeps each case whole, resampled to the plan's target
spacing, and cuts patches from it while training; validation cases are kept twice: at
the target spacing (what the network sees) and their labels in the scan's *original*
geometry, so validation Dice is computed where ``hpsearch predict`` would score.

Arrays are one ``.npy`` file each, so a cache entry opens memory-mapped and the loader's
worker processes share the page cache instead of copying the dataset per trial.

Layout of every array (voxel axes in the scan's own order X, Y, Z):

* ``train_images[i]``: ``(C, X, Y, Z)`` float32, normalised, at the target spacing
  (channels first: what batchgenerators' transforms take);
* ``train_labels[i]``: ``(X, Y, Z)`` uint8 class indices at the target spacing;
* ``train_foreground[i]``: ``(K, 4)`` int32 rows ``(class, x, y, z)``: a sample of each
  foreground class's voxels (nnU-Net's ``class_locations``), for foreground oversampling;
* ``val_images[i]``: ``(C, X, Y, Z)`` float32 at the target spacing;
* ``val_labels[i]``: ``(X0, Y0, Z0)`` uint8 class indices in the case's original grid.

Example:
    >>> import tempfile
    >>> data = VolumeData(
    ...     train_images=[np.zeros((1, 4, 5, 6), np.float32)], train_labels=[np.zeros((4, 5, 6), np.uint8)],
    ...     train_foreground=[np.zeros((0, 4), np.int32)], val_images=[np.zeros((1, 4, 5, 6), np.float32)],
    ...     val_labels=[np.zeros((8, 10, 3), np.uint8)], info={"label_values": [0, 1]})
    >>> folder = Path(tempfile.mkdtemp()) / "entry"
    >>> files = save_volume_data(data, folder)
    >>> load_volume_data(folder).val_labels[0].shape
    (8, 10, 3)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

INFO_FILE = "info.json"
# The per-case lists, in the order their files are named and checked.
CASE_ARRAYS = ("train_images", "train_labels", "train_foreground", "val_images", "val_labels")


class ClassInfo:
    """Class count and names read from ``self.info``: shared by both kinds of prepared data."""

    info: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.info["label_values"])

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])


@dataclasses.dataclass
class VolumeData(ClassInfo):
    """Preprocessed whole cases of one dataset (see the module docstring for shapes).

    Attributes:
        info: JSON-friendly description, as :attr:`PreparedData.info` (class names, label
            values, channel names, case ids of each split, settings, digest, fingerprint)
            plus ``plan`` (the resolved :class:`~hpsearch.data.plan.Plan` as a dict),
            ``val_spacings`` (each validation case's original spacing in mm) and
            ``intensity`` (statistics the normalisation used, e.g. CT clip and z-score).
    """

    train_images: list[np.ndarray]
    train_labels: list[np.ndarray]
    train_foreground: list[np.ndarray]
    val_images: list[np.ndarray]
    val_labels: list[np.ndarray]
    info: dict[str, Any]

    @property
    def num_channels(self) -> int:
        return int(self.train_images[0].shape[0]) if self.train_images else 0

    def summary(self) -> str:
        """One line for the console: cases, spacing and patches."""
        plan = self.info.get("plan") or {}
        spacing = plan.get("target_spacing")
        at = f"at {' x '.join(f'{s:g}' for s in spacing)} mm" if spacing else "on their own grids"
        patch = "x".join(str(p) for p in plan.get("patch_size", []))
        return (f"{len(self.train_images)} training / {len(self.val_images)} validation cases {at}, "
                f"{plan.get('dims')}D patches {patch}, classes {self.class_names}")


def case_file(name: str, i: int) -> str:
    """The file of case ``i`` of the list ``name``: ``train_images_0000.npy``."""
    return f"{name}_{i:04d}.npy"


def array_files(data: VolumeData) -> list[str]:
    """The file name of every array, ``train_images_0000.npy`` ..., in :data:`CASE_ARRAYS` order."""
    return [case_file(name, i) for name in CASE_ARRAYS for i in range(len(getattr(data, name)))]


def save_case_array(directory: Path, name: str, i: int, array: np.ndarray) -> str:
    """Write one case's array into an entry being built case by case; return its file name.

    With :func:`save_info` last, this writes what :func:`save_volume_data` writes without
    holding every case in memory at once.
    """
    file = case_file(name, i)
    np.save(Path(directory) / file, np.ascontiguousarray(array))
    return file


def save_info(directory: Path, info: dict[str, Any], counts: dict[str, int]) -> str:
    """Write ``info.json`` with the case ``counts`` per list; return its file name."""
    (Path(directory) / INFO_FILE).write_text(json.dumps({**info, "counts": counts}, indent=2))
    return INFO_FILE


def save_volume_data(data: VolumeData, directory: Path) -> list[str]:
    """Write every array and ``info.json`` into a new folder; return the names of the files written.

    The case counts go into ``info.json`` (``counts``), so :func:`load_volume_data` knows
    which files belong to the entry without listing the folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True)
    names = [
        save_case_array(directory, name, i, array)
        for name in CASE_ARRAYS for i, array in enumerate(getattr(data, name))
    ]
    return [*names, save_info(directory, data.info, {name: len(getattr(data, name)) for name in CASE_ARRAYS})]


def load_volume_data(directory: Path, *, mmap: bool = True) -> VolumeData:
    """Open a folder written by :func:`save_volume_data`; arrays memory-mapped read-only unless ``mmap=False``."""
    directory = Path(directory)
    info = json.loads((directory / INFO_FILE).read_text())
    counts = info.get("counts", {})
    mode = "r" if mmap else None
    lists = {
        name: [np.load(directory / case_file(name, i), mmap_mode=mode) for i in range(counts.get(name, 0))]
        for name in CASE_ARRAYS
    }
    return VolumeData(**lists, info=info)


def volume_data_files(directory: Path) -> list[str]:
    """The files of a saved entry, from its ``info.json`` (for checksums)."""
    counts = json.loads((Path(directory) / INFO_FILE).read_text()).get("counts", {})
    return [case_file(name, i) for name in CASE_ARRAYS for i in range(counts.get(name, 0))] + [INFO_FILE]
