"""hpsearch never writes into a dataset folder (temporary; replaced by the data-defects branch)."""

from __future__ import annotations

from pathlib import Path

from hpsearch.errors import HpsearchError


def refuse_inside(path: Path, dataset_root: Path, what: str) -> None:
    resolved, root = Path(path).expanduser().resolve(), Path(dataset_root).expanduser().resolve()
    if resolved == root or resolved.is_relative_to(root):
        raise HpsearchError(f"{what} {path}: inside the dataset folder {root}; hpsearch never writes there, "
                            "choose another folder")
