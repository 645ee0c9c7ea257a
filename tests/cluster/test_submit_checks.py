"""What ``hpsearch submit`` refuses before anything reaches a cluster (no Ray needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpsearch.cluster.jobs import EXCLUDES, check_submittable
from hpsearch.cluster.local import free_port
from hpsearch.errors import HpsearchError
from hpsearch.spec import load_job

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "jobs" / "demo.yaml"
SHARED = ["storage.path=/mnt/hpsearch/results", "storage.shared=true", "tracking.uri=http://10.0.0.5:5000"]


@pytest.mark.parametrize("overrides, nodes, message", [
    ([], 1, "storage.path results/: relative"),
    (["storage.path=/mnt/x"], 3, "the Ray cluster has 3 nodes"),
    (["storage.path=/mnt/x", "storage.shared=true"], 2, "tracking.uri sqlite:///mlflow.db: a relative SQLite"),
    ([*SHARED, "dataset.synthetic=null", "dataset.path=data/brats"], 2, "dataset.path data/brats: relative"),
])
def test_refused_with_key_and_remedy(overrides, nodes, message):
    with pytest.raises(HpsearchError, match=message):
        check_submittable(load_job(DEMO, overrides), DEMO, nodes)


@pytest.mark.parametrize("overrides, nodes", [
    (SHARED, 4),                                          # shared folder on a big cluster
    (["storage.path=/scratch/r", "tracking.uri=sqlite:////abs/m.db"], 1),  # one node: local is fine
    ([*SHARED, "dataset.path=/mnt/data/lv", "dataset.synthetic=null"], 2),
    ([*SHARED, "dataset.path=datasets/lv", "dataset.synthetic=null"], 2),  # uploaded with the project
])
def test_accepted(overrides, nodes):
    check_submittable(load_job(DEMO, overrides), DEMO, nodes)


def test_storage_shorthand_and_dotted_override_agree():
    assert load_job(DEMO).storage.path == "results/"
    job = load_job(DEMO, ["storage.shared=true"])
    assert job.storage.path == "results/" and job.storage.shared


def test_object_store_uri_refused_with_remedy():
    with pytest.raises(HpsearchError, match="storage.path.*mount the bucket"):
        load_job(DEMO, ["storage.path=s3://bucket/results"])


def test_upload_excludes_are_anchored():
    # gitignore's `data/` matches at any depth and would drop the package's own hpsearch/data/.
    unanchored = [p for p in EXCLUDES if p.rstrip("/") in ("data", "results", "model") and not p.startswith("/")]
    assert not unanchored


@pytest.mark.parametrize("args, message", [
    (["submit", "jobs/demo.yaml"], "no Ray cluster given"),
    (["status", "--address", f"http://127.0.0.1:{free_port()}"], "not usable"),
    (["logs", "raysubmit_x", "--address", f"http://127.0.0.1:{free_port()}"], "not usable"),
    (["submit", "--address", "http://127.0.0.1:1"], "give either a job file or --resume"),
    (["submit", "--resume", "relative/dir", "--address", "http://127.0.0.1:1"], "absolute path"),
    (["cluster", "status", "--dir", "/nonexistent/hpsearch"], "no local cluster here"),
])
def test_cli_errors_are_one_line_exit_2(args, message):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}  # no RAY_ADDRESS inherited
    done = subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("hpsearch: error: ") and message in done.stderr
