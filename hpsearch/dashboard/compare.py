"""Several searches side by side: best score against the compute and wall time each spent.

For questions such as "did TPE + ASHA beat random search?" or "FCN or U-Net?": the
searches may come from different job files and different MLflow stores. Compute is the
sum of all trials' epoch times (trial-minutes), which does not depend on how many trials
ran at once; wall time is what the user waited.

The page is written to ``dashboards/compare-<stamp>.html`` under the current folder unless
``out`` says otherwise, with ``compare.png`` beside it; it is not logged to MLflow, since it
belongs to no single search.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
from pathlib import Path
from typing import Callable

from hpsearch.dashboard import figures, static
from hpsearch.dashboard.build import DASHBOARD_DIR, HTML_FILE, Written, ui_base_for
from hpsearch.dashboard.collect import Search, collect_search, require_finished
from hpsearch.dashboard.page import (
    Section,
    figure_html,
    render_page,
    run_link,
    table_html,
)
from hpsearch.errors import HpsearchError
from hpsearch.outcome import Outcome
from hpsearch.search.results import format_value

COMPARE_DIR = "dashboards"


def write_comparison(experiment_dirs: list[Path], *, out: Path | None = None, ui_base: str | None = None,
                     echo: Callable[[str], None] = print) -> Written:
    """Write the comparison page of two or more searches.

    Raises:
        HpsearchError: Fewer than two searches, a folder named twice, or any search that
            :func:`~hpsearch.dashboard.build.write_dashboard` would refuse.
    """
    dirs = [Path(d).resolve() for d in experiment_dirs]
    if len(dirs) < 2:
        raise HpsearchError("dashboard --compare: name at least two experiment folders")
    if len(set(dirs)) != len(dirs):
        raise HpsearchError("dashboard --compare: an experiment folder is named twice")
    searches = [collect_search(d) for d in dirs]
    for search in searches:
        require_finished(search)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out else Path.cwd() / COMPARE_DIR / f"compare-{stamp}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(comparison_page(searches, out, ui_base), encoding="utf-8")
    png = out.with_name(out.stem + ".png")
    png.write_bytes(static.compare_png(searches))
    echo(f"comparison: {out}")
    return Written(out, [png])


def comparison_page(searches: list[Search], out: Path, ui_base: str | None) -> str:
    """The HTML of the comparison of ``searches`` (``out``: where it goes, for relative links)."""
    sections = [
        Section("Best score against what each search spent", figure_html(figures.compare_figure(searches),
                "fig-compare"), "Left: against compute, the sum of all trials' epoch times, which does not "
                "depend on how many trials ran at once. Right: against wall time since each search started.",
                "compare"),
        Section("Searches", searches_table(searches, out, ui_base),
                "Click a column header to sort. Each search links to its MLflow parent run and its own "
                "dashboard.", "searches"),
    ]
    header = (f"<h1>Comparison of {len(searches)} searches</h1><p class=\"lead\">hpsearch dashboard: "
              + ", ".join(html.escape(s.name) for s in searches) + "</p>")
    return render_page(f"hpsearch: comparison of {len(searches)} searches", header, sections)


def searches_table(searches: list[Search], out: Path, ui_base: str | None) -> str:
    """A sortable table, one row per search: settings, outcomes, best score, what it spent."""
    import pandas as pd

    rows = []
    for search in searches:
        best = search.best_trial()
        value = best.best(search.mode)[0] if best else math.nan
        progress = figures.progress_series(search)
        page = search.experiment_dir / DASHBOARD_DIR / HTML_FILE
        link = (f'<a href="{html.escape(os.path.relpath(page, out.parent))}">dashboard</a>'
                if page.is_file() else "")
        rows.append({
            "search": run_link(ui_base_for(search, ui_base), search.experiment_id, search.parent_run_id,
                               search.name),
            "page": link,
            "model": html.escape(search.model),
            "sampler": html.escape(search.sampler),
            "scheduler": html.escape(str(search.scheduler.get("type", "?"))),
            "trials": len(search.trials),
            "completed": sum(t.status == Outcome.COMPLETED for t in search.trials),
            "stopped early": sum(t.status == Outcome.STOPPED_EARLY for t in search.trials),
            "failed": sum(t.status == Outcome.FAILED for t in search.trials),
            f"best {search.metric_label}": round(value, 4) if math.isfinite(value) else None,
            "epochs trained": progress.epochs[-1] if progress.epochs else 0,
            "compute (trial-min)": round(progress.compute_minutes[-1], 2) if progress.epochs else 0,
            "wall (min)": round(progress.minutes[-1], 2) if progress.epochs else 0,
            "best configuration": html.escape(", ".join(f"{k}={format_value(v)}"
                                                         for k, v in sorted(best.params.items())) if best else ""),
        })
    frame = pd.DataFrame(rows)
    return table_html(frame, table_id="searches-table", order=[[9, "desc" if searches[0].mode == "max" else "asc"]])
