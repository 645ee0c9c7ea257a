"""Where MLflow keeps a search: the tracking URI, checked and pinned before anything runs.

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

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from hpsearch.errors import HpsearchError, first_line

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


FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def resolve_uri(uri: str) -> str:
    """The URI with a relative SQLite file or store folder made absolute.

    A relative path would point elsewhere once Ray workers, a resume or a child process
    run from another directory; pin it now.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix):])
    if "://" not in uri:
        return os.path.abspath(Path(uri).expanduser())
    return uri


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local store lives in (SQLite database, file store), else None."""
    kind = classify_tracking_uri(uri)
    if kind == "sqlite" and uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if kind == "file":
        return Path(uri.removeprefix("file://"))
    return None


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


def check_reachable(tracking_uri: str, timeout_s: int = 5) -> None:
    """Ask the store for one experiment, failing fast (no MLflow retry backoff).

    Raises:
        MlflowException, OSError: The store is unreachable or refuses.
    """
    from mlflow import MlflowClient

    with scoped_env({**FAIL_FAST_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}):
        MlflowClient(tracking_uri).search_experiments(max_results=1)


def ensure_reachable(tracking_uri: str, where: str = "tracking.uri") -> None:
    """:func:`check_tracking_uri` and :func:`check_reachable`, a failure as one line a user can act on.

    Raises:
        HpsearchError: Unsupported, unreachable, or refusing.
    """
    check_tracking_uri(tracking_uri, where)
    try:
        check_reachable(tracking_uri)
    except Exception as exc:  # connection refused, unwritable database, a broken store ...
        kind = classify_tracking_uri(tracking_uri)
        if kind == "http":
            remedy = "MLflow is not reachable; start the server or fix the URI"
        else:
            remedy = f"MLflow cannot open this {kind} store; check the path and its permissions"
        raise HpsearchError(f"{where} {tracking_uri}: {remedy} ({first_line(exc)})") from None


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str]):
    """MLflow reads HTTP retry settings from the environment per request: set the unset ones
    for a block (a user's own setting wins)."""
    added = [key for key in values if key not in os.environ]
    os.environ.update({key: values[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
