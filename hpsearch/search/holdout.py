"""The locked test split's one evaluation, when a search has ended (``hpsearch evaluate EXPERIMENT``).

The search chose its configuration on validation data; the figure it chose by is the
maximum over many noisy trials, so it is optimistic. This module measures the chosen
model where it counts, once: it exports the best trial (as the ensemble of its fold
models when it was cross-validated over every fold) into the experiment's ``model/``,
segments every test case in its own geometry, scores Dice, IoU and HD95 per case, class
and region (:mod:`hpsearch.evaluation`), and records the result next to the validation
estimate, with the gap between the two:

* ``test_results.json`` and ``test_cases.csv`` in the experiment folder;
* the parent MLflow run: ``test_dice``, ``test_dice_<class>``, ``test_iou_<class>``,
  ``test_hd95_<class>``, ``validation_estimate``, ``test_optimism``, and both files;
* ``test`` in the exported ``hpsearch-model.json``.

Nothing before this step opens a test case (:func:`hpsearch.data.split_dataset`).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment
from hpsearch.experiment.experiment import MODEL_DIR, TEST_CASES, TEST_PREDICTIONS, TEST_RESULTS
from hpsearch.outcome import Outcome

Echo = Callable[[str], None]


def locked_test_cases(experiment: Experiment) -> list:
    """The :class:`~hpsearch.data.layouts.CaseFiles` of the search's locked test split.

    Raises:
        HpsearchError: The search has no test split, or a test case is gone from the dataset.
    """
    from hpsearch.data import read_index

    wanted = experiment.test_cases
    if not wanted:
        raise HpsearchError(f"{experiment.path}: this search has no locked test split; set dataset.test_fraction "
                            "(or give the dataset labelled imagesTs/labelsTs) for the next search")
    index = read_index(experiment.job.dataset.path)
    source = (experiment.state.data_info.get("splits") or {}).get("test_source")
    by_id = {case.case_id: case for case in (index.test_cases if source == "imagesTs" else index.cases)}
    missing = [case for case in wanted if case not in by_id]
    if missing:
        raise HpsearchError(f"{index.root}: test case(s) {', '.join(missing[:5])} of this search are gone from the "
                            "dataset; restore them to evaluate")
    return [by_id[case] for case in wanted]


def evaluate_search(experiment_dir: Path, *, echo: Echo = print) -> dict[str, Any]:
    """Evaluate a finished search's chosen model on its locked test split (see the module docstring).

    Re-running it replaces the previous evaluation (the model export is kept).

    Returns:
        The ``test_results.json`` payload.
    """
    from hpsearch.evaluation import evaluate_model
    from hpsearch.search.exporting import export_best

    experiment = Experiment.open(experiment_dir)
    results = experiment.results()
    best = results.get("best") or {}
    if not Outcome.parse(best.get("status")).scored:
        raise HpsearchError(f"{experiment.path}: no trial finished with a score; nothing to evaluate")
    cases = locked_test_cases(experiment)
    folds = experiment.num_folds
    ensemble = folds > 1 and int(best.get("folds") or 0) == folds
    model_dir = experiment.file(MODEL_DIR)
    if not model_dir.exists():
        export_best(experiment.path, model_dir, ensemble=ensemble, echo=lambda line: None)
    predictions = experiment.file(TEST_PREDICTIONS)
    shutil.rmtree(predictions, ignore_errors=True)  # ours: a failed earlier attempt's
    report = evaluate_model(model_dir, cases, predictions, regions=experiment.job.dataset.regions or None)

    metrics = report.metrics(prefix="test_")
    estimate = float(best.get("best_value", math.nan))
    objective = results.get("metric", experiment.objective)
    payload = {
        "trial_id": best.get("trial_id"),
        "model": f"ensemble of {folds} fold models" if ensemble else "single model",
        "test_cases": len(cases),
        "test_source": (experiment.state.data_info.get("splits") or {}).get("test_source"),
        "validation_estimate": {objective: estimate, "std": best.get("value_std"), "folds": best.get("folds") or 1},
        "test": metrics,
        "optimism": estimate - metrics["test_dice"] if objective.endswith("val_dice") else None,
        "per_case": report.to_dict(),
    }
    experiment.write_test_results(payload)
    report.to_csv(experiment.file(TEST_CASES))
    _record_in_export(model_dir, payload)
    _log_to_parent(experiment, metrics, estimate, payload["optimism"])
    for line in _summary(payload, objective, report):
        echo(line)
    return payload


def _record_in_export(model_dir: Path, payload: dict[str, Any]) -> None:
    from hpsearch.experiment.state import write_atomic
    from hpsearch.export import META_FILE

    meta_path = model_dir / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["test"] = {k: payload[k] for k in ("test", "test_cases", "test_source", "validation_estimate", "optimism")}
    write_atomic(meta_path, json.dumps(meta, indent=2, default=str) + "\n")


def _log_to_parent(experiment: Experiment, metrics: dict[str, float], estimate: float, optimism) -> None:
    runs = experiment.runs
    extra = {"validation_estimate": estimate, **({"test_optimism": optimism} if optimism is not None else {})}
    runs.log_parent_metrics({**metrics, **extra})
    runs.log_artifacts([experiment.file(TEST_RESULTS), experiment.file(TEST_CASES)], "test")


def _summary(payload: dict[str, Any], objective: str, report) -> list[str]:
    estimate = payload["validation_estimate"]
    std = estimate.get("std")  # NaN (one fold) or None (one split): no spread to show
    spread = f" ±{std:.4f}" if isinstance(std, float) and math.isfinite(std) else ""
    lines = [f"locked test split ({payload['test_cases']} case(s), {payload['test_source']}), "
             f"{payload['model']}: test_dice {payload['test']['test_dice']:.4f}",
             *("  " + line for line in report.format().splitlines()),
             f"validation estimate {objective} {estimate[objective]:.4f}{spread} over "
             f"{estimate['folds']} fold(s)"]
    if payload["optimism"] is not None:
        lines.append(f"optimism (validation estimate - test): {payload['optimism']:+.4f}")
    return lines
