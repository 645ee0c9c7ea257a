"""Scores of a set of cases: per-case rows, class means, MLflow metrics, CSV and JSON.

:class:`Evaluator` accumulates cases (``add``) like :class:`hpsearch.metrics.DiceMetric`
and hands back an :class:`EvaluationReport`. The report's :attr:`~EvaluationReport.mean_dice`
is defined as training's validation Dice (:attr:`hpsearch.metrics.SegmentationScores.mean_dice`):
Dice per case and class, mean over cases per class, mean over foreground classes.
Regions are reported like classes but never enter that mean.

Example:
    >>> evaluator = Evaluator([0, 1], ["background", "LV"])
    >>> truth = np.zeros((4, 4, 4), np.uint8); truth[1:3, 1:3, 1:3] = 1
    >>> _ = evaluator.add("case_0", truth, truth, spacing=(1.5, 1.5, 4.0))
    >>> evaluator.report().metrics()
    {'test_dice': 1.0, 'test_dice_LV': 1.0, 'test_iou_LV': 1.0, 'test_hd95_LV': 0.0}
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.evaluation.scores import SCORES, case_scores, check_labels
from hpsearch.experiment.state import write_atomic
from hpsearch.metrics import SegmentationScores
from hpsearch.selection import metric_name


@dataclasses.dataclass(frozen=True)
class CaseScores:
    """One case's scores: ``{class or region name: {"dice", "iou", "hd95"}}``."""

    case_id: str
    scores: dict[str, dict[str, float]]


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """Per-case scores of every foreground class and region.

    Attributes:
        label_values: Every label value, background 0 included (ascending).
        class_names: The name of each value, aligned with ``label_values``.
        regions: Region name -> the label values it unites.
        cases: One row per case, in evaluation order.
    """

    label_values: tuple[int, ...]
    class_names: tuple[str, ...]
    regions: dict[str, tuple[int, ...]]
    cases: tuple[CaseScores, ...]

    @property
    def foreground(self) -> list[str]:
        """The foreground class names, in ascending label value."""
        return [n for v, n in zip(self.label_values, self.class_names) if v != 0]

    @property
    def names(self) -> list[str]:
        """Foreground classes, then regions: the columns of every table."""
        return [*self.foreground, *self.regions]

    @property
    def mean_dice(self) -> float:
        """Mean foreground Dice, exactly as training's validation defines it."""
        means = self.class_means()
        per_class = np.array([np.nan, *(means[n]["dice"] for n in self.foreground)])  # index 0: background
        return SegmentationScores(dice=per_class, iou=per_class, num_cases=len(self.cases)).mean_dice

    def class_means(self) -> dict[str, dict[str, float]]:
        """``{name: {"dice", "iou", "hd95"}}`` averaged over cases (NaN without cases)."""
        return {
            name: {s: float(np.mean([c.scores[name][s] for c in self.cases])) if self.cases else float("nan")
                   for s in SCORES}
            for name in self.names
        }

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat MLflow metrics: ``<prefix>dice`` (mean foreground Dice) and
        ``<prefix><score>_<name>`` per class and region, names made metric-safe."""
        flat = {f"{prefix}dice": self.mean_dice}
        for name, means in self.class_means().items():
            flat.update({f"{prefix}{s}_{metric_name(name)}": means[s] for s in SCORES})
        return flat

    def to_csv(self, path: str | Path) -> Path:
        """One row per case, columns ``case,<name>_dice,<name>_iou,<name>_hd95,...``; written atomically."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", *(f"{n}_{s}" for n in self.names for s in SCORES)])
        for case in self.cases:
            writer.writerow([case.case_id, *(repr(case.scores[n][s]) for n in self.names for s in SCORES)])
        write_atomic(Path(path), buffer.getvalue())
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the declaration, a summary (means, metrics) and every case."""
        return {
            "label_values": list(self.label_values),
            "class_names": list(self.class_names),
            "regions": {n: list(v) for n, v in self.regions.items()},
            "summary": {"num_cases": len(self.cases), "mean_dice": self.mean_dice, "means": self.class_means()},
            "cases": [{"case": c.case_id, "scores": c.scores} for c in self.cases],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EvaluationReport:
        """The inverse of :meth:`to_dict` (the summary is recomputed, not read)."""
        return cls(
            label_values=tuple(int(v) for v in raw["label_values"]),
            class_names=tuple(raw["class_names"]),
            regions={n: tuple(int(x) for x in v) for n, v in raw["regions"].items()},
            cases=tuple(CaseScores(str(c["case"]), {n: {s: float(v[s]) for s in SCORES} for n, v in c["scores"].items()})
                        for c in raw["cases"]),
        )

    def to_json(self, path: str | Path) -> Path:
        """:meth:`to_dict` as indented JSON, written atomically."""
        write_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def format(self) -> str:
        """A short table: mean Dice, IoU and HD95 per class and region, and the case count."""
        width = max(12, *(len(n) for n in self.names)) + 2
        lines = [f"{'':{width}}{'dice':>8}{'iou':>8}{'hd95 mm':>10}{'cases':>7}"]
        for name, m in self.class_means().items():
            label = f"{name} ({'+'.join(map(str, self.regions[name]))})" if name in self.regions else name
            lines.append(f"{label:{width}}{m['dice']:8.4f}{m['iou']:8.4f}{m['hd95']:10.2f}{len(self.cases):7d}")
        lines.append(f"mean foreground Dice {self.mean_dice:.4f} over {len(self.cases)} case(s) (regions excluded)")
        return "\n".join(lines)


class Evaluator:
    """Accumulate cases with :func:`~hpsearch.evaluation.scores.case_scores`, then report.

    Args:
        label_values: Every label value, background 0 included.
        class_names: The name of each value, aligned with ``label_values``.
        regions: Region name -> label values whose union it scores.

    Raises:
        ValueError: A bad declaration (:func:`~hpsearch.evaluation.scores.check_labels`).
    """

    def __init__(self, label_values: Sequence[int], class_names: Sequence[str],
                 regions: Mapping[str, Sequence[int]] | None = None):
        self.regions = check_labels(label_values, class_names, regions)
        order = sorted(zip((int(v) for v in label_values), (str(n) for n in class_names)))
        self.label_values = tuple(v for v, _ in order)
        self.class_names = tuple(n for _, n in order)
        self._cases: dict[str, CaseScores] = {}

    def add(self, case_id: str, pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
        """Score one case (see :func:`~hpsearch.evaluation.scores.case_scores`); return its scores.

        Raises:
            ValueError: The case id was added before, or the maps are unfit.
        """
        if case_id in self._cases:
            raise ValueError(f"case {case_id!r} added twice")
        scores = case_scores(pred, truth, label_values=self.label_values, class_names=self.class_names,
                             spacing=spacing, regions=self.regions)
        self._cases[case_id] = CaseScores(case_id, scores)
        return scores

    def report(self) -> EvaluationReport:
        return EvaluationReport(self.label_values, self.class_names, dict(self.regions), tuple(self._cases.values()))
