"""Static PNGs of the main plots, for people who only open the MLflow run page.

Matplotlib, not Plotly's image export: that needs Kaleido, which downloads a browser at
run time. The series and colours are the interactive figures' own
(:mod:`hpsearch.dashboard.figures`), so both versions always agree.
"""

from __future__ import annotations

import io
import math

from hpsearch.dashboard.collect import Search
from hpsearch.dashboard.figures import (
    SEARCH_COLORS,
    asha_rungs,
    outcome_style,
    parallel_dimensions,
    progress_series,
)
from hpsearch.dashboard.importance import Importance


def pyplot():
    """Matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """A Matplotlib figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return buffer.getvalue()


def progress_png(search: Search) -> bytes:
    """Best score so far against cumulative training epochs and against wall time."""
    plt, p = pyplot(), progress_series(search)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in ((axes[0], p.epochs, "cumulative training epochs (all trials)"),
                         (axes[1], p.minutes, "wall time (minutes)")):
        ax.scatter(x, p.values, s=10, color="#bdbdbd", label=f"an epoch's {search.metric_label}")
        ax.step(x, p.best, where="post", color="#1f77b4", linewidth=2.5, label=f"best {search.metric_label} so far")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(search.metric_label)
    axes[0].legend(loc="lower right")
    best = next((b for b in reversed(p.best) if math.isfinite(b)), math.nan)
    fig.suptitle(f"{search.name}: what the search bought (best {search.metric_label} {best:.4f})")
    fig.tight_layout()
    return png_bytes(fig)


def curves_png(search: Search) -> bytes:
    """Every trial's curve by epoch, coloured by outcome, ASHA's rungs dotted."""
    plt, rungs = pyplot(), asha_rungs(search)
    fig, ax = plt.subplots(figsize=(11, 4.8))
    labelled: set[str] = set()
    for trial in sorted(search.trials, key=lambda t: t.status == "completed"):  # completed on top
        label, color = outcome_style(trial, rungs)
        ax.plot(trial.epochs, trial.values, marker="o", markersize=3, color=color,
                linestyle=":" if trial.status == "failed" else "-",
                label=None if label in labelled else label)
        labelled.add(label)
    for rung in rungs:
        ax.axvline(rung, color="#969696", linestyle=":", linewidth=1)
    ax.set_xlabel("epoch (dotted: ASHA rungs)" if rungs else "epoch")
    ax.set_ylabel(search.metric_label)
    ax.set_title(f"{search.name}: each trial's {search.metric_label} by epoch, coloured by outcome")
    ax.grid(alpha=0.3)
    ax.legend(title="outcome", loc="best", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def parallel_png(search: Search) -> bytes:
    """Parallel coordinates: each axis scaled to its range, one line per finished trial."""
    import matplotlib.colors

    plt = pyplot()
    dims, scores = parallel_dimensions(search)
    fig, ax = plt.subplots(figsize=(11, 4.6))
    low, high = min(scores), max(scores)
    norm = matplotlib.colors.Normalize(low, high if high > low else low + 1e-9)
    cmap = plt.get_cmap("viridis_r" if search.mode == "min" else "viridis")

    def scaled(dim: dict, value: float) -> float:
        lo, hi = dim.get("range") or (min(dim["values"]), max(dim["values"]))
        return 0.5 if hi == lo else (value - lo) / (hi - lo)

    for i, score in sorted(enumerate(scores), key=lambda item: item[1]):  # the best drawn last, on top
        ax.plot(range(len(dims)), [scaled(d, d["values"][i]) for d in dims], color=cmap(norm(score)), alpha=0.85)
    for x, dim in enumerate(dims):
        ax.axvline(x, color="#969696", linewidth=1)
        ticks = dim.get("tickvals") or list(dim.get("range") or [])
        labels = dim.get("ticktext") or [f"{t:.3g}" for t in ticks]
        for tick, text in zip(ticks, labels):
            ax.text(x + 0.03, scaled(dim, tick), text, fontsize=7, va="center", color="#444")
    ax.set_xticks(range(len(dims)), [d["label"] for d in dims], fontsize=8, rotation=15)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(dims) - 0.6)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {search.metric_label}")
    ax.set_title(f"{search.name}: hyperparameters against best {search.metric_label} ({len(scores)} trials)")
    fig.tight_layout()
    return png_bytes(fig)


def importance_png(importance: Importance) -> bytes | None:
    """Horizontal bars of each evaluator's importances; None if there are none."""
    if not importance.scores:
        return None
    plt = pyplot()
    params = sorted({p for s in importance.scores.values() for p in s},
                    key=lambda p: max(s.get(p, 0.0) for s in importance.scores.values()))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(params)))
    height = 0.8 / len(importance.scores)
    for i, (name, scores) in enumerate(importance.scores.items()):
        ax.barh([j + i * height for j in range(len(params))], [scores.get(p, 0.0) for p in params],
                height=height, label=name)
    ax.set_yticks([j + height * (len(importance.scores) - 1) / 2 for j in range(len(params))], params)
    ax.set_xlabel("importance (each evaluator sums to 1)")
    ax.set_title(f"Hyperparameter importance (Optuna, {importance.trials} finished trials)")
    ax.legend(title="evaluator")
    fig.tight_layout()
    return png_bytes(fig)


def compare_png(searches: list[Search]) -> bytes:
    """Best score so far of several searches against compute and against wall time."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, search in enumerate(searches):
        p = progress_series(search)
        color = SEARCH_COLORS[i % len(SEARCH_COLORS)]
        for ax, x in ((axes[0], p.compute_minutes), (axes[1], p.minutes)):
            ax.step(x, p.best, where="post", color=color, linewidth=2.5,
                    label=f"{search.name} ({search.sampler}, {search.scheduler.get('type', '?')})")
    axes[0].set_xlabel("compute (trial-minutes)")
    axes[1].set_xlabel("wall time (minutes)")
    axes[0].set_ylabel(f"best {searches[0].metric_label} so far")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Best score against what each search spent")
    fig.tight_layout()
    return png_bytes(fig)
