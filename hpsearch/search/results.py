"""The outcome of a search: one row per trial, a printed table and ``results.json``.

A row says what a user asks of a trial: its sampled hyperparameters, its best
validation Dice and at which epoch, how many epochs it ran, and its
:class:`~hpsearch.outcome.Outcome` (completed, stopped early by ASHA, or failed and why).
The :class:`~hpsearch.experiment.Experiment` writes the rows as ``results.json``, which
``hpsearch export`` reads to find the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from hpsearch.failures import classify_failure
from hpsearch.outcome import ERROR_KEY, FAILURE_KEY, Outcome, decide_outcome


@dataclasses.dataclass
class TrialSummary:
    trial_id: str
    params: dict[str, Any]
    best_value: float
    best_epoch: int
    epochs_run: int
    epoch_cap: int
    status: str  # an Outcome word: completed | stopped_early | failed
    error: str = ""
    failure: str = ""  # for a failed trial, its hpsearch.failures kind (nan, out_of_memory, ...)
    checkpoint: str = ""
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    folds: int = 0  # cross-validation: folds completed (best_value is their mean); 0 on one split
    value_std: float = math.nan  # cross-validation: spread of the folds' best values


def summarise(result_grid, metric: str, mode: str) -> list[TrialSummary]:
    """Rows for every trial of a finished ``ResultGrid``, best first.

    ``metric`` is the search's objective: on one split, a trial's value is its best epoch's;
    across folds (``cv_<metric>``, :mod:`hpsearch.search.folds`) it is the mean over the
    folds it completed, and trials with more folds rank first (a mean over five folds is
    not beaten by one lucky fold). A trial's checkpoint is its latest: it holds the best
    epoch's weights (and every finished fold's model).
    """
    rows = []
    for result in result_grid:
        frame = result.metrics_dataframe
        history = [] if frame is None else _history(frame)
        values = [h[metric] for h in history if metric in h and math.isfinite(h[metric])]
        pick = max if mode == "max" else min
        best = pick(values) if values else float("nan")
        best_epoch = next((int(h["training_iteration"]) for h in history if h.get(metric) == best), 0)
        last = result.metrics or {}  # empty for a trial that never reported an epoch
        folds = int(last.get("cv_folds") or 0)
        if folds:  # the mean over completed folds, not an epoch of fold 0 that beat it
            best, best_epoch = float(last.get(metric, math.nan)), 0
        epochs_run = int(last.get("training_iteration", len(history)))
        epoch_cap = int(last.get("epoch_cap", epochs_run))
        failure = str(last.get(FAILURE_KEY) or "")
        if result.error is not None and not failure:
            failure = classify_failure(_first_line(result.error))
        status = decide_outcome(epochs_run=epochs_run, epoch_cap=epoch_cap,
                                failed=result.error is not None or bool(last.get(FAILURE_KEY)))
        checkpoint = ""
        if status.scored:
            checkpoint = _latest(result)
        rows.append(
            TrialSummary(
                trial_id=str(last.get("trial_id", Path(result.path).name.removeprefix("trial_"))),
                params=dict(result.config or {}),  # None when the trial failed before it started
                best_value=best,
                best_epoch=best_epoch,
                epochs_run=epochs_run,
                epoch_cap=epoch_cap,
                status=status.value,
                error=str(last.get(ERROR_KEY) or _first_line(result.error)),
                failure=failure if status is Outcome.FAILED else "",
                checkpoint=checkpoint,
                history=history,
                folds=folds,
                value_std=float(last.get(f"{metric}_std", math.nan)) if folds else math.nan,
            )
        )
    return sort_rows(rows, mode)


def merge_rows(earlier: list[TrialSummary], latest: list[TrialSummary], mode: str) -> list[TrialSummary]:
    """One ranking of every trial of a search that ran in several Ray Tune runs (an extended
    search): ``latest`` (the run that just ended) replaces rows of the same trial in
    ``earlier`` (the rows ``results.json`` had), best first."""
    ids = {row.trial_id for row in latest}
    return sort_rows([*(row for row in earlier if row.trial_id not in ids), *latest], mode)


def rows_from_payload(payload: dict[str, Any]) -> list[TrialSummary]:
    """The rows of a ``results.json`` payload (keys an older or newer hpsearch wrote, or
    lacks, are dropped or defaulted)."""
    names = {field.name for field in dataclasses.fields(TrialSummary)}
    return [TrialSummary(**{k: v for k, v in row.items() if k in names})
            for row in payload.get("trials", []) if isinstance(row, dict) and "trial_id" in row]


def sort_rows(rows: list[TrialSummary], mode: str) -> list[TrialSummary]:
    """Best first: scored trials (completed, stopped early) by completed folds, then by their
    value; then the rest."""
    def key(row: TrialSummary) -> tuple[int, int, float]:
        if math.isnan(row.best_value) or not Outcome.parse(row.status).scored:
            return (1, 0, math.inf)
        return (0, -row.folds, -row.best_value if mode == "max" else row.best_value)

    return sorted(rows, key=key)


def format_table(rows: list[TrialSummary], metric: str, top: int = 10) -> str:
    """The top trials as an aligned text table."""
    names = sorted({k for row in rows for k in row.params})
    folds = any(row.folds for row in rows)  # cross-validated: the fold count, not a best epoch
    header = ["trial", f"best {metric}", "folds" if folds else "epoch", "ran", "status", *names]
    lines = [header]
    for row in rows[:top]:
        status = row.status if row.status != Outcome.STOPPED_EARLY else f"ASHA stop @{row.epochs_run}"
        status = f"{status} ({row.failure})" if row.failure else status
        value = f"{row.best_value:.4f}"
        if row.folds > 1 and math.isfinite(row.value_std):
            value += f" ±{row.value_std:.4f}"
        lines.append(
            [row.trial_id, value, str(row.folds if folds else row.best_epoch), f"{row.epochs_run}/{row.epoch_cap}",
             status, *(format_value(row.params.get(n)) for n in names)]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _history(frame) -> list[dict[str, float]]:
    """The epochs of the trial's last attempt. Ray's table keeps every attempt: a trial
    restored from its checkpoint at epoch k (or restarted without one) reports epoch k + 1
    again, and the epochs the earlier attempt ran past k are gone with its process (its
    weights too), so a record drops every earlier record at its epoch or after."""
    keep = [c for c in frame.columns
            if c in ("training_iteration", "fold", "fold_epoch", "budget") or c.startswith(("val_", "loss", "lr", "cv_"))]
    history: list[dict[str, float]] = []
    for record in frame[keep].to_dict("records"):
        row = {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}
        while history and history[-1].get("training_iteration", 0) >= row.get("training_iteration", math.inf):
            history.pop()
        history.append(row)
    return history


def _latest(result) -> str:
    # The latest checkpoint is the one to export: the trainer saves its best epoch's weights
    # in every checkpoint (Trainer.save), and a cross-validated trial's every finished fold.
    return result.checkpoint.path if result.checkpoint else ""


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:500]


def format_value(value: Any) -> str:
    """A parameter value as the results table shows it."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)
