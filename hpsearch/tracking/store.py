"""Where MLflow keeps a search: the tracking URI, checked and pinned before anything runs.

Example:
    >>> uri_scheme("sqlite:///mlflow.db"), uri_scheme("http://127.0.0.1:5000"), uri_scheme("mlruns")
    ('sqlite', 'http', 'file')
    >>> uri_scheme("gopher://x")
    'gopher'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from hpsearch.errors import HpsearchError, first_line

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SUPPORTED_SCHEMES = (*DATABASE_SCHEMES, "http", "https", "file", "databricks")
FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def uri_scheme(uri: str) -> str:
    """The scheme of a tracking URI (``file`` for a plain folder path); the database
    driver suffix of SQLAlchemy URIs (``postgresql+psycopg2``) is dropped."""
    scheme, sep, _ = uri.partition("://")
    if not sep:
        return "file"
    return scheme.split("+", 1)[0].lower()


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
    scheme = uri_scheme(uri)
    if scheme == "sqlite" and uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if scheme == "file":
        return Path(uri.removeprefix("file://"))
    return None


def check_uri(uri: str, where: str = "tracking.uri") -> None:
    """Refuse a URI MLflow cannot track to, before anything is started.

    Raises:
        HpsearchError: An unsupported scheme.
    """
    scheme = uri_scheme(uri)
    if scheme not in SUPPORTED_SCHEMES:
        raise HpsearchError(
            f"{where} {uri}: unsupported scheme '{scheme}'; use sqlite:///FILE.db, http(s)://HOST:PORT "
            "of an MLflow server, another database URI (postgresql://, mysql://) or a folder"
        )


def check_reachable(tracking_uri: str, timeout_s: int = 5) -> None:
    """Ask the store for one experiment, failing fast (no MLflow retry backoff).

    Raises:
        MlflowException, OSError: The store is unreachable or refuses.
    """
    from mlflow import MlflowClient

    with scoped_env({**FAIL_FAST_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}):
        MlflowClient(tracking_uri).search_experiments(max_results=1)


def ensure_reachable(tracking_uri: str, where: str = "tracking.uri") -> None:
    """:func:`check_uri` and :func:`check_reachable`, a failure as one line a user can act on.

    Raises:
        HpsearchError: Unsupported, unreachable, or refusing.
    """
    check_uri(tracking_uri, where)
    try:
        check_reachable(tracking_uri)
    except Exception as exc:  # connection refused, unwritable database, a broken store ...
        scheme = uri_scheme(tracking_uri)
        if scheme in ("http", "https"):
            remedy = "MLflow is not reachable; start the server or fix the URI"
        else:
            remedy = f"MLflow cannot open this {scheme} store; check the path and its permissions"
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
