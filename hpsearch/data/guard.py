"""Where hpsearch may read and write, judged on real paths (symlinks followed).

A dataset folder is read-only to hpsearch, and a dataset reads only what is inside
its folder. Both questions are answered here on ``os.path.realpath``, which follows
every symlink that exists and, unlike ``Path.resolve`` on Python 3.11, does not raise
on a symlink loop; the part of a path that does not exist yet is taken as written.

Example:
    >>> is_inside("/data/lv/imagesTr/../out", "/data/lv")
    True
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from hpsearch.errors import HpsearchError


def real_path(path: str | Path) -> Path:
    """``path`` absolute, with every existing symlink and ``..`` resolved; never raises."""
    return Path(os.path.realpath(path))


def is_inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` is ``root`` or below it once symlinks are followed."""
    return real_path(path).is_relative_to(real_path(root))


def refuse_inside(path: str | Path, dataset_root: str | Path, what: str) -> None:
    """Raise unless ``path`` (an output about to be written) is outside the dataset folder.

    Args:
        path: Where something would be written.
        dataset_root: The dataset folder, which hpsearch never writes into.
        what: What ``path`` is, as the user named it (``--out``, ``storage.path``, ...).

    Raises:
        HpsearchError: ``path`` is the dataset folder or inside it (symlinks followed).
    """
    if is_inside(path, dataset_root):
        raise HpsearchError(
            f"{what} {path}: inside the dataset folder {dataset_root}; hpsearch never writes there, "
            "choose another folder"
        )


# What :func:`not_a` says of a plain missing path; callers put it in their own words.
MISSING = "missing"


def not_a(path: str | Path, kind: str) -> str | None:
    """Why ``path`` is not an existing ``kind`` (``"file"`` or ``"folder"``), or None if it is.

    A wrong kind, a symlink loop and a dangling symlink each get their own words, since
    "not found" sends the user looking for something that is there; a path that simply
    does not exist gives :data:`MISSING`.
    """
    path = Path(path)
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (a link that leads back to itself); point it at the real file or folder"
        if path.is_symlink():
            return f"is a symlink to {os.readlink(path)}, which does not exist"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return MISSING
        return f"cannot be read ({exc.strerror})"
    if kind == "folder" and not is_dir:
        return "is a file, not a folder"
    if kind == "file" and is_dir:
        return "is a folder, not a file"
    return None
