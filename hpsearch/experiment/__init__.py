"""A search's experiment folder, its typed state and its MLflow runs, owned by one class.

Example:
    >>> from hpsearch.experiment import Experiment
    >>> Experiment.open(Path("results/demo-lv-20261202-101500")).status  # doctest: +SKIP
    <SearchStatus.FINISHED: 'finished'>
"""

from hpsearch.experiment.experiment import RESULTS_FILE, STUDY_FILE, Experiment, base_name
from hpsearch.experiment.state import STATE_FILE, DataChange, Extension, SearchState, read_state, write_state

__all__ = [
    "DataChange",
    "Experiment",
    "Extension",
    "RESULTS_FILE",
    "STATE_FILE",
    "STUDY_FILE",
    "SearchState",
    "base_name",
    "read_state",
    "write_state",
]
