"""Dataset layouts on disk: the Medical Segmentation Decathlon and nnU-Net v2 raw.

Both keep a ``dataset.json`` beside ``imagesTr/`` and ``labelsTr/``; they differ in
how channels and labels are declared:

* **MSD**: ``modality`` ``{"0": "T1", ...}``, ``labels`` ``{"0": "background", ...}``
  (value -> name), ``training: [{"image": ..., "label": ...}]``; multi-channel
  images are 4D with channels on the last axis.
* **nnU-Net v2**: ``channel_names`` ``{"0": "T1", ...}``, ``labels``
  ``{"background": 0, ...}`` (name -> value), ``file_ending``; one file per channel,
  ``imagesTr/CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...

:func:`read_index` turns either into a :class:`DatasetIndex`: the list of cases with
their files, the channel names and the label declaration, and the labelled test cases
(``imagesTs/`` images with a ``labelsTs/`` label, in either layout's file naming). It reads only
``dataset.json`` and directory listings; the volumes are read by
:mod:`hpsearch.data.volumes`. What is wrong with the declaration itself but leaves
the rest checkable (a file outside the dataset folder, a case listed twice, too few
cases to split) is kept as :attr:`DatasetIndex.defects`, so ``data check`` can list it
with the defects of the volumes and training can refuse it before reading anything.

Example:
    >>> index = read_index("data/demo-lv")          # doctest: +SKIP
    >>> index.class_names, index.label_values       # doctest: +SKIP
    (('background', 'LV'), (0, 1))
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpsearch.data.guard import MISSING, is_inside, not_a, real_path
from hpsearch.errors import HpsearchError

NIFTI_ENDINGS = (".nii.gz", ".nii")

# A train/validation split by case needs one case on each side.
MIN_CASES = 2


@dataclasses.dataclass(frozen=True)
class Defect:
    """One problem with one file; ``str()`` is the line the user sees."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """The files of one training case.

    Attributes:
        case_id: Identifier, unique within the dataset (file name without ending).
        images: One 3D/4D file (MSD) or one 3D file per channel (nnU-Net v2).
        label: The label map.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path


@dataclasses.dataclass(frozen=True)
class DatasetIndex:
    """What a dataset declares, and where its files are.

    Attributes:
        root: The dataset folder (read-only to hpsearch).
        layout: ``"msd"`` or ``"nnunetv2"``.
        channel_names: One name per input channel, in channel order.
        label_values: Declared label values in ascending order; class index ``i``
            of a model output stands for ``label_values[i]`` (BraTS: 0, 1, 2, 4).
        class_names: The name of each class, aligned with ``label_values``.
        cases: The training cases that can be read (each case id once, every file
            inside ``root``).
        defects: Problems of the declaration: files outside ``root``, cases listed
            twice, fewer than :data:`MIN_CASES` cases. Training refuses a dataset with any.
        test_cases: The *labelled* test cases (``imagesTs`` with ``labelsTs``): the locked
            test split (:mod:`hpsearch.data.splits`); never read while searching.
    """

    root: Path
    layout: str
    channel_names: tuple[str, ...]
    label_values: tuple[int, ...]
    class_names: tuple[str, ...]
    cases: tuple[CaseFiles, ...]
    defects: tuple[Defect, ...] = ()
    test_cases: tuple[CaseFiles, ...] = ()

    @property
    def manifest(self) -> Path:
        return self.root / "dataset.json"

    def restricted(self, case_ids: Iterable[str]) -> DatasetIndex:
        """This index with only the training cases ``case_ids`` (kept in index order).

        Everything else is kept, :attr:`test_cases` included: a search restricted to its
        pool digests and preprocesses only the cases it may read.

        Raises:
            HpsearchError: A case id is not a training case of this dataset.
        """
        wanted = set(case_ids)
        unknown = sorted(wanted - {case.case_id for case in self.cases})
        if unknown:
            raise HpsearchError(
                f"{self.manifest}: case(s) {', '.join(unknown[:5])} are not training cases of this dataset"
            )
        return dataclasses.replace(self, cases=tuple(c for c in self.cases if c.case_id in wanted))

    @property
    def num_classes(self) -> int:
        return len(self.label_values)


def read_index(root: str | Path) -> DatasetIndex:
    """Read ``dataset.json`` of an MSD or nnU-Net v2 dataset folder.

    Raises:
        HpsearchError: The folder or its ``dataset.json`` is missing or malformed.
    """
    root = Path(root)
    manifest = root / "dataset.json"
    problem = not_a(root, "folder")
    if problem == MISSING:
        raise HpsearchError(f"{root}: dataset folder not found; check dataset.path in the job file")
    if problem:
        raise HpsearchError(f"{root}: {problem}; the dataset path must name the folder holding dataset.json")
    problem = not_a(manifest, "file")
    if problem:
        raise HpsearchError(
            f"{manifest}: {problem}; a dataset needs a dataset.json in MSD or nnU-Net v2 layout"
        )
    try:
        declared = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HpsearchError(f"{manifest}: not readable JSON ({exc})") from None
    if not isinstance(declared, dict):
        raise HpsearchError(f"{manifest}: expected a JSON object at the top level")
    if "channel_names" in declared:
        return _read_nnunet(root, manifest, declared)
    if "modality" in declared:
        return _read_msd(root, manifest, declared)
    raise HpsearchError(
        f"{manifest}: neither MSD ('modality', 'training') nor nnU-Net v2 ('channel_names', "
        "'file_ending') keys found"
    )


def _read_msd(root: Path, manifest: Path, declared: dict[str, Any]) -> DatasetIndex:
    channel_names = _channels(manifest, declared, "modality")
    labels = _require(manifest, declared, "labels", dict)
    values_to_names = {_int_key(manifest, "labels", k): str(v) for k, v in labels.items()}
    training = _require(manifest, declared, "training", list)
    cases: list[CaseFiles] = []
    defects: list[Defect] = []
    first_entry: dict[str, int] = {}
    for position, entry in enumerate(training):
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            raise HpsearchError(
                f"{manifest}: training[{position}] must be an object with 'image' and 'label'"
            )
        where = {key: f"training[{position}].{key}" for key in ("image", "label")}
        paths = {key: _entry_path(root, manifest, where[key], entry[key]) for key in where}
        # An entry with a defect is left out of the cases: it is never read nor trained on.
        problems = [
            Defect(manifest, _outside(root, f"{where[key]}: {entry[key]!r}", path))
            for key, path in paths.items()
            if not is_inside(path, root)
        ]
        case_id = _case_id(paths["image"])
        if not problems and case_id in first_entry:
            problems.append(
                Defect(
                    manifest,
                    f"training[{position}]: case {case_id} is listed twice (also training[{first_entry[case_id]}]); "
                    "remove one of the entries",
                )
            )
        defects.extend(problems)
        if not problems:
            first_entry[case_id] = position
            cases.append(CaseFiles(case_id, (paths["image"],), paths["label"]))
    tests = _labelled_test_cases(root, None, len(channel_names))
    return _index(root, "msd", manifest, channel_names, values_to_names, cases, defects, tests)


def _read_nnunet(root: Path, manifest: Path, declared: dict[str, Any]) -> DatasetIndex:
    channel_names = _channels(manifest, declared, "channel_names")
    labels = _require(manifest, declared, "labels", dict)
    values_to_names: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise HpsearchError(
                f"{manifest}: labels.{name} is a region (a list of values); region-based "
                "training is not supported, declare one integer value per label"
            )
        values_to_names[_int_key(manifest, f"labels.{name}", value)] = str(name)
    ending = _require(manifest, declared, "file_ending", str)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise HpsearchError(f"{images_dir}: missing; nnU-Net v2 keeps training images there")
    by_case = _channel_files(images_dir, ending)
    # A missing channel file keeps its expected name so `data check` can report it.
    cases, defects = _inside_only(root, [
        CaseFiles(case_id, _channel_paths(images_dir, case_id, channels, ending, len(channel_names)),
                  labels_dir / f"{case_id}{ending}")
        for case_id, channels in sorted(by_case.items())
    ])
    tests = _labelled_test_cases(root, ending, len(channel_names))
    return _index(root, "nnunetv2", manifest, channel_names, values_to_names, cases, defects, tests)


def _index(
    root: Path,
    layout: str,
    manifest: Path,
    channel_names: tuple[str, ...],
    values_to_names: dict[int, str],
    cases: list[CaseFiles],
    defects: list[Defect],
    tests: tuple[list[CaseFiles], list[Defect]],
) -> DatasetIndex:
    if 0 not in values_to_names:
        raise HpsearchError(f"{manifest}: labels must declare the background value 0")
    if len(values_to_names) < 2:
        raise HpsearchError(f"{manifest}: labels must declare at least one foreground class")
    values = tuple(sorted(values_to_names))
    test_cases, test_defects = tests
    training_ids = {case.case_id for case in cases}
    for case in test_cases:
        if case.case_id in training_ids:
            test_defects.append(Defect(case.label, f"test case {case.case_id} is also a training case; "
                                       "rename one of them or remove it from imagesTs/labelsTs"))
    return DatasetIndex(
        root=root,
        layout=layout,
        channel_names=channel_names,
        label_values=values,
        class_names=tuple(values_to_names[v] for v in values),
        cases=tuple(cases),
        defects=(*defects, *test_defects, *_too_few(manifest, len(cases), bool(defects))),
        test_cases=tuple(case for case in test_cases if case.case_id not in training_ids),
    )


def _channel_files(folder: Path, ending: str) -> dict[str, dict[int, Path]]:
    """nnU-Net v2 channel files in ``folder`` (``CASE_0000<ending>``, ...) by case id and channel."""
    channel_file = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$")
    by_case: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = channel_file.match(path.name)
        if match:
            by_case.setdefault(match["case"], {})[int(match["channel"])] = path
    return by_case


def _channel_paths(folder: Path, case_id: str, found: dict[int, Path], ending: str, count: int) -> tuple[Path, ...]:
    return tuple(found.get(c, folder / f"{case_id}_{c:04d}{ending}") for c in range(count))


def _inside_only(root: Path, cases: list[CaseFiles]) -> tuple[list[CaseFiles], list[Defect]]:
    """The cases whose files are all inside ``root``, and a defect per file that is not."""
    kept, defects = [], []
    for case in cases:
        # Files come from listing the folder, so only a symlink (to a file or a folder) leads out.
        outside = [Defect(p, _outside(root, "", p)) for p in (*case.images, case.label) if not is_inside(p, root)]
        defects.extend(outside)
        if not outside:
            kept.append(case)
    return kept, defects


def _labelled_test_cases(root: Path, ending: str | None, channels: int) -> tuple[list[CaseFiles], list[Defect]]:
    """The ``imagesTs`` cases with a label in ``labelsTs`` (directory listings only).

    Args:
        root: The dataset folder.
        ending: nnU-Net v2's ``file_ending`` (one file per channel, ``CASE_0000<ending>``), or
            None for MSD (one 3D/4D ``CASE.nii.gz``; dataset.json's ``test`` list names the
            same images without labels, so the folder is what counts).
        channels: Number of input channels.
    """
    images_dir, labels_dir = root / "imagesTs", root / "labelsTs"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        return [], []
    # Names starting with "." are skipped: MSD's archives carry macOS "._CASE.nii.gz" files.
    endings = NIFTI_ENDINGS if ending is None else (ending,)
    labels: dict[str, Path] = {}
    for name in sorted(os.listdir(labels_dir)):
        for end in endings:
            if name.endswith(end) and not name.startswith("."):
                labels.setdefault(name[: -len(end)], labels_dir / name)
                break
    images: dict[str, tuple[Path, ...]] = {}
    if ending is None:
        for path in sorted(images_dir.iterdir()):
            if path.name.endswith(NIFTI_ENDINGS) and not path.name.startswith("."):
                images.setdefault(_case_id(path), (path,))
    else:
        for case_id, found in _channel_files(images_dir, ending).items():
            images[case_id] = _channel_paths(images_dir, case_id, found, ending, channels)
    # An image without a label is not a test case: nothing to score it against.
    return _inside_only(root, [CaseFiles(c, images[c], labels[c]) for c in sorted(images) if c in labels])


def _too_few(manifest: Path, count: int, other_defects: bool) -> list[Defect]:
    if count == 0 and other_defects:
        return []  # every declared case is already named by a defect of its own
    if count == 0:
        return [Defect(manifest, "the dataset lists no training cases")]
    if count < MIN_CASES:
        return [
            Defect(
                manifest,
                f"the dataset has {count} usable case; a train/validation split by case needs at least "
                f"{MIN_CASES}, add cases",
            )
        ]
    return []


def _require(manifest: Path, declared: dict[str, Any], key: str, kind: type) -> Any:
    if key not in declared:
        raise HpsearchError(f"{manifest}: key '{key}' is missing")
    value = declared[key]
    if not isinstance(value, kind):
        raise HpsearchError(f"{manifest}: key '{key}' must be a {kind.__name__}")
    return value


def _channels(manifest: Path, declared: dict[str, Any], key: str) -> tuple[str, ...]:
    channels = _require(manifest, declared, key, dict)
    order = sorted((_int_key(manifest, key, k), str(v)) for k, v in channels.items())
    if [index for index, _ in order] != list(range(len(order))) or not order:
        raise HpsearchError(f"{manifest}: '{key}' must number channels 0, 1, 2, ... without gaps")
    return tuple(name for _, name in order)


def _int_key(manifest: Path, where: str, raw: Any) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise HpsearchError(f"{manifest}: {where}: '{raw}' is not an integer") from None
    if str(raw).strip() != str(value) or value < 0:
        raise HpsearchError(f"{manifest}: {where}: '{raw}' is not a non-negative integer")
    return value


def _entry_path(root: Path, manifest: Path, where: str, value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise HpsearchError(
            f"{manifest}: {where}: must be a file path relative to the dataset folder "
            f"(like \"./imagesTr/case.nii.gz\"), got {value!r}"
        )
    # MSD writes "./imagesTr/x.nii.gz"; pathlib drops the "./" and keeps absolute paths.
    return root / value


def _outside(root: Path, entry: str, path: Path) -> str:
    """The problem of a file that leads out of the dataset folder (``entry``: its manifest entry, if any)."""
    prefix = f"{entry} " if entry else ""
    return (
        f"{prefix}resolves to {real_path(path)}, outside the dataset folder {root}; hpsearch reads only "
        "files inside it: copy the file in (not a symlink) and list it relative to the folder"
    )


def _case_id(path: Path) -> str:
    name = path.name
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return path.stem
