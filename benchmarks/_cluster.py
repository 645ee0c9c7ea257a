"""What the cluster benchmarks share: the CLI as a user runs it, a local cluster on free
ports, and the search's child runs read back with MLflow's own client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hpsearch.cluster.local import LocalCluster, free_port

REPO = Path(__file__).resolve().parents[1]


def flags(sets: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [word for value in sets for word in ("--set", value)]


def hpsearch(args: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run ``python -m hpsearch ARGS`` from the project folder; its stdout, stripped.

    Raises:
        SystemExit: It failed and ``check`` is set (with the end of its stderr).
    """
    done = subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 and check:
        raise SystemExit(f"hpsearch {' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def cluster_up(state: Path, workers: int = 1, cpus_per_node: int = 1, env: dict[str, str] | None = None,
               extra: list[str] | None = None) -> LocalCluster:
    """``hpsearch cluster up`` in ``state`` on free ports (no clash with another cluster)."""
    hpsearch(["cluster", "up", "--dir", str(state), "--workers", str(workers), "--cpus-per-node", str(cpus_per_node),
              "--port", str(free_port()), "--dashboard-port", str(free_port()),
              "--client-port", str(free_port()), "--mlflow-port", str(free_port()), *(extra or [])], env)
    return LocalCluster.load(state)


def runs(client, experiment: str) -> list:
    """The child runs (one per trial) of an MLflow experiment."""
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`hpsearch.trial_id` != ''") if exp else []


def steps(client, run) -> list[int]:
    """The epochs (``val_dice`` steps) a child run holds, in logging order, repeats kept."""
    return [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")]


def epochs(client, experiment: str) -> int:
    """Epochs logged so far over all trials of an experiment."""
    return sum(len(steps(client, r)) for r in runs(client, experiment))


def wait(condition, timeout_s: float, poll_s: float = 0.2):
    """Poll ``condition`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(poll_s)
    raise SystemExit(f"timed out after {timeout_s} s")
