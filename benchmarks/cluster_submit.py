"""What a submitted search costs on a local two-node cluster, against ``hpsearch run``.

Measures, side by side in one run on the same machine and dataset:

* ``hpsearch cluster up`` (head + one worker raylet + MLflow server) wall time;
* ``hpsearch submit`` -> job id, and submit -> first epoch in MLflow;
* the whole search submitted to the cluster (2 nodes x 1 CPU) vs ``hpsearch run`` on a
  local Ray with 2 CPUs: the same job, trials and seed;
* a worker raylet killed (SIGKILL) mid-trial -> that trial's next epoch in MLflow on the
  surviving node (detection, restore from checkpoint, TensorFlow start-up).

Usage::

    .venv/bin/python benchmarks/cluster_submit.py [--trials 4] [--epochs 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import mlflow
from _cluster import REPO, cluster_up, epochs, flags, hpsearch, runs, steps, wait

from hpsearch.data import load_dataset
from hpsearch.spec import load_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpb-", dir="/tmp"))
    data = work / "lv"
    hpsearch(["data", "synth", "--kind", "lv", "--cases", "12", "--seed", "0", "--out", str(data)])
    sets = [f"dataset.path={data}", "dataset.image_size=[48,48]", f"search.num_trials={args.trials}",
            f"scheduler.max_epochs={args.epochs}", f"scheduler.grace_period={args.epochs}"]

    # Both searches read the preprocessing cache: neither pays for preparing the data.
    load_dataset(load_job(REPO / "jobs" / "demo.yaml", sets).dataset)
    started = time.perf_counter()
    hpsearch(["run", "jobs/demo.yaml", *flags(sets + [f"storage.path={work / 'local'}",
                                                    f"tracking.uri=sqlite:///{work / 'local.db'}"])])
    local_s = time.perf_counter() - started

    state = work / "cluster"
    started = time.perf_counter()
    cluster = cluster_up(state)
    up_s = time.perf_counter() - started
    env = cluster.client_env()
    client = mlflow.MlflowClient(cluster.mlflow_uri)
    try:
        remote = sets + [f"storage.path={state / 'results'}", "storage.shared=true",
                         f"tracking.uri={cluster.mlflow_uri}"]
        started = time.perf_counter()
        job = hpsearch(["submit", "jobs/demo.yaml", *flags(remote + ["tracking.experiment=whole"])], env)
        submit_s = time.perf_counter() - started
        wait(lambda: epochs(client, "whole"), 600)
        first_epoch_s = time.perf_counter() - started
        hpsearch(["logs", job, "--follow"], env, check=False)
        cluster_s = time.perf_counter() - started

        job = hpsearch(["submit", "jobs/demo.yaml", *flags(remote + ["tracking.experiment=loss"])], env)
        nodes = cluster.nodes()
        worker = next(n["node_id"] for n in nodes if not n["head"])
        victim = wait(lambda: next((r for r in runs(client, "loss") if r.data.tags.get("hpsearch.node_id") == worker
                                    and r.info.status == "RUNNING" and len(steps(client, r)) >= 2), None), 600)
        done = len(steps(client, victim))
        os.kill(cluster.raylet_pids()[worker], signal.SIGKILL)
        killed = time.perf_counter()
        wait(lambda: len(steps(client, client.get_run(victim.info.run_id))) > done, 600)
        recovery_s = time.perf_counter() - killed
        hpsearch(["logs", job, "--follow"], env, check=False)
    finally:
        hpsearch(["cluster", "down", "--dir", str(state)])
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.trials} trials x {args.epochs} epochs, 48x48 slices, 2 CPUs in all")
    print(f"cluster up (head + 1 worker + MLflow):       {up_s:6.1f} s")
    print(f"submit -> job id:                            {submit_s:6.1f} s")
    print(f"submit -> first epoch in MLflow:             {first_epoch_s:6.1f} s")
    print(f"search, submitted (2 nodes x 1 CPU):         {cluster_s:6.1f} s")
    print(f"search, hpsearch run (local Ray, 2 CPUs):    {local_s:6.1f} s   ratio {cluster_s / local_s:.2f}")
    print(f"worker raylet killed -> trial's next epoch:  {recovery_s:6.1f} s")


if __name__ == "__main__":
    main()
