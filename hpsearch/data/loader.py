"""Augmented training batches of patches, made in background processes while the model trains.

:class:`PatchLoader` yields ``ceil(samples_per_epoch / batch_size)`` batches per epoch,
``x (B, *patch, C)`` float32 channels-last (Keras) and ``y (B, *patch)`` uint8 class
indices. Batch ``k`` of epoch ``e`` is a pure function of ``(seed, e, k)``: cases,
patch locations and augmentation are drawn from seeds derived from those three numbers
(:class:`BatchMaker`), so ``workers=0`` (in-process) and ``workers=N`` give identical bytes
and a trial is reproducible whatever machine runs it.

Workers are ``spawn``-ed processes, not forked: the parent has TensorFlow loaded, and a
fork of a multi-threaded process may deadlock. Each worker opens the memory-mapped cache
entry itself (``open_data`` is a picklable zero-argument callable such as
``functools.partial(load_volume_data, entry_dir)``), so the dataset is shared through the
page cache, never copied per process. The parent keeps ``prefetch`` batches requested
ahead, and keeps requesting into the next epoch, so workers fill the queue while the
trainer validates. Each worker talks to the parent over its own pipe (no queue feeder
threads); a worker error is re-raised in the parent as one :class:`LoaderError`, after
every worker has been stopped by pid.

Example:
    >>> from functools import partial
    >>> from hpsearch.data.volume_data import load_volume_data
    >>> loader = PatchLoader(partial(load_volume_data, entry), dims=2, patch_size=(64, 64), slice_axis=2,
    ...                      batch_size=8, samples_per_epoch=256, foreground_fraction=0.33,
    ...                      augment=AugmentConfig(), seed=0, workers=2)  # doctest: +SKIP
    >>> with loader:                                                       # doctest: +SKIP
    ...     for epoch in range(10):
    ...         model.fit(loader.epoch(epoch), steps_per_epoch=loader.batches_per_epoch, ...)
"""

from __future__ import annotations

import collections
import dataclasses
import math
import multiprocessing
import signal
import traceback
import weakref
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait

import numpy as np

from hpsearch.data.augment import AugmentConfig, augment_batch, build_transforms, sample_size
from hpsearch.data.patches import sample_batch
from hpsearch.data.volume_data import VolumeData

Batch = tuple[np.ndarray, np.ndarray]


class LoaderError(RuntimeError):
    """A loader worker failed or died; the message carries its traceback."""


@dataclasses.dataclass(frozen=True)
class PatchSettings:
    """Everything that decides a batch besides the data (sent to each worker)."""

    dims: int
    patch_size: tuple[int, ...]
    slice_axis: int
    batch_size: int
    foreground_fraction: float
    augment: AugmentConfig
    seed: int

    def __post_init__(self):
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, not {self.dims}")
        if len(self.patch_size) != self.dims or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be {self.dims} positive sizes for dims {self.dims}, "
                             f"not {self.patch_size}")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, not {self.slice_axis}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if not 0 <= self.foreground_fraction <= 1:
            raise ValueError(f"foreground_fraction must be from 0 to 1, not {self.foreground_fraction}")


class BatchMaker:
    """Builds batch ``(epoch, index)`` from the training cases of a :class:`VolumeData`."""

    def __init__(self, data: VolumeData, settings: PatchSettings):
        if not data.train_images:
            raise ValueError("the dataset has no training cases to cut patches from")
        for image, label in zip(data.train_images, data.train_labels):
            if image.ndim != 4 or image.shape[1:] != label.shape:
                raise ValueError(f"a training case has image {image.shape} and label {label.shape}: "
                                 "expected (C, X, Y, Z) and (X, Y, Z)")
        self.cases = list(zip(data.train_images, data.train_labels, data.train_foreground))
        self.settings = settings
        self.box_size = sample_size(settings.augment, settings.patch_size)
        self.transforms = build_transforms(settings.augment, settings.patch_size)

    def make(self, epoch: int, index: int) -> Batch:
        """``x (B, *patch, C)`` float32 and ``y (B, *patch)`` uint8: a pure function of ``(seed, epoch, index)``."""
        s = self.settings
        sampling, augmenting = np.random.SeedSequence([s.seed % 2**64, epoch, index]).spawn(2)
        images, labels = sample_batch(
            self.cases, batch_size=s.batch_size, batch_index=index, foreground_fraction=s.foreground_fraction,
            patch_size=s.patch_size, box_size=self.box_size, slice_axis=s.slice_axis,
            rng=np.random.default_rng(sampling))
        x, y = augment_batch(self.transforms, images, labels, seed=int(augmenting.generate_state(1)[0]))
        return np.ascontiguousarray(np.moveaxis(x, 1, -1)), y


def _open(open_data: VolumeData | Callable[[], VolumeData]) -> VolumeData:
    return open_data if isinstance(open_data, VolumeData) else open_data()


def _worker_main(open_data: Callable[[], VolumeData], settings: PatchSettings, conn) -> None:
    """A worker: answer ``(epoch, index)`` requests with batches until ``None`` or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    try:
        try:
            maker = BatchMaker(_open(open_data), settings)
        except BaseException:
            conn.send(("error", None, traceback.format_exc()))
            return
        while (task := conn.recv()) is not None:
            try:
                batch = maker.make(*task)
            except BaseException:
                conn.send(("error", task, traceback.format_exc()))
                return
            conn.send(("ok", task, batch))
    except (EOFError, OSError):  # the pipe: the parent closed its end or died, nobody to report to
        return


def _stop(processes: list, conns: list) -> None:
    """Ask each worker to stop, then terminate and kill by pid whatever is still alive.

    Closing our pipe ends right after the request wakes a worker blocked sending a batch
    nobody will read (``BrokenPipeError``); the request itself stays readable for one idle.
    """
    for conn in conns:
        try:
            conn.send(None)
        except OSError:
            pass
        conn.close()
    for proc in processes:
        proc.join(timeout=3)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=3)
        if proc.is_alive():
            proc.kill()
            proc.join()
    processes.clear()
    conns.clear()


class PatchLoader:
    """Training batches of augmented patches (see the module docstring).

    Args:
        open_data: Zero-argument picklable callable returning the :class:`VolumeData`
            (opened memory-mapped in each worker); a :class:`VolumeData` itself is accepted
            for ``workers=0``.
        dims: 2 (slices along ``slice_axis``) or 3.
        patch_size: ``(h, w)`` or ``(d, h, w)``.
        slice_axis: 2D only: the axis slices are taken along.
        batch_size: Samples per batch.
        samples_per_epoch: An epoch is ``ceil(samples_per_epoch / batch_size)`` full batches.
        foreground_fraction: Fraction of samples centred on a foreground voxel
            (:func:`hpsearch.data.patches.forced_foreground`).
        augment: Augmentation of every batch (:meth:`AugmentConfig.none` for none).
        seed: Base of every batch's seed.
        workers: Background processes; 0 builds batches in the calling thread.
        prefetch: Batches requested ahead (default ``2 * workers + 1``).
    """

    def __init__(
        self,
        open_data: VolumeData | Callable[[], VolumeData],
        *,
        dims: int,
        patch_size: tuple[int, ...],
        slice_axis: int = 2,
        batch_size: int,
        samples_per_epoch: int,
        foreground_fraction: float = 0.33,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        workers: int = 1,
        prefetch: int | None = None,
    ):
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be at least 1, not {samples_per_epoch}")
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, not {workers}")
        if workers and isinstance(open_data, VolumeData):
            raise ValueError("workers open the data themselves: pass a picklable callable such as "
                             "functools.partial(load_volume_data, entry_dir), not a VolumeData")
        self.settings = PatchSettings(dims, tuple(int(p) for p in patch_size), slice_axis, batch_size,
                                      foreground_fraction, augment or AugmentConfig(), seed)
        self.batches_per_epoch = math.ceil(samples_per_epoch / batch_size)
        self.prefetch = max(1, prefetch if prefetch is not None else 2 * workers + 1)
        self._maker = BatchMaker(_open(open_data), self.settings) if workers == 0 else None
        self._processes: list = []
        self._conns: list = []
        self._closed = False
        # Request bookkeeping: `_wanted` holds the keys to yield next, in order; `_ready` the
        # batches that arrived for them; `_busy[i]` the requests worker i has not answered
        # (stale ones included: they count against `prefetch` until they arrive and are dropped).
        self._wanted: collections.deque = collections.deque()
        self._ready: dict[tuple[int, int], Batch] = {}
        self._next: tuple[int, int] | None = None
        self._busy = [0] * workers
        # Stops the workers even if close() is never called (the lists are shared, not copies).
        self._finalizer = weakref.finalize(self, _stop, self._processes, self._conns)
        context = multiprocessing.get_context("spawn")
        try:
            for _ in range(workers):
                parent_end, child_end = context.Pipe()
                proc = context.Process(target=_worker_main, args=(open_data, self.settings, child_end),
                                       daemon=True, name="hpsearch-patch-loader")
                self._conns.append(parent_end)
                proc.start()  # pickles open_data: a lambda or local function fails here
                child_end.close()
                self._processes.append(proc)
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> list[int]:
        return [proc.pid for proc in self._processes]

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch``, in order: ``x (B, *patch, C)`` float32, ``y (B, *patch)`` uint8."""
        if self._closed:
            raise LoaderError("the patch loader is closed")
        if self._maker is not None:
            for index in range(self.batches_per_epoch):
                yield self._maker.make(epoch, index)
            return
        if (self._wanted[0] if self._wanted else self._next) != (epoch, 0):
            # Not the continuation of what was requested ahead: forget it, start at this epoch.
            self._wanted.clear()
            self._ready.clear()
            self._next = (epoch, 0)
        for index in range(self.batches_per_epoch):
            key = (epoch, index)
            while key not in self._ready:
                self._request()
                self._receive()
            self._wanted.popleft()
            batch = self._ready.pop(key)
            self._request()  # keep the workers busy while the caller trains on this batch
            yield batch

    def _request(self) -> None:
        while sum(self._busy) + len(self._ready) < self.prefetch:
            key = self._next
            worker = self._busy.index(min(self._busy))
            try:
                self._conns[worker].send(key)
            except OSError:
                self._fail(f"patch loader worker {self._processes[worker].pid} is gone "
                           f"(exit code {self._processes[worker].exitcode})")
            self._busy[worker] += 1
            self._wanted.append(key)
            epoch, index = key
            self._next = (epoch, index + 1) if index + 1 < self.batches_per_epoch else (epoch + 1, 0)

    def _receive(self) -> None:
        """Wait for one message from any worker; store it if still wanted; raise if a worker failed."""
        sentinels = {proc.sentinel: proc for proc in self._processes}
        while True:
            ready = wait([*self._conns, *sentinels])
            for conn in (c for c in ready if c in self._conns):
                worker = self._conns.index(conn)
                try:
                    status, key, payload = conn.recv()
                except (EOFError, OSError):
                    continue  # died without a word: reported through its sentinel
                if status == "error":
                    self._fail(f"patch loader worker {self._processes[worker].pid} failed:\n{payload}")
                self._busy[worker] -= 1
                if key in self._wanted and key not in self._ready:
                    self._ready[key] = payload
                return
            dead = [sentinels[s] for s in ready if s in sentinels]
            if dead:
                self._fail(f"patch loader worker {dead[0].pid} died (exit code {dead[0].exitcode}) "
                           "without reporting an error")

    def _fail(self, message: str) -> None:
        self.close()
        raise LoaderError(message)

    def close(self) -> None:
        """Stop every worker (by pid; killed if it does not stop within seconds). Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> PatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
