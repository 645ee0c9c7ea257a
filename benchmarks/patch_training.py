"""Slice mode vs 2D vs 3D patches: epoch time at equal samples, data waiting, sliding-window inference.

On the synthetic BraTS-style set (4 channels, labels 0/1/2/4), with the same U-Net
settings in every mode (``jobs/brats.yaml`` for slice mode, ``jobs/brats-3d.yaml`` for
patches, overridden to the sizes below), measured in one run with the real
:class:`~hpsearch.trainer.Trainer`, feeds and loader:

1. Epoch time at equal training samples. A patch epoch is ``samples_per_epoch`` patches;
   a slice-mode epoch is every kept training slice (not configurable), so slice mode is
   timed over its real epoch and also shown scaled to ``samples_per_epoch`` samples
   (seconds per sample x samples; a slice epoch has no per-epoch set-up besides Keras's,
   so the cost is linear in samples). Training (``model.fit`` inside
   ``Trainer.train_epoch``) and validation (the feed's ``evaluate``: resized slices in
   slice mode, sliding window over whole validation cases in their original geometry in
   patch mode) are timed apart. The first epoch (tracing, worker start-up) is left out
   of the steady figures; its extra over a steady epoch is shown on its own.
2. Does the trainer wait on data? The patch iterator handed to ``model.fit`` is wrapped
   and the time spent inside ``next()`` summed, with ``loader_workers`` 0 and 1. Keras
   pulls that iterator from a tf.data prefetch thread, so this time partly overlaps
   compute: it is an upper bound on waiting. Against it, "ready fit s": the same model
   fitted on one epoch of batches made beforehand (no data cost; the faster of two).
3. Sliding-window inference per case: :func:`hpsearch.segment.segment_scan` on a raw
   scan (preprocess, windows, back to the scan's geometry), as ``hpsearch predict`` runs
   it, with and without test-time mirroring, split into its parts (preprocess, windows,
   back to the original geometry; timed by wrapping those functions during the call);
   on a synthetic case and on a larger 197x233x40 scan at 1x1x3 mm made with numpy.

Run from the repository root:

    .venv/bin/python benchmarks/patch_training.py              # ~7 min of CPU on 2 cores (11 min wall under load 5-10)
    .venv/bin/python benchmarks/patch_training.py --smoke-test --json summary.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

FULL = dict(cases=16, shape=None, samples=64, epochs=4, depth=3, base_filters=8, batch=2,
            image_size=[64, 64], patch2d=[64, 64], patch3d=[48, 48, 16], big=(197, 233, 40))
SMOKE = dict(cases=4, shape=(32, 32, 12), samples=8, epochs=2, depth=2, base_filters=4, batch=2,
             image_size=[32, 32], patch2d=[32, 32], patch3d=[16, 16, 8], big=(40, 48, 10))
BIG_SPACING = (1.0, 1.0, 3.0)
PREDICT_BATCH = 16  # ExportedModel.predict_volume's default


def jobs(size: dict, data: Path):
    """(mode, job) for slice mode, 2D patches and 3D patches, same U-Net settings."""
    from hpsearch.spec import load_job

    common = [f"dataset.path={data}", f"depth={size['depth']}", f"base_filters={size['base_filters']}",
              f"batch_size={size['batch']}", "epochs=1000"]
    patches = [f"dataset.samples_per_epoch={size['samples']}"]
    return [
        ("slice", load_job(REPO / "jobs/brats.yaml", [*common, f"dataset.image_size={size['image_size']}"])),
        ("2D patch", load_job(REPO / "jobs/brats-3d.yaml", [*common, *patches, "dataset.dims=2",
                                                            f"dataset.patch_size={size['patch2d']}"])),
        ("3D patch", load_job(REPO / "jobs/brats-3d.yaml", [*common, *patches,
                                                            f"dataset.patch_size={size['patch3d']}"])),
    ]


def timed_iterator(batches, clock: dict):
    """``batches`` as they come, adding the time spent getting each one to ``clock["data"]``."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        finally:
            clock["data"] += time.perf_counter() - started
        yield batch


def train_run(job, workers: int, epochs: int) -> dict:
    """Train ``epochs`` epochs; per epoch its training, validation and in-iterator seconds."""
    from hpsearch.trainer import Trainer

    data, _ = job.load_data()
    trainer = Trainer(data, job.model, job.trial_params(), seed=0, augment=job.augment, workers=workers)
    feed, clock = trainer.feed, {}
    evaluate, epoch = feed.evaluate, feed.epoch

    def timed_evaluate(*args, **kwargs):
        started = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            clock["val"] += time.perf_counter() - started

    def timed_epoch(*args, **kwargs):
        batches, steps = epoch(*args, **kwargs)
        return timed_iterator(batches, clock), steps

    feed.evaluate = timed_evaluate
    patch = job.dataset.dims is not None
    if patch:
        feed.epoch = timed_epoch
    out = {"epochs": [], "samples": int(job.dataset.samples_per_epoch) if patch else len(data.train_x),
           "model": trainer.model_name, "parameters": trainer.model.count_params()}
    try:
        for _ in range(epochs):
            clock.update(val=0.0, data=0.0)
            result = trainer.train_epoch()
            out["epochs"].append({"train": result.seconds - clock["val"], "val": clock["val"],
                                  "data": clock["data"] if patch else None})
        if patch:  # the same fit on batches already in memory: no data cost at all
            batches, steps = epoch(trainer.epoch, trainer.train_params.batch_size)
            ready, times = list(batches), []
            for _ in range(2):  # the faster of two: less noise from other work on a shared machine
                started = time.perf_counter()
                trainer.model.fit((b for b in ready), steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
                times.append(time.perf_counter() - started)
            out["ready_fit"] = min(times)
    finally:
        trainer.close()
    out["trainer"], out["data"] = trainer, data
    return out


def summarise(mode: str, workers, run: dict, samples: int) -> dict:
    first, steady = run["epochs"][0], run["epochs"][1:]
    # The median of the steady epochs: one epoch slowed by other work on a shared machine does not count.
    mean = {k: float(np.median([e[k] for e in steady])) if steady[0][k] is not None else None for k in first}
    scale = samples / run["samples"]
    return {"mode": mode, "workers": workers, "model": run["model"], "parameters": run["parameters"],
            "samples_per_epoch": run["samples"], "train_s": mean["train"], "val_s": mean["val"],
            f"train_s_per_{samples}": mean["train"] * scale, "first_epoch_extra_s":
            first["train"] + first["val"] - mean["train"] - mean["val"],
            "in_iterator_s": mean["data"], "ready_fit_s": run.get("ready_fit")}


def big_case(shape, channels: int) -> np.ndarray:
    """A scan ``(X, Y, Z, C)``: a bright ellipsoid in noise, zero outside a 'head'."""
    rng = np.random.default_rng(0)
    grid = np.indices(shape, np.float32)
    r = sum(((g - n / 2) / (0.4 * n)) ** 2 for g, n in zip(grid, shape))
    image = np.stack([(r < 1) * (100 + 50 * (r < 0.2) + rng.normal(0, 10, shape)) for _ in range(channels)], -1)
    return image.astype(np.float32)


@contextlib.contextmanager
def timed_parts(clock: dict):
    """Sum the seconds of segment_scan's three parts into ``clock`` while inside."""
    from hpsearch import segment
    from hpsearch.data import physical

    parts = [(physical, "preprocess_case", "preprocess_s"), (segment, "predict_case", "windows_s"),
             (physical, "to_original_geometry", "to_original_s")]
    originals = [getattr(module, name) for module, name, _ in parts]

    def timed(function, key):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                clock[key] = clock.get(key, 0.0) + time.perf_counter() - started
        return call

    for (module, name, key), function in zip(parts, originals):
        setattr(module, name, timed(function, key))
    try:
        yield
    finally:
        for (module, name, _), function in zip(parts, originals):
            setattr(module, name, function)


def inference_rows(mode: str, run: dict, scans: dict) -> list[dict]:
    """segment_scan per scan, with and without mirroring, split into its parts."""
    from hpsearch.segment import keras_logits, segment_scan

    info = run["data"].info
    model_logits, windows = keras_logits(run["trainer"].model), [0]

    def counted(batch):
        windows[0] += len(batch)
        return model_logits(batch)

    rows = []
    segment_scan(*next(iter(scans.values())), counted, info, batch_size=PREDICT_BATCH)  # warm-up
    for name, (image, spacing) in scans.items():
        for mirror in (False, True):
            clock, windows[0] = {}, 0
            started = time.perf_counter()
            with timed_parts(clock):
                segment_scan(image, spacing, counted, info, batch_size=PREDICT_BATCH, mirror=mirror)
            rows.append({"mode": mode, "scan": name, "shape": list(image.shape), "spacing": list(spacing),
                         "mirror": mirror, "network_windows": windows[0],
                         "total_s": time.perf_counter() - started, **clock})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, seconds not minutes")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    size = SMOKE if args.smoke_test else FULL
    work = Path(tempfile.mkdtemp(prefix="hpsearch-patch-bench-"))
    os.environ["HPSEARCH_CACHE_DIR"] = str(work / "cache")  # private: no other run's entries
    try:
        import nibabel as nib

        from hpsearch.data import synthesize
        from hpsearch.runtime import configure_tensorflow

        synthesize("brats", work / "brats", cases=size["cases"], shape=size["shape"])
        job_list = jobs(size, work / "brats")
        configure_tensorflow(job_list[0][1].runtime)
        raw = nib.load(sorted((work / "brats" / "imagesTr").glob("*.nii*"))[0])
        scans = {"synthetic case": (np.asarray(raw.dataobj, np.float32), tuple(map(float, raw.header.get_zooms()[:3]))),
                 "large scan": (big_case(size["big"], raw.shape[3]), BIG_SPACING)}
        epochs_rows, infer_rows = [], []
        for mode, job in job_list:
            for workers in ([None] if job.dataset.dims is None else [0, 1]):
                started = time.perf_counter()
                run = train_run(job, workers or 0, size["epochs"])
                epochs_rows.append(summarise(mode, workers, run, size["samples"]))
                print(f"{mode}, workers {workers}: {run['samples']} samples/epoch, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
            if job.dataset.dims is not None:
                infer_rows += inference_rows(mode, run, scans)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(epochs_rows, infer_rows, size, args)


def report(epochs_rows: list[dict], infer_rows: list[dict], size: dict, args) -> None:
    samples = size["samples"]
    print(f"\nU-Net depth {size['depth']}, base_filters {size['base_filters']}, batch {size['batch']}; "
          f"slice {size['image_size']}, 2D patch {size['patch2d']}, 3D patch {size['patch3d']}; "
          f"steady = median of epochs 2..{size['epochs']}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"{'mode':9} {'workers':>7} {'params':>7} {'samples':>7} {'train s':>8} {f'per {samples}':>7} "
          f"{'val s':>6} {'1st +s':>6} {'in iter s':>9} {'ready fit s':>11}")
    for r in epochs_rows:
        cell = (lambda v, w: f"{v:{w}.2f}" if v is not None else f"{'-':>{w}}")
        print(f"{r['mode']:9} {'-' if r['workers'] is None else r['workers']:>7} {r['parameters']:7,} "
              f"{r['samples_per_epoch']:7} {r['train_s']:8.2f} {r[f'train_s_per_{samples}']:7.2f} "
              f"{r['val_s']:6.2f} {r['first_epoch_extra_s']:6.2f} {cell(r['in_iterator_s'], 9)} "
              f"{cell(r['ready_fit_s'], 11)}")
    print(f"\n{'model':9} {'scan':15} {'mirror':6} {'windows':>7} {'total s':>7} {'preprocess s':>12} "
          f"{'windows s':>9} {'to original s':>13}")
    for r in infer_rows:
        print(f"{r['mode']:9} {r['scan']:15} {'yes' if r['mirror'] else 'no':6} {r['network_windows']:7} "
              f"{r['total_s']:7.2f} {r['preprocess_s']:12.2f} {r['windows_s']:9.2f} {r['to_original_s']:13.2f}")
    if args.json:
        args.json.write_text(json.dumps({"settings": size, "epochs": epochs_rows, "inference": infer_rows,
                                         "cores": os.cpu_count(), "load": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
