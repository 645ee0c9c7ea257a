"""Learning-curve tables and their replay: measuring search strategies in minutes."""

from hpsearch.curves.record import record_curves, sample_configs, table_from_mlflow
from hpsearch.curves.table import CAP_PARAMS, CURVE_KEYS, CurveTable

__all__ = ["CAP_PARAMS", "CURVE_KEYS", "CurveTable", "record_curves", "sample_configs", "table_from_mlflow"]
