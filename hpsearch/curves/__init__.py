"""Learning-curve tables and their replay: measuring search strategies in minutes.

:mod:`.replay` imports Ray; it is not imported here, so reading a table does not start it.
"""

from hpsearch.curves.synthetic import synthetic_table
from hpsearch.curves.table import CAP_PARAMS, CURVE_KEYS, CurveTable

__all__ = ["CAP_PARAMS", "CURVE_KEYS", "CurveTable", "synthetic_table"]
