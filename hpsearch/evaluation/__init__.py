"""Evaluating segmentations in the scan's own geometry: Dice, IoU and HD95 per case.

* :mod:`~hpsearch.evaluation.scores`: one case's scores per class and region (pure functions);
* :mod:`~hpsearch.evaluation.report`: :class:`Evaluator` and :class:`EvaluationReport`
  (class means, MLflow metrics, CSV, JSON, a table);
* :mod:`~hpsearch.evaluation.folders`: predictions against label files, or an exported
  model on a dataset's cases;
* :mod:`~hpsearch.evaluation.command`: ``hpsearch evaluate`` (model or prediction folder).

No TensorFlow is imported here; :func:`evaluate_model` imports it when it runs.
"""

from __future__ import annotations

from hpsearch.evaluation.folders import evaluate_folders, evaluate_model, labelled_cases, score_files
from hpsearch.evaluation.report import CaseScores, EvaluationReport, Evaluator
from hpsearch.evaluation.scores import case_scores, check_labels

__all__ = [
    "CaseScores",
    "EvaluationReport",
    "Evaluator",
    "case_scores",
    "check_labels",
    "evaluate_folders",
    "evaluate_model",
    "labelled_cases",
    "score_files",
]
