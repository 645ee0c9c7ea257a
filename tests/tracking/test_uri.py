"""Tracking URIs classified before anything connects (no MLflow, no server needed)."""

from __future__ import annotations

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.tracking.store import check_tracking_uri, classify_tracking_uri


@pytest.mark.parametrize(
    "uri, kind",
    [
        ("sqlite:///mlflow.db", "sqlite"),
        ("sqlite:////abs/mlflow.db", "sqlite"),
        ("postgresql+psycopg2://u@h/db", "database"),
        ("mysql://u@h/db", "database"),
        ("http://127.0.0.1:5000", "http"),
        ("HTTPS://mlflow.example.org", "http"),
        ("databricks", "databricks"),
        ("file:///tmp/mlruns", "file"),
        ("./mlruns", "file"),
        ("gopher://x", "unsupported"),
        ("", "unsupported"),
    ],
)
def test_classify(uri, kind):
    assert classify_tracking_uri(uri) == kind


def test_check_refuses_in_one_line_naming_where(monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(HpsearchError, match=r"^jobs/x.yaml: tracking.uri s3://b: unsupported tracking URI scheme 's3'"):
        check_tracking_uri("s3://b", "jobs/x.yaml: tracking.uri")
    with pytest.raises(HpsearchError, match="file store"):
        check_tracking_uri("file:///tmp/mlruns", "--tracking-uri")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-out is respected
    assert check_tracking_uri("file:///tmp/mlruns", "--tracking-uri") == "file"
    assert check_tracking_uri("sqlite:///m.db", "--tracking-uri") == "sqlite"
