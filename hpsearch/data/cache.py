"""On-disk cache of preprocessed arrays, safe for concurrent readers.

Decoding NIfTI and resampling is the slow part of starting a trial; a search starts
many. The cache entry is keyed by a digest of the dataset's *content* (dataset.json
and every file a case uses) and of the preprocessing settings, so editing a label
file or changing ``image_size`` makes a new entry while renaming the folder does not.

Two kinds of entry: slice mode's ``prepared-*`` (:class:`PreparedData`, keyed by
:class:`PreprocessConfig`) and patch mode's ``volumes-*`` (:class:`VolumeData`, keyed by
:class:`VolumeConfig`). Both are built atomically under a lock, carry SHA-256 checksums
checked on every open, are rebuilt when damaged (:mod:`hpsearch.data.entries`), and open
memory-mapped, so several trials on one node share the page cache instead of each
holding a copy. ``info["entry"]`` names the folder, so worker processes can reopen it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hpsearch.data.config import PreprocessConfig, VolumeConfig
from hpsearch.data.entries import ensure_entry, sha256
from hpsearch.data.entries import entry_problem as _entry_problem
from hpsearch.data.guard import refuse_inside
from hpsearch.data.layouts import DatasetIndex
from hpsearch.data.plan import Plan
from hpsearch.data.prepare_volumes import prepare_volumes
from hpsearch.data.preprocess import PreparedData, fold_cases, prepare
from hpsearch.data.splits import Fold
from hpsearch.data.volume_data import VolumeData, load_volume_data, volume_data_files
from hpsearch.data.volumes import refuse_defects

# Bump when preprocessing code changes what it produces for the same settings, or
# what an entry holds (3: checksums.json; 4: train_case.npy).
PREPROCESS_VERSION = 4

INFO_FILE = "info.json"


def default_cache_dir() -> Path:
    """``$HPSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpsearch``, else ``~/.cache/hpsearch``."""
    if os.environ.get("HPSEARCH_CACHE_DIR"):
        return Path(os.environ["HPSEARCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hpsearch"


def dataset_digest(index: DatasetIndex, memo: dict[str, str] | None = None) -> str:
    """SHA-256 over dataset.json and the bytes of every case file, in case order.

    Args:
        index: The dataset.
        memo: File digests by ``path|size|mtime``, read and extended here, so an
            unchanged multi-gigabyte dataset is not re-read on every run (the same
            trust in size and modification time that git and make place).
    """
    return digest_of_files(file_digests(index, memo))


def digest_of_files(files: dict[str, str]) -> str:
    """The dataset digest of :func:`file_digests`' result."""
    digest = hashlib.sha256()
    for name, file_hash in files.items():
        digest.update(name.encode())
        digest.update(file_hash.encode())
    return digest.hexdigest()


def file_digests(index: DatasetIndex, memo: dict[str, str] | None = None) -> dict[str, str]:
    """SHA-256 of dataset.json and of every case file, by name relative to the dataset
    folder, in case order ("" for a missing file): what :func:`dataset_digest` hashes, kept
    so that a changed dataset can be explained file by file."""
    memo = {} if memo is None else memo
    out: dict[str, str] = {}
    for path in [index.manifest, *(p for case in index.cases for p in (*case.images, case.label))]:
        # Relative names: the same data in another folder is the same entry.
        name = path.relative_to(index.root) if path.is_relative_to(index.root) else path
        out[str(name)] = _file_digest(path, memo) if path.is_file() else ""
    return out


def cached_file_digests(index: DatasetIndex, cache_dir: Path | None = None) -> dict[str, str]:
    """:func:`file_digests` through the cache's digest memo (only changed files are re-read)."""
    memo_path = Path(cache_dir or default_cache_dir()) / "file-digests.json"
    memo = _read_memo(memo_path)
    known = len(memo)
    out = file_digests(index, memo)
    if len(memo) != known and memo_path.parent.is_dir():
        _write_memo(memo_path, memo)
    return out


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Names whose content differs, was added or was removed between two :func:`file_digests`."""
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def _file_digest(path: Path, memo: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        memo[key] = sha256(path)
    return memo[key]


def _read_memo(path: Path) -> dict[str, str]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or garbled: only costs a re-hash
    return memo if isinstance(memo, dict) else {}


def _write_memo(path: Path, memo: dict[str, str]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(memo))
    os.replace(partial, path)


def cache_key(digest: str, config: PreprocessConfig | VolumeConfig, fold: Fold) -> str:
    settings = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    cases = json.dumps([fold.train, fold.val])  # the split, not just the seed that usually makes it
    key = hashlib.sha256(f"{PREPROCESS_VERSION}|{digest}|{settings}|{cases}".encode()).hexdigest()
    return key[:24]


def _entry_files(directory: Path | None = None) -> list[str]:
    return [*(f"{name}.npy" for name in PreparedData.ARRAYS), INFO_FILE]


def save_prepared(data: PreparedData, directory: Path) -> list[str]:
    """Write arrays and info into a new folder; return the names of the files written."""
    directory.mkdir(parents=True)
    for name in PreparedData.ARRAYS:
        np.save(directory / f"{name}.npy", getattr(data, name))
    (directory / INFO_FILE).write_text(json.dumps(data.info, indent=2))
    return _entry_files()


def entry_problem(directory: Path, expected: Callable[[Path], list[str]] = _entry_files) -> str | None:
    """Why a cache entry must not be used (a file missing, truncated or changed), or None.

    ``expected`` names the files the entry must hold: a slice entry's by default,
    :func:`~hpsearch.data.volume_data.volume_data_files` for a patch-mode entry.
    """
    return _entry_problem(directory, expected)


def load_prepared(directory: Path, *, mmap: bool = True) -> PreparedData:
    """Open a cache entry; arrays are memory-mapped read-only unless ``mmap=False``.

    Trusts the files: :func:`prepare_cached` checks them with :func:`entry_problem` first.
    """
    mode = "r" if mmap else None
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode=mode) for name in PreparedData.ARRAYS}
    return PreparedData(**arrays, info=json.loads((directory / INFO_FILE).read_text()))


def prepare_cached(
    index: DatasetIndex, config: PreprocessConfig, cache_dir: Path | None = None, fold: Fold | None = None
) -> tuple[PreparedData, bool]:
    """Slice mode's preprocessed data of one split (``fold``, see
    :func:`~hpsearch.data.preprocess.fold_cases`) from the cache, computing and storing it on a miss.

    A damaged entry (see :func:`entry_problem`) is rebuilt, with one warning line on stderr.

    Returns:
        The data and whether it came from the cache.

    Raises:
        HpsearchError: A defect of the dataset's declaration (before anything is read or
            hashed), a cache folder inside the dataset folder, or an unreadable case.
    """
    fold = fold_cases(index, config.val_fraction, config.split_seed, fold)
    entry, digest = _entry(index, config, cache_dir, "prepared", fold)
    hit = ensure_entry(entry, lambda folder: save_prepared(prepare(index, config, digest=digest, fold=fold), folder),
                       _entry_files)
    data = load_prepared(entry)
    data.info.update(dataset=str(index.root), entry=str(entry))
    return data, hit


def prepare_volumes_cached(
    index: DatasetIndex, config: VolumeConfig, plan: Plan | None = None, cache_dir: Path | None = None,
    fold: Fold | None = None,
) -> tuple[VolumeData, bool]:
    """Patch mode's preprocessed cases from the cache, computing and storing them on a miss.

    The entry is keyed by the dataset's content and ``config`` alone; ``plan`` (whose
    patch and batch size follow the caller's memory budget) is put into ``info["plan"]``
    on every open, not taken from whichever process built the entry.

    Returns:
        The data (arrays memory-mapped) and whether it came from the cache.

    Raises:
        HpsearchError: As :func:`prepare_cached`.
    """
    fold = fold_cases(index, config.val_fraction, config.split_seed, fold)
    entry, digest = _entry(index, config, cache_dir, "volumes", fold)

    def build(folder: Path) -> list[str]:
        prepare_volumes(index, config, digest=digest, plan=plan, directory=folder, fold=fold)
        return volume_data_files(folder)

    hit = ensure_entry(entry, build, volume_data_files)
    data = load_volume_data(entry)
    data.info.update(dataset=str(index.root), entry=str(entry))
    if plan is not None:
        data.info["plan"] = plan.to_dict()
    return data, hit


def _entry(
    index: DatasetIndex, config: PreprocessConfig | VolumeConfig, cache_dir: Path | None, kind: str, fold: Fold
) -> tuple[Path, str]:
    """The entry folder for ``config`` and ``fold`` on this dataset's content, and the content digest."""
    refuse_defects(index, index.defects)
    cache_dir = Path(cache_dir or default_cache_dir())
    refuse_inside(cache_dir, index.root, "dataset.cache_dir")
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = digest_of_files(cached_file_digests(index, cache_dir))
    # Named by content alone: the same data in another folder shares the entry.
    return cache_dir / f"{kind}-{cache_key(digest, config, fold)}", digest
