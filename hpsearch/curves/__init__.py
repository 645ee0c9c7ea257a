"""Learning-curve tables, their recording and their replay: measuring search strategies in minutes.

:mod:`.replay` and :mod:`.simulate` import Ray; they are not imported here, so reading or
recording a table does not start it.
"""

from hpsearch.curves.record import record_curves, sample_configs, table_from_mlflow
from hpsearch.curves.synthetic import synthetic_table
from hpsearch.curves.table import CAP_PARAMS, CURVE_KEYS, CurveTable

__all__ = ["CAP_PARAMS", "CURVE_KEYS", "CurveTable", "record_curves", "sample_configs", "synthetic_table",
           "table_from_mlflow"]
