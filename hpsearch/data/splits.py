"""Which cases train, validate and test: patient-grouped folds and a locked test split.

INTERFACE (filled in by the splits work; the search codes against these names).

A :class:`Splits` is decided once per search from file *names* only (no voxel is read):

* ``test``: the locked test cases. The labelled ``imagesTs``/``labelsTs`` cases when the
  dataset has them (:attr:`DatasetIndex.test_cases`), else a seeded ``test_fraction`` of
  the training cases held out by patient group, else none.
* ``folds``: one :class:`Fold` per cross-validation fold over the remaining cases (the
  *pool*): ``dataset.splits`` (nnU-Net's ``splits_final.json``) when given, else
  ``folds: k`` patient-grouped folds, else one fold, today's ``val_fraction`` split.

Cases of one patient (``group_pattern``, ``groups_file``) are never on both sides of any
split, test included.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Fold:
    """Case ids that train and validate one fold (sorted)."""

    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Splits:
    """Attributes:
    folds: The pool's folds; one for a single train/validation split.
    test: Case ids of the locked test split (sorted; may be empty).
    test_source: ``"imagesTs"``, ``"test_fraction"`` or ``"none"``.
    """

    folds: tuple[Fold, ...]
    test: tuple[str, ...] = ()
    test_source: str = "none"

    @property
    def pool(self) -> tuple[str, ...]:
        """Every case the search may read (all folds' cases), sorted."""
        return tuple(sorted({c for f in self.folds for c in (*f.train, *f.val)}))

    def to_dict(self) -> dict[str, Any]:
        return {"folds": [{"train": list(f.train), "val": list(f.val)} for f in self.folds],
                "test": list(self.test), "test_source": self.test_source}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Splits:
        return cls(tuple(Fold(tuple(f["train"]), tuple(f["val"])) for f in raw["folds"]),
                   tuple(raw.get("test", ())), raw.get("test_source", "none"))


def make_splits(index, config) -> Splits:
    """The splits a job's ``dataset:`` section asks for (see the module docstring)."""
    raise NotImplementedError


def read_nnunet_splits(path: Path, case_ids) -> tuple[Fold, ...]:
    """nnU-Net's ``splits_final.json`` (``[{"train": [...], "val": [...]}, ...]``)."""
    raise NotImplementedError


def write_nnunet_splits(folds, path: Path) -> Path:
    """Write folds as nnU-Net's ``splits_final.json``."""
    raise NotImplementedError
