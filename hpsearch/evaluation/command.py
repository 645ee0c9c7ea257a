"""What ``hpsearch evaluate A B`` does, apart from parsing and printing (see :mod:`hpsearch.cli`).

A holding ``hpsearch-model.json`` is a model folder: B is then a dataset folder whose
``--split`` cases are segmented into ``--out`` and scored. Otherwise A is a folder of
predictions and B a label folder or dataset folder. Either way ``evaluation.csv`` (one
row per case) and ``evaluation.json`` (summary and cases) go into ``--out`` when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpsearch.data.guard import refuse_inside
from hpsearch.data.layouts import read_index
from hpsearch.errors import HpsearchError
from hpsearch.evaluation.folders import evaluate_folders, evaluate_model, labelled_cases
from hpsearch.evaluation.report import EvaluationReport
from hpsearch.export import META_FILE

CSV_FILE, JSON_FILE = "evaluation.csv", "evaluation.json"


def parse_regions(items: Sequence[str]) -> dict[str, list[int]]:
    """``["whole_tumour=1,2,4", ...]`` -> ``{"whole_tumour": [1, 2, 4], ...}``.

    Raises:
        HpsearchError: An item is not ``NAME=V1,V2,...`` with integer values, or a name repeats.
    """
    regions: dict[str, list[int]] = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            parsed = [int(v) for v in values.split(",")]
        except ValueError:
            parsed = []
        if not name.strip() or not parsed:
            raise HpsearchError(f"--regions: {item!r} is not NAME=V1,V2 with integer label values "
                                "(e.g. whole_tumour=1,2,4)")
        if name.strip() in regions:
            raise HpsearchError(f"--regions: region {name.strip()!r} is given twice; give each region once")
        regions[name.strip()] = parsed
    return regions


def run_evaluate(
    a: Path,
    b: Path,
    *,
    out: Path | None = None,
    regions: dict[str, list[int]] | None = None,
    split: str | None = None,
    mirror: bool | None = None,
) -> EvaluationReport:
    """Evaluate a model on a dataset (A a model folder) or predictions against labels.

    Args:
        a: A model folder (``hpsearch export``) or a folder of predicted label files.
        b: The dataset folder (model mode), or a label or dataset folder.
        out: Model mode (required): a new or empty folder for the predictions; both
            modes: where ``evaluation.csv`` and ``evaluation.json`` are written.
        regions: Region name -> label values; model mode defaults to the export's.
        split: ``"test"`` (default) or ``"train"``: the cases of a dataset folder.
        mirror: Model mode: test-time mirroring; default the export's setting.

    Returns:
        The report, also written into ``out`` when given.

    Raises:
        HpsearchError: Bad arguments or inputs (one line).
    """
    a, b = Path(a), Path(b)
    if out is not None:
        refuse_inside(out, b, "--out")  # neither the dataset nor the label folder is written into
    if (a / META_FILE).is_file():
        if out is None:
            raise HpsearchError(f"{a}: is a model folder; give --out, a new folder for its predictions")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise HpsearchError(f"--out {out}: already exists and is not empty; choose a new folder")
        cases = labelled_cases(read_index(b), split or "test")
        from hpsearch.runtime import quiet_tensorflow

        quiet_tensorflow()
        report = evaluate_model(a, cases, out, regions=regions, mirror=mirror, dataset_root=b)
    else:
        if mirror is not None:
            raise HpsearchError(f"{a}: not a model folder (no {META_FILE}); --mirror applies to a model only")
        if split is not None and not (b / "dataset.json").is_file():
            raise HpsearchError(f"{b}: not a dataset folder (no dataset.json); --split applies to a dataset only")
        files = [out / CSV_FILE, out / JSON_FILE] if out is not None else []
        for path in files:
            if path.exists():
                raise HpsearchError(f"{path}: already exists; choose another --out (nothing is overwritten)")
        report = evaluate_folders(a, b, regions=regions, split=split or "test")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.to_csv(out / CSV_FILE)
        report.to_json(out / JSON_FILE)
    return report
