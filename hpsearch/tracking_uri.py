"""What kind of MLflow store a tracking URI names, and a one-line refusal for those hpsearch cannot use.

Checked before anything connects, so that ``gopher://x`` or a ``./mlruns`` folder is
refused by name instead of failing deep inside MLflow as "not reachable" or a traceback.
Importing this module imports nothing from MLflow.

Example:
    >>> classify_tracking_uri("sqlite:///mlflow.db"), classify_tracking_uri("http://127.0.0.1:5000")
    ('sqlite', 'http')
    >>> classify_tracking_uri("mlruns"), classify_tracking_uri("gopher://x")
    ('file', 'unsupported')
"""

from __future__ import annotations

import os

from hpsearch.errors import HpsearchError

# MLflow's own tracking-store schemes (mlflow/tracking/_tracking_service/utils.py), by kind;
# a database scheme may name its driver ("postgresql+psycopg2").
_KINDS = {
    "sqlite": "sqlite",
    "postgresql": "database",
    "mysql": "database",
    "mssql": "database",
    "http": "http",
    "https": "http",
    "file": "file",
    "databricks": "databricks",
    "databricks-uc": "databricks",
}
SUPPORTED = "sqlite:///PATH.db, http(s)://HOST:PORT (an MLflow server) or a postgresql/mysql/mssql database URI"


def classify_tracking_uri(uri: str) -> str:
    """``"sqlite"``, ``"database"``, ``"http"``, ``"file"`` (``file://`` or a plain path),
    ``"databricks"`` or ``"unsupported"``."""
    if "://" not in uri and not uri.startswith("databricks"):
        return "file" if uri.strip() else "unsupported"
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return _KINDS.get(scheme, "unsupported")


def check_tracking_uri(uri: str, where: str) -> str:
    """The kind of ``uri`` (:func:`classify_tracking_uri`) if hpsearch can track there.

    Args:
        uri: The tracking URI.
        where: Where it came from, for the message (``"jobs/x.yaml: tracking.uri"``, ``"--tracking-uri"``).

    Raises:
        HpsearchError: An unknown scheme, or a file store, which MLflow 3 refuses unless
            ``MLFLOW_ALLOW_FILE_STORE=true`` (it is in maintenance mode).
    """
    kind = classify_tracking_uri(uri)
    if kind == "unsupported":
        scheme = uri.split("://", 1)[0] if "://" in uri else uri
        raise HpsearchError(f"{where} {uri}: unsupported tracking URI scheme {scheme!r}; use {SUPPORTED}")
    if kind == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        if uri.endswith((".db", ".sqlite")) and "://" not in uri:  # a database file named as a path
            raise HpsearchError(f"{where} {uri}: a plain path; a SQLite store is named sqlite:///{os.path.abspath(uri)}")
        raise HpsearchError(
            f"{where} {uri}: a folder (file store) is not a tracking store MLflow 3 opens; use {SUPPORTED} "
            "(`mlflow migrate-filestore` converts an old ./mlruns; MLFLOW_ALLOW_FILE_STORE=true forces it)"
        )
    return kind
