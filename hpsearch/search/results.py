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


def summarise(result_grid, metric: str, mode: str) -> list[TrialSummary]:
    """Rows for every trial of a finished ``ResultGrid``, best first."""
    rows = []
    for result in result_grid:
        frame = result.metrics_dataframe
        history = [] if frame is None else _history(frame)
        values = [h[metric] for h in history if metric in h and math.isfinite(h[metric])]
        pick = max if mode == "max" else min
        best = pick(values) if values else float("nan")
        best_epoch = next((int(h["training_iteration"]) for h in history if h.get(metric) == best), 0)
        last = result.metrics or {}  # empty for a trial that never reported an epoch
        epochs_run = int(last.get("training_iteration", len(history)))
        epoch_cap = int(last.get("epoch_cap", epochs_run))
        failure = str(last.get(FAILURE_KEY) or "")
        if result.error is not None and not failure:
            failure = classify_failure(_first_line(result.error))
        status = decide_outcome(epochs_run=epochs_run, epoch_cap=epoch_cap,
                                failed=result.error is not None or bool(last.get(FAILURE_KEY)))
        checkpoint = _best_checkpoint(result, metric, mode) if status.scored else ""
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
            )
        )
    return sort_rows(rows, mode)


def sort_rows(rows: list[TrialSummary], mode: str) -> list[TrialSummary]:
    """Best first: scored trials (completed, stopped early) by their best value, then the rest."""
    def key(row: TrialSummary) -> float:
        if math.isnan(row.best_value) or not Outcome.parse(row.status).scored:
            return math.inf
        return -row.best_value if mode == "max" else row.best_value

    return sorted(rows, key=key)


def format_table(rows: list[TrialSummary], metric: str, top: int = 10) -> str:
    """The top trials as an aligned text table."""
    names = sorted({k for row in rows for k in row.params})
    header = ["trial", f"best {metric}", "epoch", "ran", "status", *names]
    lines = [header]
    for row in rows[:top]:
        status = row.status if row.status != Outcome.STOPPED_EARLY else f"ASHA stop @{row.epochs_run}"
        status = f"{status} ({row.failure})" if row.failure else status
        lines.append(
            [row.trial_id, f"{row.best_value:.4f}", str(row.best_epoch), f"{row.epochs_run}/{row.epoch_cap}",
             status, *(format_value(row.params.get(n)) for n in names)]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _history(frame) -> list[dict[str, float]]:
    keep = [c for c in frame.columns if c == "training_iteration" or c.startswith(("val_", "loss", "lr"))]
    return [
        {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}
        for record in frame[keep].to_dict("records")
    ]


def _best_checkpoint(result, metric: str, mode: str) -> str:
    scored = [(c, m.get(metric)) for c, m in (result.best_checkpoints or []) if m.get(metric) is not None]
    scored = [(c, v) for c, v in scored if math.isfinite(v)]
    if not scored:
        return result.checkpoint.path if result.checkpoint else ""
    pick = max if mode == "max" else min
    return pick(scored, key=lambda item: item[1])[0].path


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
