"""Learning-curve tables and their replay: measuring search strategies in minutes."""

from hpsearch.curves.table import CAP_PARAMS, CURVE_KEYS, CurveTable

__all__ = ["CAP_PARAMS", "CURVE_KEYS", "CurveTable"]
