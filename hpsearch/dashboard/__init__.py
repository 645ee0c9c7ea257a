"""Dashboards of searches: a self-contained HTML page per search, and comparisons.

Data flow: :mod:`collect` (experiment folder + MLflow -> :class:`~collect.Search`) ->
:mod:`figures` (Plotly), :mod:`importance` (Optuna evaluators), :mod:`overlays` (the best
trial's predictions), :mod:`static` (Matplotlib PNGs) -> :mod:`page` (one HTML file) ->
:mod:`build` (one search: written and logged to MLflow) and :mod:`compare` (several).

Example:
    >>> from hpsearch.dashboard import write_comparison, write_dashboard
    >>> write_dashboard(Path("results/demo-lv-20261123-101500"))  # doctest: +SKIP
    >>> write_comparison([Path("results/a"), Path("results/b")])  # doctest: +SKIP
"""

from hpsearch.dashboard.build import write_dashboard
from hpsearch.dashboard.compare import write_comparison

__all__ = ["write_comparison", "write_dashboard"]
