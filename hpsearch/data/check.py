"""Dataset fingerprint and defect report: what ``hpsearch data check DIR`` prints.

The fingerprint is what a user checks before a search (nnU-Net calls it the same):
cases, channels, shapes, voxel spacings, label values with voxel counts and intensity
statistics per channel. Every defect found is kept, one line per file and problem,
so a broken dataset is fixed in one pass rather than one error at a time.

Example:
    >>> report = check_dataset("data/demo-lv")      # doctest: +SKIP
    >>> print(report.format())                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from hpsearch.data.layouts import DatasetIndex, read_index
from hpsearch.data.volumes import CaseVolumes, Defect, read_case
from hpsearch.errors import HpsearchError

# Voxels sampled per case and channel for percentiles: exact percentiles would need
# every voxel of the dataset in memory at once.
_PERCENTILE_SAMPLE = 20_000


@dataclasses.dataclass
class ChannelStats:
    """Intensity statistics of one channel over all voxels of all cases."""

    name: str
    mean: float
    std: float
    min: float
    max: float
    p01: float
    p99: float


@dataclasses.dataclass
class Fingerprint:
    """What a dataset holds; JSON-friendly through :meth:`to_dict`."""

    root: str
    layout: str
    num_cases: int
    channels: list[ChannelStats]
    class_names: list[str]
    label_values: list[int]
    label_voxels: dict[int, int]
    shapes: list[list[int]]
    spacing_min: list[float]
    spacing_median: list[float]
    spacing_max: list[float]
    # Per case, in the order of ``shapes``: the planner's target spacing is a
    # percentile over cases, which min/median/max alone cannot give.
    spacings: list[list[float]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CheckReport:
    """A fingerprint (of the readable cases) and every defect found."""

    fingerprint: Fingerprint
    defects: list[Defect]

    @property
    def ok(self) -> bool:
        return not self.defects

    def format(self) -> str:
        """The fingerprint as aligned text lines."""
        fp = self.fingerprint
        shapes = sorted({tuple(s) for s in fp.shapes})
        shown = ", ".join("x".join(map(str, s)) for s in shapes[:6])
        more = f" (+{len(shapes) - 6} more)" if len(shapes) > 6 else ""
        total = sum(fp.label_voxels.values()) or 1
        lines = [
            f"dataset     {fp.root} ({fp.layout})",
            f"cases       {fp.num_cases}",
            f"channels    {len(fp.channels)}: {', '.join(c.name for c in fp.channels)}",
            f"shapes      {shown}{more}",
            "spacing mm  min {} / median {} / max {}".format(
                *(_fmt_vec(v) for v in (fp.spacing_min, fp.spacing_median, fp.spacing_max))
            ),
            "labels      "
            + ", ".join(
                f"{v}={n} ({fp.label_voxels.get(v, 0)} vox, {100 * fp.label_voxels.get(v, 0) / total:.2f}%)"
                for v, n in zip(fp.label_values, fp.class_names)
            ),
        ]
        for c in fp.channels:
            lines.append(
                f"intensity   {c.name}: mean {c.mean:.4g} std {c.std:.4g} "
                f"min {c.min:.4g} p1 {c.p01:.4g} p99 {c.p99:.4g} max {c.max:.4g}"
            )
        return "\n".join(lines)


def check_dataset(root: str | Path) -> CheckReport:
    """Read every case of a dataset; return its fingerprint and all defects.

    Raises:
        HpsearchError: ``dataset.json`` itself is missing or malformed (nothing else
            can be checked then).
    """
    index = read_index(root)
    defects: list[Defect] = list(index.defects)  # the declaration's own: outside files, twice-listed cases, ...
    builder = FingerprintBuilder(index)
    for case in index.cases:
        volumes = read_case(index, case)
        defects.extend(volumes.defects)
        builder.add(volumes)
    return CheckReport(builder.fingerprint(), defects)


def header_fingerprint(index: DatasetIndex) -> Fingerprint:
    """The geometry part of the fingerprint (shapes, spacings, channels, label values)
    from the NIfTI headers alone: enough to plan, in milliseconds, without reading voxels.

    Intensity statistics are NaN and label voxel counts empty. Shape and spacing are the
    first image file's, as :func:`~hpsearch.data.volumes.read_case` takes them.

    Raises:
        HpsearchError: An image file is missing or its header unreadable.
    """
    shapes, spacings = [], []
    for case in index.cases:
        path = case.images[0]
        try:
            header = nib.load(path).header  # reads the header only; voxels stay on disk
        except Exception as exc:  # nibabel and gzip raise many types for bad files
            raise HpsearchError(
                f"{path}: unreadable NIfTI header ({type(exc).__name__}: {exc}); run `hpsearch data check {index.root}`"
            ) from None
        shapes.append([int(n) for n in header.get_data_shape()[:3]])
        spacings.append([float(z) for z in header.get_zooms()[:3]])
    array = np.asarray(spacings) if spacings else np.zeros((1, 3))
    nan = float("nan")
    return Fingerprint(
        root=str(index.root),
        layout=index.layout,
        num_cases=len(index.cases),
        channels=[ChannelStats(name, nan, nan, nan, nan, nan, nan) for name in index.channel_names],
        class_names=list(index.class_names),
        label_values=list(index.label_values),
        label_voxels={},
        shapes=shapes,
        spacing_min=array.min(axis=0).tolist(),
        spacing_median=np.median(array, axis=0).tolist(),
        spacing_max=array.max(axis=0).tolist(),
        spacings=spacings,
    )


class FingerprintBuilder:
    """Running sums over cases, so only one case is in memory at a time.

    Preprocessing feeds it the cases it loads anyway, so a prepared dataset carries
    its fingerprint without a second pass over the NIfTI files.
    """

    def __init__(self, index: DatasetIndex):
        self.index = index
        channels = len(index.channel_names)
        self.count = 0
        self.sum = np.zeros(channels)
        self.sum_sq = np.zeros(channels)
        self.min = np.full(channels, np.inf)
        self.max = np.full(channels, -np.inf)
        self.samples: list[np.ndarray] = []
        self.shapes: list[list[int]] = []
        self.spacings: list[tuple[float, float, float]] = []
        self.label_voxels: dict[int, int] = {}
        self.rng = np.random.default_rng(0)

    def add(self, volumes: CaseVolumes) -> None:
        """Count one case's labels and, if its image is usable, its intensities."""
        for value, count in volumes.label_counts.items():
            self.label_voxels[value] = self.label_voxels.get(value, 0) + count
        image = volumes.image
        if image is None or not np.isfinite(image).all():
            return
        flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
        self.count += flat.shape[0]
        self.sum += flat.sum(axis=0)
        self.sum_sq += np.square(flat).sum(axis=0)
        self.min = np.minimum(self.min, flat.min(axis=0))
        self.max = np.maximum(self.max, flat.max(axis=0))
        take = self.rng.choice(flat.shape[0], min(_PERCENTILE_SAMPLE, flat.shape[0]), replace=False)
        self.samples.append(flat[take])
        self.shapes.append(list(image.shape[:3]))
        self.spacings.append(volumes.spacing)

    def fingerprint(self) -> Fingerprint:
        index = self.index
        n = max(self.count, 1)
        mean = self.sum / n
        std = np.sqrt(np.maximum(self.sum_sq / n - mean**2, 0.0))
        sample = np.concatenate(self.samples) if self.samples else np.zeros((1, len(mean)))
        p01, p99 = np.percentile(sample, [1, 99], axis=0)
        spacings = np.asarray(self.spacings) if self.spacings else np.zeros((1, 3))
        return Fingerprint(
            root=str(index.root),
            layout=index.layout,
            num_cases=len(index.cases),
            channels=[
                ChannelStats(name, *(float(a[c]) for a in (mean, std, self.min, self.max, p01, p99)))
                for c, name in enumerate(index.channel_names)
            ],
            class_names=list(index.class_names),
            label_values=list(index.label_values),
            label_voxels=dict(sorted(self.label_voxels.items())),
            shapes=self.shapes,
            spacing_min=spacings.min(axis=0).tolist(),
            spacing_median=np.median(spacings, axis=0).tolist(),
            spacing_max=spacings.max(axis=0).tolist(),
            spacings=[[float(v) for v in s] for s in self.spacings],
        )


def _fmt_vec(values: list[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values)
