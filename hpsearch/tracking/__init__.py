"""MLflow: where a search is recorded.

* :mod:`~hpsearch.tracking.store`: the tracking URI, checked and pinned (no Ray, no MLflow import);
* :mod:`~hpsearch.tracking.runs`: the parent run and the queries about a search's runs
  (:class:`SearchRuns`);
* :mod:`~hpsearch.tracking.tracker`: the Ray Tune callback logging every epoch of every trial
  exactly once (:class:`MLflowTracker`; imports Ray, so it is loaded only when asked for).
"""

from __future__ import annotations

from hpsearch.tracking.store import (
    check_reachable,
    check_tracking_uri,
    classify_tracking_uri,
    ensure_reachable,
    resolve_uri,
)

__all__ = [
    "MLflowTracker",
    "SearchRuns",
    "check_reachable",
    "check_tracking_uri",
    "classify_tracking_uri",
    "ensure_reachable",
    "flatten_params",
    "resolve_uri",
    "start_search_run",
]

_LAZY = {
    "MLflowTracker": "hpsearch.tracking.tracker",
    "default_metric_keys": "hpsearch.tracking.tracker",
    "SearchRuns": "hpsearch.tracking.runs",
    "flatten_params": "hpsearch.tracking.runs",
    "start_search_run": "hpsearch.tracking.runs",
}


def __getattr__(name: str):
    # MLflow takes ~1 s to import and the tracker imports Ray: only what is used is loaded.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpsearch.tracking' has no attribute {name!r}")
