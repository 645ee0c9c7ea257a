"""PatchLoader: batch shapes, identical batches in-process and in spawned workers, workers stopped."""

from __future__ import annotations

import functools
import math

import numpy as np
import psutil
import pytest

from hpsearch.data.augment import AugmentConfig
from hpsearch.data.loader import LoaderError, PatchLoader
from hpsearch.data.volume_data import VolumeData, load_volume_data, save_volume_data


def _cases(rng, shapes):
    images, labels, foreground = [], [], []
    for shape in shapes:
        grid = np.indices(shape)
        r = sum(((g - n / 2) / (0.3 * n)) ** 2 for g, n in zip(grid, shape))
        label = np.where(r < 1, 1, 0).astype(np.uint8)
        label[r < 0.3] = 2
        image = np.stack([label + rng.normal(0, 0.2, shape), rng.normal(0, 1, shape)]).astype(np.float32)
        voxels = np.argwhere(label > 0)
        images.append(image)
        labels.append(label)
        foreground.append(np.c_[label[tuple(voxels.T)], voxels].astype(np.int32))
    return images, labels, foreground


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    """A saved cache entry: 3 two-channel training cases of odd shapes, one smaller than the 3D patch."""
    images, labels, foreground = _cases(np.random.default_rng(0), [(30, 27, 19), (24, 33, 21), (10, 12, 9)])
    data = VolumeData(images, labels, foreground, images[:1], labels[:1], {"label_values": [0, 1, 2]})
    folder = tmp_path_factory.mktemp("volumes") / "entry"
    save_volume_data(data, folder)
    return folder


def _children() -> set[int]:
    """Child pids of this process, without multiprocessing's resource tracker (one per process, by design)."""
    return {p.pid for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())}


def _batches(entry, workers, epochs=(0, 1), **settings):
    options = dict(dims=3, patch_size=(12, 16, 10), slice_axis=2, batch_size=3, samples_per_epoch=7,
                   foreground_fraction=0.33, augment=AugmentConfig(), seed=5)
    with PatchLoader(functools.partial(load_volume_data, entry), **{**options, **settings},
                     workers=workers) as loader:
        return [batch for epoch in epochs for batch in loader.epoch(epoch)]


@pytest.mark.parametrize("settings", [
    dict(dims=3, patch_size=(12, 16, 10)),
    dict(dims=2, patch_size=(20, 14), slice_axis=1),
])
def test_workers_give_the_same_batches_as_in_process(entry, settings):
    before = _children()
    in_process = _batches(entry, 0, **settings)
    workers = _batches(entry, 2, **settings)
    assert len(in_process) == len(workers) == 2 * math.ceil(7 / 3)
    for (x0, y0), (x2, y2) in zip(in_process, workers):
        assert x0.tobytes() == x2.tobytes() and y0.tobytes() == y2.tobytes()
    x, y = in_process[0]
    assert x.shape == (3, *settings["patch_size"], 2) and x.dtype == np.float32
    assert y.shape == (3, *settings["patch_size"]) and y.dtype == np.uint8
    assert in_process[0][0].tobytes() != in_process[3][0].tobytes()  # epochs differ
    assert _children() == before


def test_seed_changes_the_batches(entry):
    a = _batches(entry, 0, epochs=(0,))
    b = _batches(entry, 0, epochs=(0,), seed=6)
    assert a[0][0].tobytes() != b[0][0].tobytes()


def test_an_abandoned_epoch_and_a_skipped_one_still_give_the_pure_batches(entry):
    expected = {(e, k): batch for e in (0, 3) for k, batch in enumerate(_batches(entry, 0, epochs=(e,)))}
    before = _children()
    options = dict(dims=3, patch_size=(12, 16, 10), batch_size=3, samples_per_epoch=7, augment=AugmentConfig(),
                   seed=5)
    with PatchLoader(functools.partial(load_volume_data, entry), workers=2, prefetch=4, **options) as loader:
        first = next(iter(loader.epoch(0)))  # the trainer stops mid-epoch (e.g. an error, or ASHA)
        rest = list(loader.epoch(3))  # requests made ahead for epoch 0 are stale now
        again = list(loader.epoch(0))
        pids = loader.worker_pids
    assert first[0].tobytes() == expected[0, 0][0].tobytes()
    assert [x.tobytes() for x, _ in rest] == [expected[3, k][0].tobytes() for k in range(3)]
    assert [y.tobytes() for _, y in again] == [expected[0, k][1].tobytes() for k in range(3)]
    assert len(pids) == 2 and not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                                      for pid in pids)
    assert _children() == before


def test_a_worker_error_surfaces_once_and_stops_every_worker(tmp_path):
    before = _children()
    loader = PatchLoader(functools.partial(load_volume_data, tmp_path / "missing"), dims=2, patch_size=(8, 8),
                         batch_size=2, samples_per_epoch=4, workers=2)
    with pytest.raises(LoaderError, match=r"(?s)patch loader worker \d+ failed:.*FileNotFoundError"):
        with loader:
            list(loader.epoch(0))
    assert _children() == before
    with pytest.raises(LoaderError, match="closed"):
        list(loader.epoch(1))


def test_an_unpicklable_opener_fails_at_once_and_leaves_no_worker(entry):
    before = _children()
    with pytest.raises(Exception, match="pickle"):
        PatchLoader(lambda: load_volume_data(entry), dims=2, patch_size=(8, 8), batch_size=2, samples_per_epoch=4,
                    workers=2)
    assert _children() == before


def test_closing_an_unused_loader_stops_its_workers(entry):
    before = _children()
    loader = PatchLoader(functools.partial(load_volume_data, entry), dims=2, patch_size=(8, 8), batch_size=2,
                         samples_per_epoch=4, workers=2)
    assert len(_children() - before) == 2
    loader.close()
    loader.close()
    assert _children() == before


def test_in_process_loader_takes_the_data_itself_and_refuses_to_pickle_it_to_workers(entry):
    data = load_volume_data(entry)
    options = dict(dims=3, patch_size=(12, 16, 10), batch_size=3, samples_per_epoch=7, seed=5)
    x, _ = next(iter(PatchLoader(data, workers=0, **options).epoch(0)))
    assert x.tobytes() == _batches(entry, 0, epochs=(0,))[0][0].tobytes()
    with pytest.raises(ValueError, match="picklable callable"):
        PatchLoader(data, workers=1, **options)


@pytest.mark.parametrize("bad, message", [
    (dict(dims=4), "dims must be 2 or 3"),
    (dict(patch_size=(8, 8, 8)), "patch_size must be 2 positive sizes"),
    (dict(foreground_fraction=1.5), "foreground_fraction"),
    (dict(batch_size=0), "batch_size"),
    (dict(samples_per_epoch=0), "samples_per_epoch"),
])
def test_bad_settings_are_refused(entry, bad, message):
    options = dict(dims=2, patch_size=(8, 8), batch_size=2, samples_per_epoch=4, workers=0)
    with pytest.raises(ValueError, match=message):
        PatchLoader(functools.partial(load_volume_data, entry), **{**options, **bad})
