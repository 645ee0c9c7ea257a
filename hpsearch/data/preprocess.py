"""Volumes to 2D slices: normalisation, slicing, in-plane sizing, case split.

Pure numpy/scipy functions over one case at a time, and :func:`prepare` that runs
them over a dataset. No TensorFlow here: preprocessing runs once per dataset and
setting (see :mod:`hpsearch.data.cache`), in processes that need not import it.

The functions are also what prediction uses, so a new scan goes through exactly the
preprocessing its model was trained with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

from hpsearch.data.check import FingerprintBuilder
from hpsearch.data.config import PreprocessConfig
from hpsearch.data.layouts import DatasetIndex
from hpsearch.data.splits import Fold, fold_cases, split_cases  # noqa: F401  (split_cases: re-exported)
from hpsearch.data.volume_data import ClassInfo
from hpsearch.data.volumes import load_case, refuse_defects
from hpsearch.errors import HpsearchError


@dataclasses.dataclass
class PreparedData(ClassInfo):
    """Preprocessed training and validation slices of one dataset.

    Attributes:
        train_x: ``(N, H, W, C)`` float32 slices of the training cases.
        train_y: ``(N, H, W)`` uint8 class indices.
        train_case: ``(N,)`` int32 position of each training slice's case in
            ``info["train_cases"]`` (what ``scheduler.fidelity.case_fraction`` subsets).
        val_x: ``(M, H, W, C)`` every slice of the validation cases.
        val_y: ``(M, H, W)`` uint8 class indices.
        val_case: ``(M,)`` int32 position of each validation slice's case in
            ``info["val_cases"]``, so Dice can be computed per volume.
        info: JSON-friendly description: class names and label values, channel
            names, case ids of each split, preprocessing settings, dataset digest.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    train_case: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_case: np.ndarray
    info: dict[str, Any]

    ARRAYS = ("train_x", "train_y", "train_case", "val_x", "val_y", "val_case")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_x.shape[1:])  # type: ignore[return-value]

    def summary(self) -> str:
        """One line for the console: what training and validation see."""
        info = self.info
        return (f"{len(self.train_x)} training slices from {len(info['train_cases'])} cases, "
                f"{len(self.val_x)} validation slices from {len(info['val_cases'])} cases, "
                f"input {self.input_shape}, classes {self.class_names}")


def normalize_intensities(image: np.ndarray, mode: str) -> np.ndarray:
    """Z-score each channel of one case.

    Args:
        image: ``(..., C)`` intensities of one case.
        mode: ``zscore_nonzero`` (statistics over non-zero voxels, zero stays zero:
            the nnU-Net choice for skull-stripped MRI), ``zscore`` or ``none``.

    Example:
        >>> x = np.array([[0.0], [1.0], [3.0]])
        >>> normalize_intensities(x, "zscore_nonzero")[:, 0].tolist()
        [0.0, -1.0, 1.0]
    """
    if mode == "none":
        return image.astype(np.float32)
    out = np.zeros(image.shape, np.float32)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        mask = channel != 0 if mode == "zscore_nonzero" else np.ones(channel.shape, bool)
        if not mask.any():
            continue
        values = channel[mask]
        # A constant channel (std 0) becomes zeros rather than inf.
        std = max(float(values.std()), 1e-8)
        out[..., c][mask] = (values - values.mean()) / std
    return out


def fit_in_plane(
    slices: np.ndarray, size: tuple[int, int], mode: str, *, is_label: bool = False
) -> np.ndarray:
    """Bring ``(N, A, B[, C])`` slices to ``(N, H, W[, C])``.

    ``interpolate`` resamples (linear for images, nearest for labels, so no new label
    values appear); ``pad_crop`` centre pads with zeros or centre crops. The same
    call with the original ``(A, B)`` as ``size`` maps a prediction back.
    """
    in_plane = slices.shape[1:3]
    if tuple(in_plane) == tuple(size):
        return slices
    if mode == "interpolate":
        factors = [1.0, size[0] / in_plane[0], size[1] / in_plane[1]] + [1.0] * (slices.ndim - 3)
        return ndimage.zoom(
            slices, factors, order=0 if is_label else 1, mode="nearest", grid_mode=True
        )
    out = np.zeros((slices.shape[0], *size, *slices.shape[3:]), slices.dtype)
    src, dst = [], []
    for have, want in zip(in_plane, size):
        offset = abs(have - want) // 2
        length = min(have, want)
        src.append(slice(offset, offset + length) if have > want else slice(0, length))
        dst.append(slice(offset, offset + length) if want > have else slice(0, length))
    out[:, dst[0], dst[1]] = slices[:, src[0], src[1]]
    return out


def preprocess_volume(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """One case's ``(X, Y, Z, C)`` image to normalised ``(N, H, W, C)`` slices."""
    slices = np.moveaxis(normalize_intensities(image, config.normalize), config.slice_axis, 0)
    return fit_in_plane(slices, config.image_size, config.resize).astype(np.float32)


def preprocess_label(label: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """One case's ``(X, Y, Z)`` class indices to ``(N, H, W)`` uint8 slices."""
    slices = np.moveaxis(label, config.slice_axis, 0)
    return fit_in_plane(slices, config.image_size, config.resize, is_label=True).astype(np.uint8)


def prepare(index: DatasetIndex, config: PreprocessConfig, *, digest: str = "", fold: Fold | None = None) -> PreparedData:
    """Load, check and preprocess the cases of one split (``fold``, see :func:`fold_cases`) into slices.

    Raises:
        HpsearchError: A case is unreadable or inconsistent, or a defect of the
            declaration (:attr:`DatasetIndex.defects`: too few cases, ...).
    """
    refuse_defects(index, index.defects)
    by_id = {case.case_id: case for case in index.cases}
    split = fold_cases(index, config.val_fraction, config.split_seed, fold)
    train_ids, val_ids = list(split.train), list(split.val)
    rng = np.random.default_rng(config.split_seed)
    fingerprint = FingerprintBuilder(index)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in PreparedData.ARRAYS}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        for position, case_id in enumerate(ids):
            volumes = load_case(index, by_id[case_id])
            fingerprint.add(volumes)
            x = preprocess_volume(volumes.image, config)
            y = preprocess_label(volumes.label, config)
            if split == "train":
                keep = y.reshape(len(y), -1).any(axis=1)
                keep |= rng.random(len(y)) < config.keep_empty_fraction
                x, y = x[keep], y[keep]
                parts["train_case"].append(np.full(len(y), position, np.int32))
            else:
                parts["val_case"].append(np.full(len(y), position, np.int32))
            parts[f"{split}_x"].append(x)
            parts[f"{split}_y"].append(y)
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    if len(arrays["train_x"]) == 0:
        raise HpsearchError(
            f"{index.root}: no training slices left; the training cases have no foreground "
            "and keep_empty_fraction is 0"
        )
    info = {
        **dataset_info(index, digest, train_ids, val_ids),
        "preprocess": config.model_dump(mode="json"),
        "fingerprint": fingerprint.fingerprint().to_dict(),
    }
    return PreparedData(**arrays, info=info)


def dataset_info(index: DatasetIndex, digest: str, train_ids: list[str], val_ids: list[str]) -> dict[str, Any]:
    """What both kinds of prepared data say about their dataset and split (JSON-friendly)."""
    return {
        "dataset": str(index.root),
        "digest": digest,
        "layout": index.layout,
        "channel_names": list(index.channel_names),
        "class_names": list(index.class_names),
        "label_values": list(index.label_values),
        "train_cases": train_ids,
        "val_cases": val_ids,
    }
