"""Which cases train, validate and test: patient-grouped folds and a locked test split.

INTERFACE (filled in by the splits work; the search codes against these names).

A :class:`Splits` is decided once per search from file *names* only (no voxel is read):

* ``test``: the locked test cases. The labelled ``imagesTs``/``labelsTs`` cases when the
  dataset has them (:attr:`DatasetIndex.test_cases`), else a seeded ``test_fraction`` of
  the training cases held out by patient group, else none.
* ``folds``: one :class:`Fold` per cross-validation fold over the remaining cases (the
  *pool*): ``dataset.splits`` (nnU-Net's ``splits_final.json``) when given, else
  ``folds: k`` patient-grouped folds, else one fold, today's ``val_fraction`` split.

Cases of one patient (``group_pattern``, ``groups_file``: :mod:`hpsearch.data.groups`) are
never on both sides of any split, test included. Without groups, folds or a test split the
one fold is exactly :func:`~hpsearch.data.preprocess.split_cases`' split, as before.

Example:
    >>> splits = make_splits(read_index("data/demo-lv"), job.dataset)   # doctest: +SKIP
    >>> len(splits.folds), splits.test_source                            # doctest: +SKIP
    (5, 'test_fraction')
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpsearch.data.groups import case_groups
from hpsearch.data.guard import refuse_inside
from hpsearch.data.layouts import MIN_CASES
from hpsearch.errors import HpsearchError
from hpsearch.experiment.state import write_atomic

if TYPE_CHECKING:
    from hpsearch.data.config import DatasetConfig
    from hpsearch.data.layouts import DatasetIndex


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


def make_splits(index: DatasetIndex, config: DatasetConfig) -> Splits:
    """The splits a job's ``dataset:`` section asks for (see the module docstring).

    Decided from case ids alone (plus the groups and splits files, when given): the same
    dataset and keys give the same splits.

    Args:
        index: The dataset (:func:`~hpsearch.data.layouts.read_index`).
        config: The job's ``dataset:`` section: ``folds``, ``splits``, ``test_fraction``,
            ``group_pattern``/``groups_file``, ``val_fraction``, ``split_seed``, ``regions``.

    Raises:
        HpsearchError: Too few patients for the folds or the test split, a case the
            grouping cannot place, a splits file that disagrees with the dataset or the
            test split, or a region naming an undeclared label value (one line each).
    """
    check_regions(index, config.regions)
    training = [case.case_id for case in index.cases]
    tested = [case.case_id for case in index.test_cases]
    groups = case_groups([*training, *tested], config.group_pattern, config.groups_file)
    if tested:
        _refuse_shared_patients(groups, tested, training)
        test, source, pool = sorted(tested), "imagesTs", training
    elif config.test_fraction is not None:
        test, pool = _hold_out(training, groups, config)
        source = "test_fraction"
    else:
        test, source, pool = [], "none", training
    if config.splits is not None:
        folds = _file_folds(config.splits, training, set(test), source, groups, config.folds)
    elif config.folds is not None:
        folds = _group_k_fold(pool, groups, config.folds, config.split_seed)
    else:
        folds = (_single_fold(pool, groups, config.val_fraction, config.split_seed),)
    return Splits(folds, tuple(test), source)


def check_regions(index: DatasetIndex, regions: Mapping[str, Sequence[int]]) -> None:
    """Refuse a region listing a label value the dataset does not declare as foreground.

    Raises:
        HpsearchError: One line naming the region, the value and the declared values.
    """
    foreground = set(index.label_values) - {0}
    for name, values in regions.items():
        unknown = sorted(set(values) - foreground)
        if unknown:
            raise HpsearchError(
                f"dataset.regions.{name}: label value(s) {unknown} are not foreground labels of "
                f"{index.manifest} (declared: {sorted(foreground)}); use declared values"
            )


def read_nnunet_splits(path: Path, case_ids) -> tuple[Fold, ...]:
    """nnU-Net's ``splits_final.json`` (``[{"train": [...], "val": [...]}, ...]``).

    Args:
        path: The file (nnU-Net v2 writes it to ``nnUNet_preprocessed/DatasetXXX_Name/``).
        case_ids: Every case id the file may name.

    Returns:
        One :class:`Fold` per entry, in file order, case ids sorted.

    Raises:
        HpsearchError: A missing or malformed file, an empty side, a case that is not in
            ``case_ids``, or a case on both sides of a fold.
    """
    where = f"splits file {path}"
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HpsearchError(f"{where}: not found; the path is relative to the working directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HpsearchError(f"{where}: not readable JSON ({exc})") from None
    shape = 'a JSON list with one {"train": [case ids], "val": [case ids]} per fold (nnU-Net\'s splits_final.json)'
    if not isinstance(raw, list) or not raw:
        raise HpsearchError(f"{where}: expected {shape}")
    known = set(case_ids)
    folds = []
    for number, entry in enumerate(raw):
        sides = {}
        for side in ("train", "val"):
            ids = entry.get(side) if isinstance(entry, dict) else None
            if not isinstance(ids, list) or not ids or not all(isinstance(c, str) for c in ids):
                raise HpsearchError(
                    f"{where}: fold {number}: '{side}' must be a non-empty list of case ids; expected {shape}"
                )
            unknown = sorted(set(ids) - known)
            if unknown:
                raise HpsearchError(f"{where}: fold {number} names case {unknown[0]}, not a case of the "
                                    f"dataset ({len(unknown)} such); the file must be made for this dataset")
            sides[side] = tuple(sorted(set(ids)))
        both = sorted(set(sides["train"]) & set(sides["val"]))
        if both:
            raise HpsearchError(f"{where}: fold {number}: case {both[0]} is in both train and val; keep it on one side")
        folds.append(Fold(sides["train"], sides["val"]))
    return tuple(folds)


def write_nnunet_splits(folds: Sequence[Fold], path: Path, *, dataset_root: Path | None = None,
                        overwrite: bool = False) -> Path:
    """Write folds as nnU-Net's ``splits_final.json`` (atomically).

    Args:
        folds: The folds, in order (fold ``i`` is nnU-Net's fold ``i``).
        path: The file to write; its folder is created.
        dataset_root: The dataset folder, which the file must not be inside.
        overwrite: Replace an existing file.

    Returns:
        ``path``.

    Raises:
        HpsearchError: ``path`` exists (without ``overwrite``) or is inside ``dataset_root``.
    """
    path = Path(path)
    if dataset_root is not None:
        refuse_inside(path, dataset_root, "splits file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise HpsearchError(
            f"{path}: exists; choose another path or remove it (`hpsearch data splits --overwrite` replaces it)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Byte for byte what nnU-Net writes (batchgenerators' save_json: indent 4, sorted keys, no newline).
    text = json.dumps([{"train": list(f.train), "val": list(f.val)} for f in folds], indent=4, sort_keys=True)
    write_atomic(path, text)
    return path


def _refuse_shared_patients(groups: Mapping[str, str], tested: Sequence[str], training: Sequence[str]) -> None:
    in_test: dict[str, str] = {}
    for case in tested:
        in_test.setdefault(groups[case], case)
    for case in training:
        if groups[case] in in_test:
            raise HpsearchError(
                f"patient {groups[case]} has cases in imagesTs ({in_test[groups[case]]}) and in the training "
                f"cases ({case}); a patient must be on one side: move the case or check "
                "dataset.group_pattern/groups_file"
            )


def _hold_out(
    training: list[str], groups: Mapping[str, str], config: DatasetConfig
) -> tuple[list[str], list[str]]:
    """A seeded ``test_fraction`` of the patients: (sorted test cases, the rest in index order)."""
    patients = len({groups[case] for case in training})
    # GroupShuffleSplit's own count (ceil of fraction x patients), checked first for a clear message.
    n_test = math.ceil(config.test_fraction * patients)
    needed = config.folds or 2
    if patients - n_test < needed:
        what = f"dataset.folds {config.folds}" if config.folds else "a train/validation split"
        raise HpsearchError(
            f"dataset.test_fraction {config.test_fraction}: holding out {n_test} of {patients} patient(s) leaves "
            f"{patients - n_test}, and {what} needs at least {needed}; add cases or lower test_fraction"
            + (" or folds" if config.folds else "")
        )
    from sklearn.model_selection import GroupShuffleSplit  # here: importing scikit-learn takes seconds

    splitter = GroupShuffleSplit(n_splits=1, test_size=config.test_fraction, random_state=config.split_seed)
    _, test_rows = next(splitter.split(np.zeros(len(training)), groups=[groups[c] for c in training]))
    held = {training[i] for i in test_rows}
    return sorted(held), [case for case in training if case not in held]


def _group_k_fold(pool: list[str], groups: Mapping[str, str], k: int, seed: int) -> tuple[Fold, ...]:
    patients = len({groups[case] for case in pool})
    if patients < k:
        raise HpsearchError(
            f"dataset.folds {k}: only {patients} patient(s) to split, each fold needs at least one in "
            "validation; lower folds or add cases"
        )
    # shuffle=True (scikit-learn >= 1.6): patients dealt to folds in a seeded random order,
    # like nnU-Net's KFold(shuffle=True) over cases.
    from sklearn.model_selection import GroupKFold  # here: importing scikit-learn takes seconds

    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return tuple(
        Fold(tuple(sorted(pool[i] for i in train)), tuple(sorted(pool[i] for i in val)))
        for train, val in splitter.split(np.zeros(len(pool)), groups=[groups[c] for c in pool])
    )


def _single_fold(pool: list[str], groups: Mapping[str, str], val_fraction: float, seed: int) -> Fold:
    # Patients in order of first appearance: with one case per patient these are the case ids
    # in index order, so split_cases gives the very split existing caches were made with.
    patients = list(dict.fromkeys(groups[case] for case in pool))
    if len(patients) < 2:
        raise HpsearchError(
            f"{len(pool)} case(s) from {len(patients)} patient(s) left for training; a train/validation "
            "split needs at least 2 patients: add cases, or check dataset.group_pattern/groups_file"
        )
    _, val_patients = split_cases(patients, val_fraction, seed)
    val = set(val_patients)
    return Fold(tuple(sorted(c for c in pool if groups[c] not in val)),
                tuple(sorted(c for c in pool if groups[c] in val)))


def _file_folds(path: Path, training: list[str], test: set[str], source: str, groups: Mapping[str, str],
                folds: int | None) -> tuple[Fold, ...]:
    """``dataset.splits``' folds, checked against the test split and the patients."""
    where = f"dataset.splits {path}"
    read = read_nnunet_splits(path, [*training, *test])
    if folds is not None and len(read) != folds:
        raise HpsearchError(f"{where}: has {len(read)} fold(s) but dataset.folds is {folds}; "
                            "drop dataset.folds or make them agree")
    for number, fold in enumerate(read):
        named_test = sorted(test.intersection(fold.train + fold.val))
        if named_test:
            fix = "remove it from the file" + ("" if source == "imagesTs" else " or drop dataset.test_fraction")
            raise HpsearchError(f"{where}: fold {number} names test case {named_test[0]} ({source}); test cases are "
                                f"never trained or validated on: {fix}")
        val_patients: dict[str, str] = {}
        for case in fold.val:
            val_patients.setdefault(groups[case], case)  # the first, to name in a message
        for case in fold.train:
            if groups[case] in val_patients:
                raise HpsearchError(
                    f"{where}: fold {number} puts patient {groups[case]} on both sides ({case} in train, "
                    f"{val_patients[groups[case]]} in val); keep a patient's cases together"
                )
    return read


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by case: a patient is never in both training and validation.

    Raises:
        HpsearchError: Fewer than two cases.
    """
    if len(case_ids) < MIN_CASES:
        raise HpsearchError(
            f"the dataset has {len(case_ids)} case(s); a train/validation split by case needs at least {MIN_CASES}"
        )
    order = np.random.default_rng(seed).permutation(len(case_ids))
    n_val = min(max(1, round(val_fraction * len(case_ids))), len(case_ids) - 1)
    val = sorted(case_ids[i] for i in order[:n_val])
    train = sorted(case_ids[i] for i in order[n_val:])
    return train, val


def fold_cases(index: DatasetIndex, val_fraction: float, seed: int, fold: Fold | None = None) -> Fold:
    """The cases one prepared dataset trains and validates on: ``fold`` (one fold of
    :func:`hpsearch.data.splits.make_splits`), or without it the seeded ``val_fraction``
    split of every case of ``index``.

    Raises:
        HpsearchError: ``fold`` names a case the index does not hold.
    """
    ids = [case.case_id for case in index.cases]
    if fold is None:
        train, val = split_cases(ids, val_fraction, seed)
        return Fold(tuple(train), tuple(val))
    unknown = sorted(set(fold.train + fold.val) - set(ids))
    if unknown:
        raise HpsearchError(f"{index.root}: the split names case(s) {', '.join(unknown[:5])} that the dataset "
                            "does not hold; check dataset.splits or the dataset's cases")
    return fold
