"""Faults injected into a search on a local two-node cluster, and what MLflow kept of it.

In the spirit of Ray's own release tests (chaos tests killing nodes and workers under a
running workload): a search is submitted to ``hpsearch cluster up`` (head + one worker
raylet, 1 CPU each, MLflow server, token auth) and, at seeded random intervals, either
the worker's raylet is SIGKILLed (a worker is then joined again with ``hpsearch cluster
join``, so capacity comes back) or a trial's actor process is. The number of faults and
the run time are bounded. Then MLflow is read back with its own client: for every child
run, its ``val_dice`` steps must be exactly 1..epochs_run (a missing step is an epoch
lost, a repeated one an epoch duplicated).
Target: every trial completes, 0 lost, 0 duplicated.

Usage::

    .venv/bin/python benchmarks/fault_injection.py [--seed 0] [--faults 4] [--trials 4]
    .venv/bin/python benchmarks/fault_injection.py --smoke-test   # the counting, seconds
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import mlflow
import psutil
from _cluster import cluster_up, flags, hpsearch, runs, steps

from hpsearch.cluster.auth import token_env
from hpsearch.cluster.local import LocalCluster

# A trial actor's process title: ray::SegmentationTrainable.* while idle or in setup,
# ray::ResourceTrainable.train (Tune's with_resources wrapper) while training.
TRAINABLE = re.compile(r"^ray::\w*Trainable\b")
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault times, kinds and victims")
    parser.add_argument("--faults", type=int, default=4, help="at most this many faults (default 4)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (default 10)")
    parser.add_argument("--gap", type=float, nargs=2, default=(4.0, 15.0), metavar=("MIN_S", "MAX_S"),
                        help="seconds between faults, drawn uniformly (default 4 15)")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds for the search (default 900)")
    parser.add_argument("--smoke-test", action="store_true", help="check the counting on a SQLite store, seconds")
    args = parser.parse_args()
    if args.faults < 0 or args.trials < 1 or args.epochs < 1 or not 0 < args.gap[0] <= args.gap[1]:
        parser.error("--faults >= 0, --trials >= 1, --epochs >= 1 and 0 < MIN_S <= MAX_S")
    if args.smoke_test:
        smoke_test()
        return

    work = Path(tempfile.mkdtemp(prefix="hpf-", dir="/tmp"))  # short: Ray's socket paths
    env = {"HPSEARCH_CACHE_DIR": str(work / "cache")}  # the cluster's processes inherit it
    state, cluster = work / "cluster", None
    try:
        from hpsearch.data.synth import synthesize

        data = synthesize("lv", work / "lv", cases=8, seed=1, shape=(32, 32, 6))
        cluster = cluster_up(state, env=env, extra=["--object-store-mb", "150"])
        started = time.monotonic()
        job = hpsearch(["submit", "jobs/demo.yaml", *flags([
            f"dataset.path={data}", "dataset.image_size=[32,32]", "dataset.val_fraction=0.25",
            f"search.num_trials={args.trials}", f"search.max_failures={4 * args.faults + 2}",
            "scheduler.type=none", f"scheduler.max_epochs={args.epochs}", f"scheduler.grace_period={args.epochs}",
            f"storage.path={state / 'results'}", "storage.shared=true",
            f"tracking.uri={cluster.mlflow_uri}", "tracking.experiment=faults"])], {**env, **cluster.client_env()})
        faults = inject(cluster, job, env, random.Random(args.seed), args, started)
        status = _job_status(cluster, job)
        wall_s = time.monotonic() - started
        if status != "SUCCEEDED":
            print(hpsearch(["logs", job], cluster.client_env(), check=False)[-3000:])
        report = audit(mlflow.MlflowClient(cluster.mlflow_uri), "faults")
    finally:
        if cluster is not None:  # also on Ctrl-C: every process of this cluster, by pid
            hpsearch(["cluster", "down", "--dir", str(state)], check=False)
            for folder in Path("/tmp").glob(Path(cluster.temp_dir).name + "*"):
                shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print_report(report, faults, {"seed": args.seed, "job_status": status, "wall_s": round(wall_s, 1)})


def inject(cluster: LocalCluster, job: str, env: dict[str, str], rng: random.Random,
           args: argparse.Namespace, started: float) -> list[dict]:
    """Kill processes at seeded random intervals until the job ends; the faults made.

    The first fault waits until a trial process runs; a kind with no victim at its time
    (no worker node, no trial) is drawn again at the next time.
    """
    faults: list[dict] = []
    next_at = None
    while time.monotonic() - started < args.time_limit:
        if _job_status(cluster, job) in ENDED:
            return faults
        now = time.monotonic()
        if next_at is None and trial_processes(cluster):
            next_at = now + rng.uniform(*args.gap)
        if next_at is not None and now >= next_at and len(faults) < args.faults:
            fault = _kill_one(cluster, rng)
            if fault:
                faults.append({"t_s": round(now - started, 1), **fault})
                print(f"fault {len(faults)} at {now - started:6.1f} s: {fault}", flush=True)
                if fault["kind"] == "raylet":
                    # A new raylet stands in for the killed one, as an autoscaler would.
                    hpsearch(["cluster", "join", cluster.gcs_address, "--dir", str(cluster.state_dir), "--cpus", "1",
                              "--object-store-mb", "150"], env)
            next_at = time.monotonic() + rng.uniform(*args.gap)
        time.sleep(0.5)
    hpsearch(["stop", job], cluster.client_env(), check=False)
    raise SystemExit(f"the search did not end within --time-limit {args.time_limit:.0f} s (stopped)")


def _kill_one(cluster: LocalCluster, rng: random.Random) -> dict | None:
    kind = rng.choice(["raylet", "trial"])
    if kind == "raylet":
        workers = [n["node_id"] for n in cluster.nodes() if not n["head"]]
        pids = cluster.raylet_pids()
        victims = sorted((node, pids[node]) for node in workers if node in pids)
        if not victims:
            return None
        node, pid = rng.choice(victims)
        # Whether a trial was training there: a raylet lost between trials costs nothing.
        on_node = [p for p in trial_processes(cluster) if _under(p, pid)]
        os.kill(pid, signal.SIGKILL)
        return {"kind": "raylet", "pid": pid, "node_id": node[:12], "trials_on_node": len(on_node)}
    victims = sorted(trial_processes(cluster), key=lambda p: p.pid)
    if not victims:
        return None
    victim = rng.choice(victims)
    try:
        title = " ".join(victim.cmdline())
        victim.send_signal(signal.SIGKILL)
    except psutil.Error:
        return None  # ended between the listing and the kill
    return {"kind": "trial", "pid": victim.pid, "process": title[:40]}


def trial_processes(cluster: LocalCluster) -> list[psutil.Process]:
    """This cluster's Ray workers that hold a trial (process title ``ray::...Trainable...``)."""
    found = []
    for proc in cluster.ray_processes():
        try:
            if TRAINABLE.match(" ".join(proc.cmdline()[:1])):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _under(proc: psutil.Process, ancestor: int) -> bool:
    try:
        return any(parent.pid == ancestor for parent in proc.parents())
    except psutil.Error:
        return False


def _job_status(cluster: LocalCluster, job: str) -> str:
    from ray.job_submission import JobSubmissionClient

    with token_env(cluster.token_path):
        return JobSubmissionClient(cluster.dashboard_url).get_job_status(job).value


def audit(client, experiment: str) -> dict:
    """Every trial's epochs in MLflow against the epochs Ray ran (``results.json``).

    Returns:
        ``{"trials": [row per child run], "totals": {...}}``; a row has the trial id, its
        ``hpsearch.status``, epochs_run, the steps MLflow holds, and ``lost`` (steps of
        1..epochs_run missing) and ``duplicated`` (steps logged more than once, or past
        epochs_run).
    """
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`hpsearch.experiment_dir` != ''") if exp else []
    results = Path(parents[0].data.tags["hpsearch.experiment_dir"]) / "results.json" if parents else None
    ray_rows = ({r["trial_id"]: r for r in json.loads(results.read_text())["trials"]}
                if results and results.exists() else {})
    rows = []
    for run in sorted(runs(client, experiment), key=lambda r: r.data.tags["hpsearch.trial_id"]):
        tid, logged = run.data.tags["hpsearch.trial_id"], steps(client, run)
        epochs_run = ray_rows[tid]["epochs_run"] if tid in ray_rows else max(logged, default=0)
        counts = collections.Counter(logged)
        rows.append({
            "trial_id": tid, "status": run.data.tags.get("hpsearch.status", "?"), "epochs_run": epochs_run,
            "steps": sorted(logged), "lost": len(set(range(1, epochs_run + 1)) - set(logged)),
            "duplicated": sum(n - 1 for n in counts.values()) + sum(1 for s in set(logged) if s > epochs_run),
            "retries": int(run.data.tags.get("hpsearch.retries", 0) or 0),
            "nodes": len(run.data.tags.get("hpsearch.nodes", "").split(",")),
        })
    statuses = collections.Counter(r["status"] for r in rows)
    return {"trials": rows, "totals": {
        "trials": len(rows), "completed": statuses["completed"] + statuses["stopped_early"],
        "failed": statuses["failed"], "other": len(rows) - statuses["completed"] - statuses["stopped_early"]
        - statuses["failed"], "in_results_json": len(ray_rows),
        "epochs_logged": sum(len(r["steps"]) for r in rows),
        "epochs_lost": sum(r["lost"] for r in rows), "epochs_duplicated": sum(r["duplicated"] for r in rows),
        "retries": sum(r["retries"] for r in rows)}}


def print_report(report: dict, faults: list[dict], extra: dict) -> None:
    print(f"{'trial':<16} {'status':<14} {'ran':>4} {'lost':>5} {'dup':>4} {'retries':>8} {'nodes':>6}  steps")
    for r in report["trials"]:
        print(f"{r['trial_id']:<16} {r['status']:<14} {r['epochs_run']:>4} {r['lost']:>5} {r['duplicated']:>4} "
              f"{r['retries']:>8} {r['nodes']:>6}  {r['steps']}")
    kinds = collections.Counter(f["kind"] for f in faults)
    summary = {**extra, "faults": len(faults), "raylet_kills": kinds["raylet"], "trial_kills": kinds["trial"],
               **report["totals"]}
    print(json.dumps(summary))


def smoke_test() -> None:
    """The counting against a real MLflow SQLite store: one clean trial, one with an epoch
    lost, one with an epoch logged twice (as a replay after a restore would)."""
    from mlflow.entities import Metric

    with tempfile.TemporaryDirectory() as tmp:
        client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        exp = client.create_experiment("faults", artifact_location=f"{tmp}/artifacts")
        parent = client.create_run(exp, tags={"hpsearch.experiment_dir": tmp}).info.run_id
        plan = {"clean": [1, 2, 3], "lost": [1, 3], "duplicated": [1, 2, 2, 3]}
        for tid, logged in plan.items():
            run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "hpsearch.trial_id": tid,
                                               "hpsearch.status": "completed"}).info.run_id
            for i, step in enumerate(logged):
                client.log_batch(run, metrics=[Metric("val_dice", 0.5, 1000 + i, step)])
        trials = [{"trial_id": tid, "epochs_run": 3} for tid in plan]
        (Path(tmp) / "results.json").write_text(json.dumps({"trials": trials}))
        report = audit(client, "faults")
    got = {r["trial_id"]: (r["lost"], r["duplicated"]) for r in report["trials"]}
    assert got == {"clean": (0, 0), "lost": (1, 0), "duplicated": (0, 1)}, got
    assert report["totals"]["completed"] == 3 and report["totals"]["epochs_logged"] == 9, report["totals"]
    print_report(report, [], {"smoke_test": True})
    print("smoke test ok")


if __name__ == "__main__":
    main()
