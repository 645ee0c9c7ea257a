"""On-disk cache of preprocessed arrays, safe for concurrent readers.

Decoding NIfTI and resampling is the slow part of starting a trial; a search starts
many. The cache entry is keyed by a digest of the dataset's *content* (dataset.json
and every file a case uses) and of the preprocessing settings, so editing a label
file or changing ``image_size`` makes a new entry while renaming the folder does not.

Concurrency: the first process to miss takes a file lock and writes the entry into a
temporary folder, then renames it into place (atomic on one filesystem). Others wait
on the lock and then read the finished entry; readers without the lock only ever see
complete entries. Arrays are ``.npy`` files opened memory-mapped, so several trials on
one node share the page cache instead of each holding a copy.

Integrity: a cache outlives crashes, full disks and careless hands, and a damaged
array would be trained on silently (same size) or end in a numpy traceback
(truncated). So each entry records the size and SHA-256 of every file it holds when
it is written, and every open checks them before memory-mapping; an entry that fails
is set aside and rebuilt, with one warning line. Hashing reads each file once through
the page cache the memory maps then share (a few milliseconds for the demo's arrays).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock

from hpsearch.data.config import PreprocessConfig
from hpsearch.data.guard import refuse_inside
from hpsearch.data.layouts import DatasetIndex
from hpsearch.data.preprocess import PreparedData, prepare
from hpsearch.data.volumes import refuse_defects

# Bump when preprocessing code changes what it produces for the same settings, or
# what an entry holds (3: checksums.json).
PREPROCESS_VERSION = 3

CHECKSUMS_FILE = "checksums.json"
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
        memo[key] = _sha256(path)
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


def cache_key(digest: str, config: PreprocessConfig) -> str:
    settings = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    key = hashlib.sha256(f"{PREPROCESS_VERSION}|{digest}|{settings}".encode()).hexdigest()
    return key[:24]


def _entry_files() -> list[str]:
    return [*(f"{name}.npy" for name in PreparedData.ARRAYS), INFO_FILE]


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def save_prepared(data: PreparedData, directory: Path) -> None:
    """Write arrays, info and their checksums into a new folder (the caller renames it into place)."""
    directory.mkdir(parents=True)
    for name in PreparedData.ARRAYS:
        np.save(directory / f"{name}.npy", getattr(data, name))
    (directory / INFO_FILE).write_text(json.dumps(data.info, indent=2))
    sums = {
        name: {"bytes": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
        for name in _entry_files()
    }
    (directory / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2))


def entry_problem(directory: Path) -> str | None:
    """Why a cache entry must not be used (a file missing, truncated or changed), or None."""
    try:
        sums = json.loads((directory / CHECKSUMS_FILE).read_text())
    except (OSError, ValueError):
        return f"{CHECKSUMS_FILE} is missing or unreadable"
    for name in _entry_files():
        want, path = sums.get(name) if isinstance(sums, dict) else None, directory / name
        if not isinstance(want, dict):
            return f"{CHECKSUMS_FILE} has no checksum of {name}"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want.get("bytes"):
            return f"{name} has {size} bytes, {want.get('bytes')} were written (truncated or overwritten)"
        if _sha256(path) != want.get("sha256"):
            return f"{name} differs from the checksum recorded when it was written (damaged on disk)"
    return None


def load_prepared(directory: Path, *, mmap: bool = True) -> PreparedData:
    """Open a cache entry; arrays are memory-mapped read-only unless ``mmap=False``.

    Trusts the files: :func:`prepare_cached` checks them with :func:`entry_problem` first.
    """
    mode = "r" if mmap else None
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode=mode) for name in PreparedData.ARRAYS}
    return PreparedData(**arrays, info=json.loads((directory / INFO_FILE).read_text()))


def prepare_cached(
    index: DatasetIndex, config: PreprocessConfig, cache_dir: Path | None = None
) -> tuple[PreparedData, bool]:
    """Preprocessed data from the cache, computing and storing it on a miss.

    A damaged entry (see :func:`entry_problem`) is rebuilt, with one warning line on stderr.

    Returns:
        The data and whether it came from the cache.

    Raises:
        HpsearchError: A defect of the dataset's declaration (before anything is read or
            hashed), a cache folder inside the dataset folder, or an unreadable case.
    """
    refuse_defects(index, index.defects)
    cache_dir = Path(cache_dir or default_cache_dir())
    refuse_inside(cache_dir, index.root, "dataset.cache_dir")
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = digest_of_files(cached_file_digests(index, cache_dir))
    # Named by content alone: the same data in another folder shares the entry.
    entry = cache_dir / f"prepared-{cache_key(digest, config)}"
    hit = entry.is_dir() and entry_problem(entry) is None
    if not hit:
        with FileLock(str(entry) + ".lock"):
            # Another process may have built (or rebuilt) it while we waited.
            problem = entry_problem(entry) if entry.is_dir() else None
            hit = entry.is_dir() and problem is None
            if problem:
                print(f"warning: cache entry {entry}: {problem}; rebuilding it", file=sys.stderr, flush=True)
                _discard(entry)
            if not hit:
                _build(index, config, digest, entry)
    data = load_prepared(entry)
    data.info["dataset"] = str(index.root)
    return data, hit


def _discard(entry: Path) -> None:
    # Renamed away first: processes still reading it keep their open files (POSIX), and
    # no one sees a half-deleted entry.
    aside = entry.with_name(f".{entry.name}.damaged-{secrets.token_hex(4)}")
    os.rename(entry, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _build(index: DatasetIndex, config: PreprocessConfig, digest: str, entry: Path) -> None:
    data = prepare(index, config, digest=digest)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        save_prepared(data, staging / "entry")
        os.rename(staging / "entry", entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
