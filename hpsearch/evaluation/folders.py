"""Evaluating label files: predictions against ground truth, or a model on a dataset's cases.

:func:`evaluate_folders` pairs ``CASE.nii.gz`` (or ``.nii``) predictions with their
ground-truth label files and scores them in the label's geometry (its header's voxel
spacing). :func:`evaluate_model` first segments cases with an exported model, writing
the predictions, then scores them by the same code (:func:`score_files`), so a search's
final test scores are exactly what ``hpsearch evaluate PRED LABELS`` would say.

Example:
    >>> report = evaluate_folders("preds/", "data/BraTS",            # doctest: +SKIP
    ...                           regions={"whole_tumour": [1, 2, 4]})
    >>> print(report.format())                                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from hpsearch.data.guard import refuse_inside
from hpsearch.data.layouts import NIFTI_ENDINGS, CaseFiles, DatasetIndex, read_index
from hpsearch.data.volumes import AFFINE_TOLERANCE_MM, header_spacing, load_case
from hpsearch.errors import HpsearchError
from hpsearch.evaluation.report import EvaluationReport, Evaluator

SPLITS = ("test", "train")


def evaluate_folders(
    pred_dir: str | Path,
    label_dir: str | Path,
    *,
    label_values: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    split: str = "test",
) -> EvaluationReport:
    """Score every ground-truth label file against its prediction ``pred_dir/CASE.nii.gz``.

    Args:
        pred_dir: Folder of predicted label maps, one ``CASE.nii.gz`` or ``CASE.nii`` per case.
        label_dir: A dataset folder (with ``dataset.json``: its label declaration, and the
            labels of ``split``), or a plain folder of ground-truth label files.
        label_values: Label values to score (background 0 included); default: the
            dataset's, or for a plain folder every value found in its labels and the predictions.
        class_names: Names aligned with ``label_values``; default: the dataset's, else ``label_<v>``.
        regions: Region name -> label values whose union is also scored.
        split: For a dataset folder: ``"test"`` (labelled ``imagesTs``/``labelsTs``) or
            ``"train"`` (``labelsTr``).

    Returns:
        The report, cases in case-id order.

    Raises:
        HpsearchError: A label without its prediction, a shape or affine mismatch,
            unreadable files, unknown label values, or a bad region (one line each).
    """
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    if not pred_dir.is_dir():
        raise HpsearchError(f"{pred_dir}: not a folder; give the folder of predicted CASE.nii.gz files")
    if (label_dir / "dataset.json").is_file():
        index = read_index(label_dir)
        labels = {c.case_id: c.label for c in labelled_cases(index, split)}
        if label_values is None:
            label_values, class_names = index.label_values, class_names or index.class_names
    elif label_dir.is_dir():
        labels = _label_files(label_dir)
    else:
        raise HpsearchError(f"{label_dir}: not a folder; give a dataset folder or a folder of label files")
    pairs = [(case, _prediction(pred_dir, case, label), label) for case, label in sorted(labels.items())]
    if label_values is None:  # a plain folder declares nothing: every value found is a class
        found = set().union(*(np.unique(_voxels(p)).tolist() for _, pred, label in pairs for p in (pred, label)))
        label_values = sorted({0, *(int(v) for v in found)})
    return score_files(pairs, label_values=label_values, class_names=class_names, regions=regions)


def labelled_cases(index: DatasetIndex, split: str) -> tuple[CaseFiles, ...]:
    """The labelled cases of a dataset's ``"test"`` or ``"train"`` split.

    Raises:
        HpsearchError: An unknown split, or a test split without labelled test cases.
    """
    if split not in SPLITS:
        raise HpsearchError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    if split == "train":
        return index.cases
    if not index.test_cases:
        raise HpsearchError(f"{index.root}: no labelled test cases (imagesTs with labelsTs); "
                            "evaluate on the training cases with --split train")
    return index.test_cases


def score_files(
    pairs: Sequence[tuple[str, Path, Path]],
    *,
    label_values: Sequence[int],
    class_names: Sequence[str] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> EvaluationReport:
    """Score ``(case_id, prediction file, label file)`` triples in the label's geometry.

    Raises:
        HpsearchError: Mismatched shapes or affines, unreadable files, unknown label
            values, or a bad label declaration or region.
    """
    if not pairs:
        raise HpsearchError("no cases to evaluate")
    names = class_names or ["background" if v == 0 else f"label_{v}" for v in label_values]
    try:
        evaluator = Evaluator(label_values, names, regions)
    except ValueError as exc:
        raise HpsearchError(f"labels or regions: {exc}") from None
    for case_id, pred_path, label_path in pairs:
        label, pred = _open(label_path), _open(pred_path)
        if pred.shape != label.shape:
            raise HpsearchError(f"{pred_path}: shape {pred.shape}, but its label {label_path} has {label.shape}; "
                                "predictions must be on the label's voxel grid")
        if not np.allclose(pred.affine, label.affine, atol=AFFINE_TOLERANCE_MM):
            raise HpsearchError(f"{pred_path}: affine differs from its label {label_path}'s; "
                                "predictions must be on the label's voxel grid (same orientation and spacing)")
        try:
            evaluator.add(case_id, _voxels(pred_path, pred), _voxels(label_path, label), header_spacing(label))
        except ValueError as exc:
            raise HpsearchError(f"{pred_path} vs {label_path}: {exc}") from None
    return evaluator.report()


def evaluate_model(
    model_dir: str | Path,
    cases: Sequence[CaseFiles],
    out_dir: str | Path,
    *,
    regions: Mapping[str, Sequence[int]] | None = None,
    mirror: bool | None = None,
    dataset_root: str | Path | None = None,
) -> EvaluationReport:
    """Segment labelled cases with an exported model into ``out_dir``, then score them.

    Args:
        model_dir: A folder written by ``hpsearch export``.
        cases: The cases (images MSD 4D or one file per channel, and labels).
        out_dir: Where ``CASE.nii.gz`` predictions go; no file there is overwritten.
        regions: Region name -> label values; default the export's ``regions``, if any.
        mirror: Test-time mirroring (patch mode); default the export's setting.
        dataset_root: The cases' dataset folder, never written into (also refused:
            the folders of the case files and the dataset the model was trained on).

    Returns:
        The report of :func:`score_files` on the written predictions.

    Raises:
        HpsearchError: An unsafe ``out_dir``, an existing prediction, or a case or
            model that cannot be read.
    """
    # TensorFlow only in here: a search imports this module without paying for it.
    from hpsearch.predict import ExportedModel, write_labels, read_export_meta, trained_on

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not cases:
        raise HpsearchError("no cases to evaluate")
    meta = read_export_meta(model_dir)
    guarded = [dataset_root, trained_on(meta), *(p.parent for c in cases for p in (*c.images, c.label))]
    for root in dict.fromkeys(r for r in guarded if r is not None):
        refuse_inside(out_dir, root, "output")
    jobs = [(case, out_dir / f"{case.case_id}.nii.gz") for case in cases]
    for _, out in jobs:
        if out.exists() or out.is_symlink():
            raise HpsearchError(f"{out}: already exists; choose another output folder (nothing is overwritten)")
    regions = meta.get("regions") if regions is None else regions
    # load_case reads a case against a declaration: the export's channels and label values.
    index = DatasetIndex(root=Path(dataset_root or cases[0].images[0].parent), layout="", channel_names=tuple(meta["channel_names"]),
                         label_values=tuple(meta["label_values"]), class_names=tuple(meta["class_names"]), cases=())
    exported = ExportedModel.load(model_dir, meta)
    for case, out in jobs:
        volumes = load_case(index, case)  # the training path: channels stacked, grids and labels checked
        image = volumes.image[..., 0] if volumes.image.shape[3] == 1 else volumes.image
        try:
            labels = exported.predict_volume(image, spacing=volumes.spacing, mirror=mirror)
        except HpsearchError as exc:
            raise HpsearchError(f"{case.images[0]}: {exc}") from None
        write_labels(out, labels, nib.load(case.images[0]))
    return score_files([(c.case_id, out, c.label) for c, out in jobs], label_values=meta["label_values"],
                       class_names=meta["class_names"], regions=regions)


def _label_files(folder: Path) -> dict[str, Path]:
    labels: dict[str, Path] = {}
    # Dot files are skipped: macOS leaves unreadable "._x.nii.gz" twins on shared drives.
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()):
        case = _case_id(path)
        if case is None:
            continue
        if case in labels:
            raise HpsearchError(f"{folder}: case {case} has two label files ({labels[case].name}, {path.name}); "
                                "move one")
        labels[case] = path
    if not labels:
        raise HpsearchError(f"{folder}: no .nii or .nii.gz label files")
    return labels


def _prediction(pred_dir: Path, case: str, label: Path) -> Path:
    found = [pred_dir / f"{case}{e}" for e in NIFTI_ENDINGS if (pred_dir / f"{case}{e}").is_file()]
    if not found:
        raise HpsearchError(f"{pred_dir}: no prediction {case}.nii.gz for label {label}; "
                            "segment that case (hpsearch predict) or leave its label out")
    if len(found) > 1:
        raise HpsearchError(f"{pred_dir}: case {case} has two predictions ({found[0].name}, {found[1].name}); move one")
    return found[0]


def _case_id(path: Path) -> str | None:
    return next((path.name[: -len(e)] for e in NIFTI_ENDINGS if path.name.endswith(e)), None)


def _open(path: Path) -> nib.Nifti1Image:
    try:
        image = nib.load(path)  # the header only; voxels are read when scoring
    except Exception as exc:  # nibabel raises many types for non-NIfTI files
        raise HpsearchError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if len(image.shape) != 3:
        raise HpsearchError(f"{path}: shape {image.shape}; a label map must be 3D")
    return image


def _voxels(path: Path, image: nib.Nifti1Image | None = None) -> np.ndarray:
    try:  # reading the voxels is what fails on a truncated .nii.gz, not nib.load
        return np.asarray((image or _open(path)).dataobj)
    except HpsearchError:
        raise
    except Exception as exc:  # gzip, zlib and nibabel errors
        raise HpsearchError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__}: {exc})") from None
