"""Tracking URIs: pinned, checked, and a failure said in words that fit the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.tracking.store import ensure_reachable, local_store_path, resolve_uri


@pytest.mark.parametrize(
    "uri, store",
    [
        ("sqlite:////abs/m.db", Path("/abs/m.db")),
        ("postgresql+psycopg2://u@h/db", None),
        ("http://127.0.0.1:5000", None),
        ("file:///abs/mlruns", Path("/abs/mlruns")),
        ("/abs/mlruns", Path("/abs/mlruns")),
        ("gopher://x", None),
    ],
)
def test_local_store_path(uri, store):
    assert local_store_path(uri) == store


def test_relative_stores_are_pinned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite:///m.db") == f"sqlite:///{tmp_path}/m.db"
    assert resolve_uri("mlruns") == str(tmp_path / "mlruns")
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    "uri, needle",
    [
        ("gopher://x", "tracking.uri gopher://x: unsupported tracking URI scheme 'gopher'; use sqlite:///PATH.db"),
        ("http://127.0.0.1:9", "tracking.uri http://127.0.0.1:9: MLflow is not reachable; start the server"),
        ("sqlite:////proc/nope/m.db", "MLflow cannot open this sqlite store; check the path and its permissions"),
    ],
)
def test_unusable_stores_are_one_line_naming_the_cause(uri, needle):
    with pytest.raises(HpsearchError) as error:
        ensure_reachable(uri)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_run_refuses_outputs_inside_the_dataset_folder(lv_small, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"name: x\ndataset: {{path: {lv_small}}}\nmodel: unet\nsearch_space: {space}\n")
    exe = Path(sys.executable).with_name("hpsearch")
    for override, needle in [(f"storage.path={lv_small}/results", "storage.path"),
                             (f"tracking.uri=sqlite:///{lv_small}/m.db", "tracking.uri")]:
        result = subprocess.run([str(exe), "run", str(job), "--set", override], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        lines = [line for line in result.stderr.splitlines() if line.startswith("hpsearch:")]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert f"hpsearch: error: {needle}" in lines[0] and "inside the dataset folder" in lines[0]
    assert sorted(p.name for p in lv_small.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
