"""Plotly figures of a search, pure functions of a :class:`~hpsearch.dashboard.collect.Search`.

What each answers:

* :func:`progress_figure`: what the search bought, the best score so far against the
  training epochs spent (all trials together) and against wall time;
* :func:`curves_figure`: every trial's curve by epoch, coloured by its outcome, with ASHA's
  rungs drawn, so each early stop can be judged against the trials that went on;
* :func:`parallel_figure`: which regions of the space gave good scores;
* :func:`importance_figure`: which parameters mattered (Optuna's evaluators);
* :func:`compare_figure`: several searches, best score against wall time and compute.

The series behind them (:func:`progress_series`, :func:`outcome_style`, :func:`asha_rungs`)
are shared with the static Matplotlib versions in :mod:`hpsearch.dashboard.static`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hpsearch.dashboard.collect import Search, Trial
from hpsearch.dashboard.importance import Importance
from hpsearch.search.results import format_value
from hpsearch.space import Choice, IntRange, LogUniform

COLORS = {"completed": "#1a9850", "failed": "#d73027", "running": "#969696"}
# ASHA stops get shades of orange, darker for a later rung: the colour tells the rung.
STOPPED_SHADES = ("#fdae61", "#f46d43", "#e08214", "#b35806", "#7f3b08")
SEARCH_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TEMPLATE = "plotly_white"


@dataclasses.dataclass
class Progress:
    """Every logged epoch of a search in the order it was logged, with the best value so far.

    Attributes:
        epochs: Cumulative training epochs, all trials together, after each logged epoch.
        minutes: Wall time since the search started (minutes).
        compute_minutes: Cumulative epoch time of all trials (trial-minutes): what a
            search costs whatever its parallelism.
        values: The epoch's value of the metric.
        best: The best value of the metric so far (NaN until a first finite one).
        trial_ids: The trial each epoch belongs to.
    """

    epochs: list[int]
    minutes: list[float]
    compute_minutes: list[float]
    values: list[float]
    best: list[float]
    trial_ids: list[str]


def progress_series(search: Search) -> Progress:
    """All epochs of all trials, ordered by when MLflow logged them."""
    events = sorted(
        (ms, trial.trial_id, value, seconds)
        for trial in search.trials
        for ms, value, seconds in zip(trial.logged_ms, trial.values, trial.epoch_seconds)
    )
    sign = 1 if search.mode == "max" else -1
    out = Progress([], [], [], [], [], [])
    best, compute = math.nan, 0.0
    for count, (ms, trial_id, value, seconds) in enumerate(events, start=1):
        if math.isfinite(value) and (math.isnan(best) or sign * value > sign * best):
            best = value
        compute += seconds if math.isfinite(seconds) else 0.0
        out.epochs.append(count)
        out.minutes.append(max(ms - search.start_ms, 0) / 60000)
        out.compute_minutes.append(compute / 60)
        out.values.append(value)
        out.best.append(best)
        out.trial_ids.append(trial_id)
    return out


def asha_rungs(search: Search) -> list[int]:
    """The epochs at which ASHA compared trials (Ray's rungs below the maximum), ascending."""
    sched = search.scheduler
    if sched.get("type") != "asha":
        return []
    grace, factor, top = int(sched.get("grace_period", 1)), float(sched.get("reduction_factor", 3)), \
        int(sched.get("max_epochs", 0))
    rungs, epoch = [], grace
    while epoch < top and factor > 1:
        rungs.append(int(epoch))
        epoch = int(round(epoch * factor))
    return rungs


def outcome_style(trial: Trial, rungs: list[int]) -> tuple[str, str]:
    """The legend label and colour of a trial's outcome; a stop names its rung."""
    if trial.status == "stopped_early":
        epoch = trial.stopped_at_epoch or (trial.epochs[-1] if trial.epochs else 0)
        index = rungs.index(epoch) if epoch in rungs else len(rungs)
        label = f"stopped by ASHA at rung {epoch}" if epoch in rungs else f"stopped early at epoch {epoch}"
        return label, STOPPED_SHADES[min(index, len(STOPPED_SHADES) - 1)]
    label = {"completed": "completed", "failed": "failed", "running": "unfinished"}.get(trial.status, trial.status)
    return label, COLORS.get(trial.status, COLORS["running"])


def progress_figure(search: Search) -> go.Figure:
    """Best score so far against cumulative training epochs (left) and wall time (right)."""
    p = progress_series(search)
    label = search.metric_label
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "against training epochs spent (all trials)", "against wall time"))
    for col, x, x_title in ((1, p.epochs, "cumulative training epochs"), (2, p.minutes, "wall time (minutes)")):
        fig.add_trace(go.Scatter(x=x, y=p.values, mode="markers", name=f"an epoch's {label}",
                                 marker=dict(size=5, color="#bdbdbd"), showlegend=col == 1,
                                 text=p.trial_ids, hovertemplate="trial %{text}<br>%{y:.4f}<extra></extra>"),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=x, y=p.best, mode="lines", line=dict(shape="hv", width=3, color="#1f77b4"),
                                 name=f"best {label} so far", showlegend=col == 1,
                                 hovertemplate="best so far %{y:.4f}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=x_title, row=1, col=col)
        fig.update_yaxes(title_text=f"{label}" if col == 1 else None, row=1, col=col)
    best = next((b for b in reversed(p.best) if math.isfinite(b)), math.nan)
    title = f"What the search bought: best {label} {best:.4f}" if math.isfinite(best) else "Search progress"
    fig.update_layout(title=title, template=TEMPLATE, height=420, legend=dict(orientation="h", y=-0.2))
    return fig


def curves_figure(search: Search) -> go.Figure:
    """Every trial's metric by epoch, coloured by outcome, ASHA's rungs as dotted lines."""
    rungs = asha_rungs(search)
    fig = go.Figure()
    shown: set[str] = set()
    ordered = sorted(search.trials, key=lambda t: _outcome_rank(t))
    for trial in ordered:
        label, color = outcome_style(trial, rungs)
        params = "<br>".join(f"{k}={format_value(v)}" for k, v in sorted(trial.params.items()))
        extra = f"<br>{trial.error[:120]}" if trial.error else ""
        fig.add_trace(go.Scatter(
            x=trial.epochs, y=trial.values, mode="lines+markers", name=_count_label(search, label, rungs),
            legendgroup=label, showlegend=label not in shown,
            line=dict(color=color, width=2, dash="dot" if trial.status == "failed" else "solid"),
            marker=_stop_marker(trial, color),
            hovertemplate=f"trial {trial.trial_id} ({label})<br>epoch %{{x}}: %{{y:.4f}}<br>{params}{extra}"
                          "<extra></extra>"))
        shown.add(label)
    for rung in rungs:
        fig.add_vline(x=rung, line=dict(color="#969696", dash="dot", width=1),
                      annotation_text=f"ASHA rung {rung}", annotation_position="top")
    empty = [t.trial_id for t in search.trials if not t.epochs]
    subtitle = f" ({len(empty)} trial(s) failed before a first epoch: {', '.join(empty[:5])})" if empty else ""
    fig.update_layout(title=f"Each trial's {search.metric_label} by epoch, coloured by outcome{subtitle}",
                      xaxis_title="epoch", yaxis_title=search.metric_label, template=TEMPLATE, height=480,
                      legend=dict(title="outcome"))
    fig.update_xaxes(dtick=1 if max((len(t.epochs) for t in search.trials), default=0) <= 20 else None)
    return fig


def parallel_dimensions(search: Search) -> tuple[list[dict[str, Any]], list[float]]:
    """The axes of the parallel coordinates (Parcoords ``dimensions``) and each finished
    trial's best score: log axes for log distributions, indexed ticks for choices."""
    trials = search.finished()
    names = [n for n in search.space if any(n in t.params for t in trials)] or \
        sorted({k for t in trials for k in t.params})
    dims = [_dimension(name, search.space.get(name), [t.params.get(name) for t in trials]) for name in names]
    scores = [t.best(search.mode)[0] for t in trials]
    dims.append(dict(label=f"best {search.metric_label}", values=scores, range=[min(scores), max(scores)]))
    return dims, scores


def parallel_figure(search: Search) -> go.Figure:
    """Parallel coordinates: one line per finished trial through its hyperparameters and score."""
    trials = search.finished()
    dims, scores = parallel_dimensions(search)
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line=dict(color=scores, colorscale="Viridis", showscale=True, reversescale=search.mode == "min",
                  colorbar=dict(title=dict(text=f"best<br>{search.metric_label}")))))
    failed = len(search.trials) - len(trials)
    note = f"; {failed} failed or unfinished trial(s) have no score and are left out" if failed else ""
    fig.update_layout(title=f"Hyperparameters against best {search.metric_label} ({len(trials)} trials{note})",
                      template=TEMPLATE, height=440, margin=dict(l=80, r=80, t=110, b=40))
    return fig


def importance_figure(importance: Importance) -> go.Figure | None:
    """Bars of each evaluator's importances; None when there are none (see ``message``)."""
    if not importance.scores:
        return None
    params = sorted({p for scores in importance.scores.values() for p in scores},
                    key=lambda p: -max(s.get(p, 0.0) for s in importance.scores.values()))
    fig = go.Figure()
    for (name, scores), color in zip(importance.scores.items(), ("#1f77b4", "#ff7f0e", "#2ca02c")):
        fig.add_trace(go.Bar(y=params, x=[scores.get(p, 0.0) for p in params], name=name, orientation="h",
                             marker_color=color, hovertemplate=f"{name}: %{{y}} %{{x:.3f}}<extra></extra>"))
    fig.update_layout(title=f"Hyperparameter importance (Optuna, {importance.trials} finished trials)",
                      xaxis_title="importance (each evaluator sums to 1)", yaxis=dict(autorange="reversed"),
                      barmode="group", template=TEMPLATE, height=max(260, 90 + 45 * len(params)),
                      legend=dict(title="evaluator"))
    return fig


def compare_figure(searches: list[Search]) -> go.Figure:
    """Best score so far of several searches against wall time and against compute spent."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "against compute (sum of all trials' epoch times)", "against wall time"))
    labels = {s.metric_label for s in searches}
    for search, color in zip(searches, _cycle(SEARCH_COLORS, len(searches))):
        p = progress_series(search)
        name = f"{search.name} ({search.model}, {search.sampler}, {search.scheduler.get('type', '?')})"
        for col, x in ((1, p.compute_minutes), (2, p.minutes)):
            fig.add_trace(go.Scatter(x=x, y=p.best, mode="lines", line=dict(shape="hv", width=3, color=color),
                                     name=name, legendgroup=name, showlegend=col == 1,
                                     hovertemplate=f"{search.name}<br>%{{x:.1f}} min: best %{{y:.4f}}<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="compute (trial-minutes)", row=1, col=1)
    fig.update_xaxes(title_text="wall time (minutes)", row=1, col=2)
    label = labels.pop() if len(labels) == 1 else "metric"
    fig.update_yaxes(title_text=f"best {label} so far", row=1, col=1)
    fig.update_layout(title=f"Best {label} against what each search spent", template=TEMPLATE, height=460,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def _dimension(name: str, dist: Any, values: list[Any]) -> dict[str, Any]:
    """A Parcoords axis: log axes for log distributions, indexed ticks for choices."""
    if isinstance(dist, Choice) or any(isinstance(v, str) or v is None for v in values):
        choices = list(dist.values) if isinstance(dist, Choice) else sorted({str(v) for v in values})
        index = {repr(c): i for i, c in enumerate(choices)}
        coded = [index.get(repr(v), index.get(repr(str(v)), -1)) for v in values]
        return dict(label=name, values=coded, tickvals=list(range(len(choices))),
                    ticktext=[format_value(c) for c in choices], range=[-0.2, len(choices) - 0.8])
    log = isinstance(dist, LogUniform) or (isinstance(dist, IntRange) and dist.log)
    low, high = (dist.low, dist.high) if dist is not None else (min(values), max(values))
    if log:
        ticks = _log_ticks(low, high)
        return dict(label=f"{name} (log)", values=[math.log10(v) for v in values], range=[math.log10(low),
                    math.log10(high)], tickvals=[math.log10(t) for t in ticks], ticktext=[f"{t:g}" for t in ticks])
    if isinstance(dist, IntRange):
        return dict(label=name, values=values, range=[low, high], tickvals=list(range(low, high + 1))
                    if high - low <= 10 else None)
    return dict(label=name, values=values, range=[low, high])


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
             for m in (1, 3)]
    return [t for t in ticks if low <= t <= high] or [low, high]


def _stop_marker(trial: Trial, color: str) -> dict[str, Any]:
    """Dots on every epoch; a cross where ASHA stopped the trial or it failed."""
    if trial.status not in ("stopped_early", "failed") or not trial.epochs:
        return dict(size=5, color=color)
    last = len(trial.epochs) - 1
    return dict(color=color, symbol=["circle"] * last + ["x"], size=[5] * last + [11])


def _outcome_rank(trial: Trial) -> int:
    # Drawn in this order so completed curves end up on top of stopped and failed ones.
    return {"failed": 0, "running": 1, "stopped_early": 2, "completed": 3}.get(trial.status, 1)


def _count_label(search: Search, label: str, rungs: list[int]) -> str:
    count = sum(outcome_style(t, rungs)[0] == label for t in search.trials)
    return f"{label} ({count})"


def _cycle(colors: tuple[str, ...], n: int) -> list[str]:
    return [colors[i % len(colors)] for i in range(n)]
