"""The dashboard of one search: collect, draw, write into the experiment folder, log to MLflow.

``<experiment>/dashboard/`` receives ``dashboard.html`` (self-contained) and the static
PNGs (``progress.png``, ``curves.png``, ``parallel.png``, ``importance.png``,
``predictions.png``); the same
files are logged under ``dashboard/`` in the search's parent MLflow run, where the HTML
opens in MLflow's artifact viewer and the PNGs show on the run page.
"""

from __future__ import annotations

import dataclasses
import html
import math
from pathlib import Path
from typing import Callable

from hpsearch.dashboard import figures, static
from hpsearch.dashboard.collect import Search, collect_search, require_finished
from hpsearch.dashboard.importance import Importance, compute_importance
from hpsearch.dashboard.overlays import Overlays, best_trial_overlays
from hpsearch.dashboard.page import (
    Section,
    figure_html,
    png_img,
    render_page,
    run_link,
    table_html,
)
from hpsearch.errors import HpsearchError, first_line
from hpsearch.outcome import Outcome
from hpsearch.search.results import format_value

DASHBOARD_DIR = "dashboard"
HTML_FILE = "dashboard.html"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `hpsearch ui` serves MLflow


@dataclasses.dataclass
class Written:
    """What a dashboard command wrote.

    Attributes:
        html: The HTML page.
        pngs: The static PNGs beside it.
        logged_to: The MLflow run the files were logged to ("" if not logged).
    """

    html: Path
    pngs: list[Path]
    logged_to: str = ""


def ui_base_for(search: Search, ui_base: str | None) -> str:
    """The MLflow UI address run links point to: given, the tracking server, or `hpsearch ui`'s."""
    if ui_base:
        return ui_base.rstrip("/")
    if search.tracking_uri.startswith(("http://", "https://")):
        return search.tracking_uri.rstrip("/")  # a tracking server serves its UI too
    return DEFAULT_UI


def write_dashboard(experiment_dir: Path, *, out: Path | None = None, log: bool = True,
                    ui_base: str | None = None, overlays: bool = True,
                    echo: Callable[[str], None] = print) -> Written:
    """Write the dashboard of a search (and by default log it to its parent MLflow run).

    Args:
        experiment_dir: The experiment folder ``hpsearch run`` printed.
        out: The HTML file (default ``<experiment>/dashboard/dashboard.html``); the PNGs
            go beside it.
        log: Log the HTML and PNGs under ``dashboard/`` in the parent run.
        ui_base: The MLflow UI address for run links (see :func:`ui_base_for`).
        overlays: Draw the best trial's predictions (imports TensorFlow).

    Raises:
        HpsearchError: Not an experiment folder, MLflow unreachable, no finished trial.
    """
    search = collect_search(Path(experiment_dir))
    require_finished(search)
    importance = compute_importance(search)
    pictures = _overlays(search) if overlays else Overlays(b"", message="not drawn (--no-overlays)")
    page = search_page(search, importance, pictures, ui_base_for(search, ui_base))
    out = Path(out) if out else search.experiment_dir / DASHBOARD_DIR / HTML_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    images = {"progress.png": static.progress_png(search), "curves.png": static.curves_png(search),
              "parallel.png": static.parallel_png(search), "importance.png": static.importance_png(importance),
              "predictions.png": pictures.png}
    pngs = []
    for name, data in images.items():
        if data:
            (out.parent / name).write_bytes(data)
            pngs.append(out.parent / name)
    written = Written(out, pngs)
    if log:
        log_files(search, [out, *pngs])
        written.logged_to = search.parent_run_id
    echo(f"dashboard: {out}" + (f" (logged to MLflow run {search.parent_run_id} under {DASHBOARD_DIR}/)"
                                if log else ""))
    return written


def log_files(search: Search, files: list[Path]) -> None:
    """Log files under ``dashboard/`` in the search's parent run (a finished run takes them too).

    Raises:
        HpsearchError: MLflow refused or is unreachable.
    """
    from hpsearch.tracking.runs import SearchRuns

    try:
        SearchRuns(search.tracking_uri, search.parent_run_id, search.experiment_id).log_artifacts(files, DASHBOARD_DIR)
    except HpsearchError as exc:
        raise HpsearchError(f"{exc}; run `hpsearch dashboard --no-log` to only write the files") from None


def search_page(search: Search, importance: Importance, pictures: Overlays, ui_base: str) -> str:
    """The HTML of one search's dashboard."""
    label = search.metric_label
    sections = [
        Section("What the search bought", figure_html(figures.progress_figure(search), "fig-progress"),
                "The best score found so far after every epoch any trial trained, against the epochs all "
                "trials trained together and against wall time since the search started.", "progress"),
        Section("Trials by epoch", figure_html(figures.curves_figure(search), "fig-curves"),
                "One line per trial. Orange shades: stopped by ASHA at that rung (the epoch where it was "
                "compared with the others); green: ran all its epochs; red dotted: failed. Hover a line "
                "for the trial's hyperparameters." if figures.asha_rungs(search) else
                "One line per trial; green: ran all its epochs, red dotted: failed.", "curves"),
        Section("Hyperparameters", figure_html(figures.parallel_figure(search), "fig-parallel"),
                f"One line per finished trial, coloured by its best {label}. Drag along an axis to select "
                "a range.", "parallel"),
        Section("Hyperparameter importance", figure_html(figures.importance_figure(importance), "fig-importance")
                or f'<p class="note">{html.escape(importance.message)}</p>',
                "fANOVA: share of the score's variance each parameter explains; PED-ANOVA: how much "
                "each parameter sets the best trials apart. "
                + (html.escape(importance.message) if importance.scores and importance.message else ""),
                "importance"),
        Section("All trials", '<p id="mlflow-viewer-note" class="note">Inside MLflow\'s artifact viewer the '
                "viewer's sandbox blocks opening links: right-click a run and choose "
                "\"Open link in new tab\".</p>" + trials_table(search, ui_base),
                "Click a column header to sort (shift-click for a second key); the search box filters.",
                "trials"),
        Section("Best trial's predictions", png_img(pictures.png, "predictions") if pictures.png else
                f'<p class="note">{html.escape(pictures.message)}</p>',
                "Validation slices with the most foreground (one per case first): the image, the ground "
                "truth and the prediction of the best trial's best checkpoint, with each class's Dice on "
                "the slice.", "predictions"),
    ]
    return render_page(f"hpsearch: {search.name}", _header(search, ui_base), sections)


def trials_table(search: Search, ui_base: str) -> str:
    """The sortable table of trials, best first, linking each to its MLflow run."""
    import pandas as pd

    rungs = figures.asha_rungs(search)
    names = list(search.space) or sorted({k for t in search.trials for k in t.params})
    rows = []
    for trial in search.trials:
        best, epoch = trial.best(search.mode)
        rows.append({
            "trial": run_link(ui_base, search.experiment_id, trial.run_id, trial.trial_id),
            "outcome": html.escape(figures.outcome_style(trial, rungs)[0]),
            f"best {search.metric_label}": round(best, 4) if math.isfinite(best) else None,
            "best epoch": epoch or None,
            "epochs run": len(trial.epochs),
            **{name: _cell(trial.params.get(name)) for name in names},
            "error": html.escape(trial.error[:200]),
        })
    frame = pd.DataFrame(rows)
    if not frame["error"].any():
        frame = frame.drop(columns="error")
    return table_html(frame, table_id="trials-table", order=[[2, "desc" if search.mode == "max" else "asc"]])


def _cell(value):
    # Numbers stay numbers so the column sorts numerically; 3 significant digits as printed.
    if isinstance(value, float):
        return float(f"{value:.3g}")
    if isinstance(value, (int, bool)) or value is None:
        return value
    return html.escape(str(value))


def _header(search: Search, ui_base: str) -> str:
    counts = {o.value: sum(t.status == o for t in search.trials) for o in Outcome}
    best = search.best_trial()
    value, epoch = best.best(search.mode) if best else (math.nan, 0)
    where = f"epoch {epoch}"
    chosen = search.chosen or {}
    if best and chosen.get("trial_id") == best.trial_id and chosen.get("folds"):  # the mean over its folds
        value, where = float(chosen["best_value"]), f"mean over {chosen['folds']} folds"
        if isinstance(chosen.get("value_std"), float) and math.isfinite(chosen["value_std"]):
            where += f", std {chosen['value_std']:.4f}"
    shown = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(best.params.items())) if best else ""
    sched = search.scheduler
    scheduler = (f"ASHA (grace period {sched.get('grace_period')}, reduction factor "
                 f"{format_value(sched.get('reduction_factor'))}, max {sched.get('max_epochs')} epochs)"
                 if sched.get("type") == "asha" else f"none (max {sched.get('max_epochs')} epochs)")
    rows = [
        ("search", run_link(ui_base, search.experiment_id, search.parent_run_id, search.name) + " (MLflow parent run)"),
        ("model, sampler", html.escape(f"{search.model}, Optuna {search.sampler}")),
        ("scheduler", html.escape(scheduler)),
        ("trials", html.escape(f"{len(search.trials)}: {counts['completed']} completed, {counts['stopped_early']} "
                               f"stopped early by ASHA, {counts['failed']} failed")),
        (f"best {search.metric_label} (validation, the selection metric)",
         html.escape(f"{value:.4f} (trial {best.trial_id}, {where}): {shown}") if best else "none"),
        ("locked test split", html.escape(_test_line(search.test))),
        ("experiment folder", html.escape(str(search.experiment_dir))),
    ]
    table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return (f"<h1>{html.escape(search.name)}</h1><p class=\"lead\">hpsearch dashboard: "
            f"{html.escape(search.metric_label)} on the validation cases</p><table class=\"summary\">{table}</table>")


def _test_line(test: dict | None) -> str:
    """The chosen model on the locked test split, beside the validation figure, with the gap."""
    if not test:
        return ("not evaluated: the validation figure above is the maximum over the trials, chosen on the "
                "same cases, so optimistic (set dataset.test_fraction, or run `hpsearch evaluate EXPERIMENT`)")
    figures = test.get("test", {})
    per_class = ", ".join(f"{k.removeprefix('test_dice_')} {v:.4f}" for k, v in sorted(figures.items())
                          if k.startswith("test_dice_"))
    hd95 = ", ".join(f"{k.removeprefix('test_hd95_')} {v:.1f} mm" for k, v in sorted(figures.items())
                     if k.startswith("test_hd95_"))
    line = (f"test Dice {figures.get('test_dice', math.nan):.4f} on {test.get('test_cases')} case(s), "
            f"{test.get('model')} [{per_class}]; HD95 [{hd95}]")
    if test.get("optimism") is not None:
        line += f"; optimism (validation - test) {test['optimism']:+.4f}"
    return line


def _overlays(search: Search) -> Overlays:
    try:
        return best_trial_overlays(search)
    except (HpsearchError, OSError, ValueError) as exc:  # a moved checkpoint or dataset: the rest still shows
        return Overlays(b"", message=f"predictions not drawn: {first_line(exc, 300)}")
