"""Patch loader batches/s against U-Net training steps/s, 2D and 3D: does the trainer wait on data?

For each mode (2D U-Net ``unet`` on slices, 3D U-Net ``unet3d``) on the same patch size
and batch size, measured in this order:

* loader alone: batches/s with 0 (in-process), 1 and 2 spawned workers, nnU-Net's
  default augmentation (``AugmentConfig()``), after the first batch (worker start-up is
  reported on its own);
* model alone: ``train_on_batch`` steps/s on one fixed batch (TensorFlow on all cores);
* together: the model trained on the loader's batches with 1 and 2 workers (the real
  setting: both compete for the same cores), with the share of time spent waiting for
  the next batch.

The cases are synthetic (blobs of two classes in noise), saved with ``save_volume_data``
and opened memory-mapped, as a cache entry is.

Measured (2 shared CPU cores, other engineers' jobs running, load average up to 7; 2D:
197x233x40 cases, patch 160x192, batch 8, U-Net depth 4 / 16 filters; 3D: 128x128x96 x 4
channels, patch 64^3, batch 2, 3D U-Net depth 4 / 16 filters): loader 34 (2D) and 1.9 (3D)
batches/s in-process against 1.2 and 0.52 training steps/s; fed by one worker the model
waited for data 0% of the time in both.

Run from the repository root:

    .venv/bin/python benchmarks/loader_throughput.py
    .venv/bin/python benchmarks/loader_throughput.py --smoke-test
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hpsearch.data.augment import AugmentConfig
from hpsearch.data.loader import PatchLoader
from hpsearch.data.volume_data import VolumeData, load_volume_data, save_volume_data

# mode -> (case shape, channels, patch, batch, model, model options)
FULL = {
    "2D": ((197, 233, 40), 1, (160, 192), 8, "unet", dict(depth=4, base_filters=16)),
    "3D": ((128, 128, 96), 4, (64, 64, 64), 2, "unet3d", dict(depth=4, base_filters=16)),
}
SMOKE = {
    "2D": ((40, 50, 10), 1, (32, 32), 4, "unet", dict(depth=2, base_filters=4)),
    "3D": ((30, 34, 28), 2, (16, 16, 16), 2, "unet3d", dict(depth=2, base_filters=4)),
}


def write_cases(folder: Path, shape, channels: int, cases: int = 4) -> Path:
    """``cases`` synthetic cases (an ellipsoid of class 1 around a smaller one of class 2, plus noise)."""
    rng = np.random.default_rng(0)
    images, labels, foreground = [], [], []
    grid = np.indices(shape)
    for _ in range(cases):
        centre = [rng.uniform(0.4, 0.6) * n for n in shape]
        r = sum(((g - c) / (0.3 * n)) ** 2 for g, c, n in zip(grid, centre, shape))
        label = np.where(r < 1, 1, 0).astype(np.uint8)
        label[r < 0.2] = 2
        image = np.stack([label + rng.normal(0, 0.5, shape) for _ in range(channels)]).astype(np.float32)
        voxels = np.argwhere(label > 0)
        keep = rng.choice(len(voxels), min(len(voxels), 10_000), replace=False)  # nnU-Net keeps a sample
        images.append(image)
        labels.append(label)
        foreground.append(np.c_[label[tuple(voxels[keep].T)], voxels[keep]].astype(np.int32))
    data = VolumeData(images, labels, foreground, images[:1], labels[:1], {"label_values": [0, 1, 2]})
    save_volume_data(data, folder)
    return folder


def loader_for(entry: Path, dims: int, patch, batch: int, workers: int, samples: int) -> PatchLoader:
    return PatchLoader(functools.partial(load_volume_data, entry), dims=dims, patch_size=patch, slice_axis=2,
                       batch_size=batch, samples_per_epoch=samples, foreground_fraction=0.33,
                       augment=AugmentConfig(), seed=0, workers=workers)


def loader_rate(entry: Path, dims: int, patch, batch: int, workers: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, batches/s after it)."""
    started = time.perf_counter()
    with loader_for(entry, dims, patch, batch, workers, (batches + 1) * batch) as loader:
        stream = loader.epoch(0)
        next(stream)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in stream:
            pass
        return first, batches / (time.perf_counter() - started)


def build(model_name: str, patch, channels: int, options: dict):
    import keras

    from hpsearch.models import build_model

    model = build_model(model_name, (*patch, channels), 3, **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def model_rate(model, patch, channels: int, batch: int, steps: int) -> float:
    """Steps/s of ``train_on_batch`` on one fixed batch, after 2 warm-up steps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *patch, channels)).astype(np.float32)
    y = rng.integers(0, 3, (batch, *patch)).astype(np.uint8)
    for _ in range(2):
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps / (time.perf_counter() - started)


def together(model, entry: Path, dims: int, patch, batch: int, workers: int, steps: int) -> tuple[float, float]:
    """(steps/s training on the loader's batches, share of the time waiting for a batch)."""
    with loader_for(entry, dims, patch, batch, workers, (steps + 2) * batch) as loader:
        stream = loader.epoch(0)
        for _ in range(2):  # start-up and tracing are not the steady state
            model.train_on_batch(*next(stream))
        waited, started = 0.0, time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            x, y = next(stream)
            waited += time.perf_counter() - t
            model.train_on_batch(x, y)
        total = time.perf_counter() - started
    return steps / total, waited / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, seconds not minutes")
    parser.add_argument("--batches", type=int, default=None, help="batches/steps timed per row")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    modes = SMOKE if args.smoke_test else FULL
    count = args.batches or (3 if args.smoke_test else 12)
    work = Path(tempfile.mkdtemp(prefix="hpsearch-loader-bench-"))
    rows = []
    try:
        for mode, (shape, channels, patch, batch, model_name, options) in modes.items():
            dims = len(patch)
            entry = write_cases(work / mode, shape, channels)
            for workers in (0, 1, 2):
                first, rate = loader_rate(entry, dims, patch, batch, workers, count)
                rows.append((mode, f"loader, {workers} worker(s)", rate, f"first batch after {first:.1f} s"))
            model = build(model_name, patch, channels, options)
            rows.append((mode, f"{model_name} train step alone", model_rate(model, patch, channels, batch, count),
                         f"{model.count_params():,} parameters"))
            for workers in (1, 2):
                rate, waiting = together(model, entry, dims, patch, batch, workers, count)
                rows.append((mode, f"{model_name} fed by loader, {workers} worker(s)", rate,
                             f"{waiting:.0%} of the time waiting for data"))
            print(f"{mode}: cases {shape} x {channels} channel(s), patch {patch}, batch {batch}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'mode':4}  {'what':38}  {'per s':>7}  note")
    for mode, what, rate, note in rows:
        print(f"{mode:4}  {what:38}  {rate:7.2f}  {note}")


if __name__ == "__main__":
    main()
