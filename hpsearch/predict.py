"""Segmenting new scans with an exported model (see :mod:`hpsearch.export`).

A scan goes through exactly the preprocessing its model was trained with (the
functions of :mod:`hpsearch.data.preprocess`, with the exported settings); class
probabilities are mapped back to the scan's in-plane size, class indices to the
original label values (BraTS class 3 -> 4), and the label map gets the scan's affine.

Example:
    >>> predict_path(Path("lv-model"), Path("scans/"), Path("labels/"))  # doctest: +SKIP
    [PosixPath('labels/patient01.nii.gz'), PosixPath('labels/patient02.nii.gz')]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from hpsearch.data.config import PreprocessConfig
from hpsearch.data.guard import is_inside, refuse_inside
from hpsearch.data.layouts import NIFTI_ENDINGS
from hpsearch.data.preprocess import fit_in_plane, preprocess_volume
from hpsearch.data.volumes import AFFINE_TOLERANCE_MM, header_spacing
from hpsearch.errors import HpsearchError
from hpsearch.ensemble import ENSEMBLE_FORMAT, member_files
from hpsearch.export import EXPORT_FORMAT, META_FILE, MODEL_FILE
from hpsearch.segment import ensemble_logits, keras_logits, segment_scan

if TYPE_CHECKING:
    import keras

# nnU-Net names one file per channel: CASE_0000.nii.gz, CASE_0001.nii.gz, ...
_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})\.nii(\.gz)?$")


@dataclasses.dataclass
class ExportedModel:
    """An exported network, or the members of an exported ensemble (``models``), with the
    metadata that says how to feed it (``meta``)."""

    models: list[keras.Model]
    meta: dict
    directory: Path

    @classmethod
    def load(cls, directory: str | Path, meta: dict | None = None) -> ExportedModel:
        """Read an export folder; every model loads with ``safe_mode=True`` (no pickled code).

        Args:
            directory: The folder `hpsearch export` wrote (with or without ``--ensemble``).
            meta: Its metadata if already read (:func:`read_export_meta`).

        Raises:
            HpsearchError: A file is missing or unreadable, or the export format is unknown.
        """
        directory = Path(directory)
        meta = meta if meta is not None else read_export_meta(directory)
        # Keras (TensorFlow) only now: a wrong folder or input fails without its start-up lines.
        import keras

        models = []
        for model_path in model_files(directory, meta):
            try:
                models.append(keras.models.load_model(model_path, safe_mode=True, compile=False))
            except Exception as exc:  # Keras raises many types for damaged or unsafe files
                raise HpsearchError(f"{model_path}: cannot load the model ({type(exc).__name__}: {exc})") from None
        return cls(models, meta, directory)

    @property
    def model(self) -> keras.Model:
        """The network of a single-model export (an ensemble has :attr:`models`)."""
        if len(self.models) != 1:
            raise HpsearchError(f"{self.directory}: an ensemble of {len(self.models)} models; use its models "
                                "or predict_batch")
        return self.models[0]

    @property
    def is_ensemble(self) -> bool:
        return "ensemble" in self.meta

    @functools.cached_property
    def predict_batch(self) -> Callable[[np.ndarray], np.ndarray]:
        """Network input batch to float32 logits: the model's, or for an ensemble
        ``log(mean_i softmax(member_i(x)))``, whose softmax is the members' mean probability.
        Slice and patch prediction both call it, so both average the same way."""
        return ensemble_logits(self.models) if self.is_ensemble else keras_logits(self.models[0])

    @property
    def channel_names(self) -> list[str]:
        return list(self.meta["channel_names"])

    @property
    def patch_mode(self) -> bool:
        """Trained on patches: predicts by sliding window at the plan's spacing."""
        return bool(self.meta.get("plan"))

    def predict_volume(
        self,
        image: np.ndarray,
        spacing: tuple[float, float, float] | None = None,
        batch_size: int = 16,
        mirror: bool | None = None,
    ) -> np.ndarray:
        """Segment one scan: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in, ``(X, Y, Z)`` labels out.

        Args:
            image: The scan's voxels.
            spacing: Its voxel size in mm (the NIfTI header's zooms); needed by models
                trained on patches, which resample to their target spacing.
            batch_size: Slices or windows per network call.
            mirror: Test-time mirroring (patch mode); default the export's setting.

        Returns:
            Original label values (``uint8`` when all are below 256, else ``int16``).

        Raises:
            HpsearchError: Wrong number of channels, NaN/infinite voxels, or no spacing
                for a patch-mode model.
        """
        image = np.asarray(image)
        names = self.channel_names
        if image.ndim == 3:
            image = image[..., None]
        if image.ndim != 4 or image.shape[3] != len(names):
            raise HpsearchError(
                f"image of shape {image.shape} does not hold the model's {len(names)} channel(s) "
                f"({', '.join(names)}); expected 3D for one channel, or 4D with channels last"
            )
        if not np.isfinite(image).all():
            raise HpsearchError("image holds NaN or infinite voxels")
        if self.patch_mode:
            if spacing is None:
                raise HpsearchError("this model was trained on patches at a target spacing; give the scan's spacing")
            mirror = self.meta.get("inference", {}).get("mirror", False) if mirror is None else mirror
            classes = segment_scan(image.astype(np.float32), spacing, self.predict_batch, self.meta,
                                   batch_size=batch_size, mirror=mirror)
            return to_label_values(classes, self.meta["label_values"])
        config = PreprocessConfig(**self.meta["preprocess"])
        slices = preprocess_volume(image.astype(np.float32), config)
        original = np.moveaxis(image[..., 0], config.slice_axis, 0).shape[1:]
        classes = np.empty((len(slices), *original), np.uint8)
        # One batch at a time: full-volume probabilities would be slices x X x Y x classes floats.
        for start in range(0, len(slices), batch_size):
            logits = self.predict_batch(slices[start : start + batch_size])
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
            # Probabilities, not class indices, are resampled: linear interpolation of
            # probabilities gives smooth boundaries; pad_crop inverts itself exactly.
            probs = fit_in_plane(probs, original, config.resize)
            classes[start : start + len(probs)] = np.argmax(probs, axis=-1)
        return to_label_values(np.moveaxis(classes, 0, config.slice_axis), self.meta["label_values"])


def read_export_meta(directory: Path) -> dict:
    """The checked ``hpsearch-model.json`` of an export folder (no TensorFlow needed).

    Format 1 is a single ``model.keras``; format 2 an ensemble (:mod:`hpsearch.ensemble`).

    Raises:
        HpsearchError: A file is missing or unreadable, or the export format is unknown.
    """
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise HpsearchError(f"{meta_path}: missing; not a model folder written by `hpsearch export`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HpsearchError(f"{meta_path}: not readable JSON ({exc})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version not in (EXPORT_FORMAT, ENSEMBLE_FORMAT):
        raise HpsearchError(
            f"{meta_path}: export format {version!r}; this hpsearch reads formats {EXPORT_FORMAT} (one model) "
            f"and {ENSEMBLE_FORMAT} (an ensemble) (use the hpsearch version that exported it, or export again)"
        )
    if (version == ENSEMBLE_FORMAT) != ("ensemble" in meta):
        raise HpsearchError(f"{meta_path}: format {version} with{'' if 'ensemble' in meta else 'out'} an ensemble "
                            f"section; only format {ENSEMBLE_FORMAT} is an ensemble (edited or damaged? export again)")
    for path in model_files(directory, meta):
        if not path.is_file():
            raise HpsearchError(f"{path}: missing; not a complete model folder written by `hpsearch export` "
                                "(copy the whole folder)")
    return meta


def model_files(directory: Path, meta: dict) -> list[Path]:
    """The ``.keras`` files of an export: ``model.keras``, or an ensemble's members."""
    return member_files(directory, meta) if "ensemble" in meta else [directory / MODEL_FILE]


def to_label_values(classes: np.ndarray, label_values: list[int]) -> np.ndarray:
    """Class indices to the dataset's label values (BraTS ``[0, 1, 2, 4]``: 3 -> 4).

    Example:
        >>> to_label_values(np.array([0, 3, 1]), [0, 1, 2, 4]).tolist()
        [0, 4, 1]
    """
    values = np.asarray(label_values, np.int64)
    dtype = np.uint8 if values.max() < 256 else np.int16 if values.max() < 2**15 else np.int32
    return values.astype(dtype)[classes]


def trained_on(meta: dict) -> Path | None:
    """The folder a model was trained on, when its export recorded it as an absolute path.

    ``dataset`` is written by exports since it was added; older ones (and any search
    export) also carry it as the fingerprint's ``root``. A relative path names a folder
    only from the working directory of training, so it is ignored.
    """
    recorded = meta.get("dataset") or (meta.get("fingerprint") or {}).get("root")
    return Path(recorded) if isinstance(recorded, str) and Path(recorded).is_absolute() else None


def predict_path(model_dir: Path, input_path: Path, output_path: Path, *, mirror: bool | None = None) -> list[Path]:
    """Segment a NIfTI file, or every case in a folder, into new label files.

    A folder's ``.nii``/``.nii.gz`` files are cases; for a multi-channel model,
    nnU-Net's ``CASE_0000.nii.gz, CASE_0001.nii.gz, ...`` form one case ``CASE``.
    ``output_path`` is a file for a file, a folder (of ``CASE.nii.gz``) for a folder.
    Existing files are never overwritten, nothing is written into the input folder
    or into the dataset folder the model was trained on (when the export names it),
    and every input header is checked before the first prediction.

    Returns:
        The written label files.

    Raises:
        HpsearchError: Unreadable or mismatched input, or an unsafe output path.

    Example:
        >>> predict_path(Path("model"), Path("scan.nii.gz"), Path("seg.nii.gz"))  # doctest: +SKIP
        [PosixPath('seg.nii.gz')]
    """
    model_dir, input_path, output_path = Path(model_dir), Path(input_path), Path(output_path)
    meta = read_export_meta(model_dir)
    names = list(meta["channel_names"])
    if input_path.is_dir():
        jobs = _folder_jobs(input_path, output_path, len(names))
    elif input_path.is_file():
        if not _nifti_stem(input_path) or not _nifti_stem(output_path) or output_path.is_dir():
            raise HpsearchError(f"{input_path} -> {output_path}: for one scan, both must be .nii or .nii.gz files")
        jobs = [((input_path,), output_path)]
    else:
        raise HpsearchError(f"{input_path}: no such file or folder")
    if (dataset := trained_on(meta)) is not None:
        refuse_inside(output_path, dataset, "output")
    for _, out in jobs:
        if out.exists() or out.is_symlink():
            raise HpsearchError(f"{out}: already exists; choose another output (nothing is overwritten)")
    opened = [_open_case(files, names) for files, _ in jobs]  # every header, before any prediction
    exported = ExportedModel.load(model_dir, meta)
    written = []
    for (files, out), images in zip(jobs, opened):
        volumes = [_voxels(path, image) for path, image in zip(files, images)]
        try:
            labels = exported.predict_volume(volumes[0] if len(volumes) == 1 else np.stack(volumes, axis=-1),
                                             spacing=header_spacing(images[0]), mirror=mirror)
        except HpsearchError as exc:
            raise HpsearchError(f"{files[0]}: {exc}") from None
        write_labels(out, labels, images[0])
        written.append(out)
    return written


def _nifti_stem(path: Path) -> str | None:
    return next((path.name[: -len(e)] for e in NIFTI_ENDINGS if path.name.endswith(e)), None)


def _folder_jobs(folder: Path, out_dir: Path, channels: int) -> list[tuple[tuple[Path, ...], Path]]:
    if is_inside(out_dir, folder):
        raise HpsearchError(f"{out_dir}: is inside the input folder {folder}; choose an output folder elsewhere")
    if out_dir.exists() and not out_dir.is_dir():
        raise HpsearchError(f"{out_dir}: exists and is not a folder; a folder's predictions go to a folder")
    groups: dict[str, list[tuple[int, Path]]] = {}
    # Dot files are skipped: macOS leaves unreadable "._scan.nii.gz" twins on shared drives.
    for path in sorted(p for p in folder.iterdir() if _nifti_stem(p) and not p.name.startswith(".") and p.is_file()):
        match = _CHANNEL_FILE.match(path.name) if channels > 1 else None
        case, channel = (match[1], int(match[2])) if match else (_nifti_stem(path), -1)
        groups.setdefault(case, []).append((channel, path))
    if not groups:
        raise HpsearchError(f"{folder}: no .nii or .nii.gz files to segment")
    jobs = []
    for case, members in groups.items():
        out, files = out_dir / f"{case}.nii.gz", [path for _, path in sorted(members)]
        found = sorted(channel for channel, _ in members)
        if -1 in found and len(found) > 1:  # e.g. a.nii and a.nii.gz
            raise HpsearchError(f"{', '.join(map(str, files))}: all would be written to {out}; move one")
        if -1 not in found and found != list(range(channels)):
            raise HpsearchError(
                f"{folder}: case {case} has channel files {[p.name for p in files]}; the model takes "
                f"{channels} channels, {case}_0000 to {case}_{channels - 1:04d}, one file each"
            )
        jobs.append((tuple(files), out))
    return jobs


def _open_case(files: tuple[Path, ...], names: list[str]) -> list[nib.Nifti1Image]:
    images = []
    for path in files:
        try:
            images.append(nib.load(path))  # the header only; voxels are read when predicting
        except Exception as exc:  # nibabel raises many types for non-NIfTI files
            raise HpsearchError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    shape, count = images[0].shape, len(names)
    if len(files) == 1 and not ((len(shape) == 3 and count == 1) or (len(shape) == 4 and shape[3] == count)):
        raise HpsearchError(
            f"{files[0]}: shape {shape} does not hold the model's {count} channel(s) ({', '.join(names)}); "
            "expected 3D for one channel, 4D with channels last, or one file per channel (CASE_0000.nii.gz)"
        )
    for path, image in zip(files[1:], images[1:]):
        if len(image.shape) != 3 or image.shape != shape:  # also catches a 4D channel 0
            raise HpsearchError(f"{path}: shape {image.shape}, {files[0].name} {shape}; channel files must be 3D alike")
        if not np.allclose(image.affine, images[0].affine, atol=AFFINE_TOLERANCE_MM):
            raise HpsearchError(f"{path}: affine differs from {files[0].name}'s; channels must share one grid")
    return images


def _voxels(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    try:  # reading the voxels is what fails on a truncated .nii.gz, not nib.load
        return np.asarray(image.dataobj).astype(np.float32, copy=False)
    except Exception as exc:  # gzip, zlib and nibabel errors
        raise HpsearchError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__}: {exc})") from None


def write_labels(out: Path, labels: np.ndarray, reference: nib.Nifti1Image) -> None:
    """Write a label map with ``reference``'s geometry, under a hidden name then renamed."""
    # The scan's header keeps orientation codes and voxel sizes; the constructor makes it 3D.
    image = nib.Nifti1Image(labels, reference.affine, reference.header.copy())
    image.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1, 0)  # labels are stored as is, never rescaled
    image.header["cal_min"], image.header["cal_max"] = 0, 0  # the scan's display window means nothing here
    image.header.set_intent("none")
    out.parent.mkdir(parents=True, exist_ok=True)
    ending = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii"
    # Written under a hidden name and renamed: an interrupted run leaves no half file.
    partial = out.with_name(f".{_nifti_stem(out)}.partial-{secrets.token_hex(4)}{ending}")
    try:
        nib.save(image, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
