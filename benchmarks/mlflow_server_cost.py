"""What the MLflow UI (``hpsearch ui``) and the cluster's ``mlflow server`` cost in processes and memory.

For each configuration: start it on a fresh SQLite store on 127.0.0.1, wait until it
answers HTTP and its process tree has stopped growing (MLflow 3's job runner starts its
consumers a few seconds after the server), then count the tree's processes and sum their
RSS and USS (USS: memory no other process shares; RSS counts shared pages once per process).

* ``mlflow-defaults-ui``: what ``hpsearch ui`` ran before (``mlflow ui``, MLflow's defaults:
  4 uvicorn workers, job execution on);
* ``mlflow-defaults-cluster``: what ``cluster up`` ran before (``--workers 1``, job execution on);
* ``hpsearch-ui``: ``hpsearch ui --tracking-uri sqlite:///...`` now (the hpsearch process included);
* ``hpsearch-cluster``: :func:`hpsearch.cluster.local.start_mlflow_server` now.

Usage::

    .venv/bin/python benchmarks/mlflow_server_cost.py [--smoke-test]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from hpsearch.cluster.local import free_port, start_mlflow_server
from hpsearch.processes import process_tree, stop_group

MB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="only hpsearch-ui, short settling (seconds)")
    args = parser.parse_args()
    settle_s = 2 if args.smoke_test else 8
    names = ["hpsearch-ui"] if args.smoke_test else list(CONFIGS)
    print(f"{'configuration':26} {'processes':>9} {'RSS MB':>8} {'USS MB':>8}")
    for name in names:
        with tempfile.TemporaryDirectory(prefix="hpb-mlflow-") as folder:
            procs, rss, uss = measure(CONFIGS[name], Path(folder), settle_s)
        print(f"{name:26} {procs:9d} {rss / MB:8.0f} {uss / MB:8.0f}", flush=True)


def _mlflow_default(folder: Path, port: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{folder}/m.db",
               "--host", "127.0.0.1", "--port", str(port), *extra]
    return subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _hpsearch_ui(folder: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "hpsearch", "ui", "--tracking-uri", f"sqlite:///{folder}/m.db",
               "--port", str(port)]
    return subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


CONFIGS = {
    "mlflow-defaults-ui": _mlflow_default,
    "mlflow-defaults-cluster": lambda folder, port: _mlflow_default(
        folder, port, "--artifacts-destination", str(folder / "art"), "--workers", "1"),
    "hpsearch-ui": _hpsearch_ui,
    "hpsearch-cluster": lambda folder, port: start_mlflow_server(f"sqlite:///{folder}/m.db", folder / "art",
                                                                 port=port),
}


def measure(start, folder: Path, settle_s: float, timeout_s: float = 120) -> tuple[int, int, int]:
    """Start one configuration, let it settle, return (processes, RSS bytes, USS bytes); always stopped."""
    port = free_port()
    root = start(folder, port)
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(port):
            if time.monotonic() > deadline or root.poll() is not None:
                raise SystemExit(f"the server on port {port} did not answer")
            time.sleep(0.5)
        count, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < settle_s and time.monotonic() < deadline:
            now = len(process_tree(root.pid))
            if now != count:
                count, stable_since = now, time.monotonic()
            time.sleep(0.5)
        rss = uss = 0
        tree = process_tree(root.pid)
        for proc in tree:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss, uss = rss + info.rss, uss + info.uss
        return len(tree), rss, uss
    finally:
        stop_group(root)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
