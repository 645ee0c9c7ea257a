"""Cache entries on disk: atomic build under a lock, checksums, damaged-entry rebuild.

Shared by both kinds of entry in :mod:`hpsearch.data.cache` (slice mode's
``prepared-*`` and patch mode's ``volumes-*``); what an entry holds is up to its kind,
which gives a function that writes it and one that names the files it must hold.

Concurrency: the first process to miss takes a file lock and writes the entry into a
temporary folder, then renames it into place (atomic on one filesystem). Others wait
on the lock and then read the finished entry; readers without the lock only ever see
complete entries.

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
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

CHECKSUMS_FILE = "checksums.json"


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_checksums(directory: Path, names: list[str]) -> None:
    """Record the size and SHA-256 of each of ``names`` in ``checksums.json``."""
    sums = {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256(directory / name)} for name in names}
    (directory / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2))


def entry_problem(directory: Path, expected: Callable[[Path], list[str]]) -> str | None:
    """Why a cache entry must not be used (a file missing, truncated or changed), or None.

    Args:
        directory: The entry.
        expected: The files the entry must hold (may read the entry's own ``info.json``:
            a damaged one is caught by its checksum, which is checked too).
    """
    try:
        sums = json.loads((directory / CHECKSUMS_FILE).read_text())
    except (OSError, ValueError):
        return f"{CHECKSUMS_FILE} is missing or unreadable"
    try:
        names = expected(directory)
    except (OSError, ValueError) as exc:
        return f"its file list is unreadable ({type(exc).__name__}: {exc})"
    for name in names:
        want, path = sums.get(name) if isinstance(sums, dict) else None, directory / name
        if not isinstance(want, dict):
            return f"{CHECKSUMS_FILE} has no checksum of {name}"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want.get("bytes"):
            return f"{name} has {size} bytes, {want.get('bytes')} were written (truncated or overwritten)"
        if sha256(path) != want.get("sha256"):
            return f"{name} differs from the checksum recorded when it was written (damaged on disk)"
    return None


def ensure_entry(
    entry: Path,
    build: Callable[[Path], list[str]],
    expected: Callable[[Path], list[str]],
) -> bool:
    """Make sure a sound entry exists at ``entry``, building it on a miss; return whether it was a hit.

    Args:
        entry: The entry's folder (its parent exists).
        build: Writes the entry into a folder that does not exist yet; returns the names
            of the files written (their checksums are recorded).
        expected: As for :func:`entry_problem`.
    """
    if entry.is_dir() and entry_problem(entry, expected) is None:
        return True
    with FileLock(str(entry) + ".lock"):
        # Another process may have built (or rebuilt) it while we waited.
        problem = entry_problem(entry, expected) if entry.is_dir() else None
        if entry.is_dir() and problem is None:
            return True
        if problem:
            print(f"warning: cache entry {entry}: {problem}; rebuilding it", file=sys.stderr, flush=True)
            _discard(entry)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            names = build(staging / "entry")
            write_checksums(staging / "entry", names)
            os.rename(staging / "entry", entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return False


def _discard(entry: Path) -> None:
    # Renamed away first: processes still reading it keep their open files (POSIX), and
    # no one sees a half-deleted entry.
    aside = entry.with_name(f".{entry.name}.damaged-{secrets.token_hex(4)}")
    os.rename(entry, aside)
    shutil.rmtree(aside, ignore_errors=True)
