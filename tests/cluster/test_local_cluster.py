"""A real two-node Ray cluster on 127.0.0.1, searches submitted to it, and its faults.

Started with the shipped helper (``hpsearch cluster up``: ``ray start --head`` plus one
``ray start --address`` raylet, token auth, an ``mlflow server``), driven with the CLI a
user types (``submit``, ``logs --follow``, ``status``, ``stop``), counted with MLflow's
own client. Faults are real processes killed by pid: a worker's raylet, the job's
driver, the MLflow server. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml
from helpers import kill_processes
from ray.job_submission import JobSubmissionClient

from hpsearch.cluster.auth import token_env
from hpsearch.cluster.local import LocalCluster, free_port

REPO = Path(__file__).resolve().parents[2]
HPSEARCH = [sys.executable, "-m", "hpsearch"]


@pytest.fixture(scope="module")
def cluster():
    state = Path(tempfile.mkdtemp(prefix="hpc-", dir="/tmp"))  # short: Ray's socket paths
    ports = {"--port": free_port(), "--dashboard-port": free_port(), "--client-port": free_port(),
             "--mlflow-port": free_port()}
    try:  # also a failed or timed-out `cluster up` is taken down: its raylets are daemons
        up = _cli(["cluster", "up", "--dir", str(state), "--workers", "1", "--cpus-per-node", "1",
                   "--object-store-mb", "150", *[str(x) for kv in ports.items() for x in kv]], timeout=240)
        assert up.returncode == 0, up.stderr
        yield LocalCluster.load(state)
    finally:
        temp_dir = LocalCluster.load(state).temp_dir if (state / "cluster.json").exists() else None
        down = _cli(["cluster", "down", "--dir", str(state)], timeout=120)
        leftovers = LocalCluster.load(state).ray_processes() if temp_dir else []
        kill_processes(leftovers)  # whatever `down` missed must not outlive the tests either
        shutil.rmtree(state, ignore_errors=True)
        for folder in Path("/tmp").glob(Path(temp_dir).name + "*") if temp_dir else ():
            shutil.rmtree(folder, ignore_errors=True)
        assert down.returncode == 0 and not leftovers, (down.stderr, leftovers)


@pytest.fixture
def two_nodes(cluster) -> dict[str, str]:
    """{"head": id, "worker": id}, adding a worker with `cluster join` if one was lost."""
    if len(cluster.nodes()) < 2:
        joined = _cli(["cluster", "join", cluster.gcs_address, "--dir", str(cluster.state_dir), "--cpus", "1",
                       "--object-store-mb", "150"], timeout=120)
        assert joined.returncode == 0, joined.stderr
        _wait(lambda: len(cluster.nodes()) == 2, 60, "the joined worker")
    nodes = cluster.nodes()
    return {"head": next(n["node_id"] for n in nodes if n["head"]),
            "worker": next(n["node_id"] for n in nodes if not n["head"])}


def test_submitted_search_spreads_over_both_nodes_and_survives_losing_one(cluster, two_nodes, lv_small, tmp_path):
    # Trials of 12 epochs of about a second each (96x96 slices, `epochs` not sampled), no early
    # stopping: CI runs (2026-12-07) saw the victim stopped by ASHA at its first rung, and
    # finished before its raylet was killed (32x32 epochs take a tenth of a second, and MLflow
    # lags a trial by the tracker's 1 s batching), so it never moved.
    epochs = 12
    space = {k: v for k, v in yaml.safe_load((REPO / "search_spaces" / "unet.yaml").read_text()).items()
             if k != "epochs"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    job = {**yaml.safe_load((REPO / "jobs" / "demo.yaml").read_text()), "search_space": str(tmp_path / "space.yaml")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    job_id = _submit(cluster, lv_small, "node-loss", "--set", "scheduler.type=none", "--set",
                     f"scheduler.max_epochs={epochs}", "--set", "dataset.image_size=[96,96]",
                     "--working-dir", str(tmp_path), job=tmp_path / "job.yaml")
    client = mlflow.MlflowClient(cluster.mlflow_uri)

    def trial_on_worker_mid_training():
        for run in _children(client, "node-loss"):
            if (run.data.tags.get("hpsearch.node_id") == two_nodes["worker"] and run.info.status == "RUNNING"
                    and 1 <= len(_steps(client, run)) <= epochs - 4):
                return run
        return None

    victim = _wait(trial_on_worker_mid_training, 240, "a trial training on the worker", (cluster, job_id))
    os.kill(cluster.raylet_pids()[two_nodes["worker"]], signal.SIGKILL)

    logs = _cli(["logs", job_id, "--follow"], cluster, timeout=600)
    assert logs.returncode == 0, logs.stdout[-3000:]
    rows = _results(client, "node-loss")
    _assert_none_failed(rows, logs)
    _assert_every_epoch_once(client, "node-loss", rows)
    moved = client.get_run(victim.info.run_id).data.tags
    story = (moved, _steps(client, victim), [line for line in logs.stdout.splitlines()
                                             if moved["hpsearch.trial_id"] in line][-20:])
    assert moved["hpsearch.nodes"].split(",") == [two_nodes["worker"], two_nodes["head"]], story
    assert moved.get("hpsearch.retries") == "1", story  # retried on the head, not failed
    used = {node for run in _children(client, "node-loss") for node in run.data.tags["hpsearch.nodes"].split(",")}
    assert two_nodes["worker"] in used and two_nodes["head"] in used


def test_killed_driver_is_resumed_without_rerunning_finished_trials(cluster, two_nodes, lv_small):
    job_id = _submit(cluster, lv_small, "driver-kill")
    client = mlflow.MlflowClient(cluster.mlflow_uri)

    def one_finished_one_training():
        runs = _children(client, "driver-kill")
        finished = [r for r in runs if r.info.status == "FINISHED"]
        training = [r for r in runs if r.info.status == "RUNNING" and _steps(client, r)]
        return finished if finished and training else None

    _wait(one_finished_one_training, 300, "one finished trial and one in training", (cluster, job_id))
    with token_env(cluster.token_path):
        driver = JobSubmissionClient(cluster.dashboard_url).get_job_info(job_id).driver_info
    os.kill(int(driver.pid), signal.SIGKILL)
    _wait(lambda: _status(cluster, job_id) == "FAILED", 60, "the job to fail")
    finished = {r.info.run_id: _history(client, r) for r in _children(client, "driver-kill")
                if r.info.status == "FINISHED"}

    experiment_dir = _parent(client, "driver-kill").data.tags["hpsearch.experiment_dir"]
    resumed = _cli(["submit", "--resume", experiment_dir], cluster)
    assert resumed.returncode == 0, resumed.stderr
    logs = _cli(["logs", resumed.stdout.strip(), "--follow"], cluster, timeout=600)
    assert logs.returncode == 0, logs.stdout[-3000:]
    rows = _results(client, "driver-kill")
    _assert_none_failed(rows, logs)
    _assert_every_epoch_once(client, "driver-kill", rows)
    for run_id, history in finished.items():  # not one more epoch, not one rewritten
        assert _history(client, client.get_run(run_id)) == history


def test_mlflow_outage_loses_no_metric(cluster, two_nodes, lv_small):
    job_id = _submit(cluster, lv_small, "mlflow-outage")
    client = mlflow.MlflowClient(cluster.mlflow_uri)
    _wait(lambda: any(_steps(client, r) for r in _children(client, "mlflow-outage")), 240, "a first epoch")
    server = psutil.Process(cluster.mlflow_pid)
    for proc in [server, *server.children(recursive=True)]:
        os.kill(proc.pid, signal.SIGKILL)
    time.sleep(12)  # the search trains on, its results queue in the driver
    assert _status(cluster, job_id) == "RUNNING"
    cluster.start_mlflow()  # same port, same store

    logs = _cli(["logs", job_id, "--follow"], cluster, timeout=600)
    assert logs.returncode == 0, logs.stdout[-3000:]
    assert "unavailable, queueing results" in logs.stdout
    rows = _results(client, "mlflow-outage")
    assert len(rows) == 4
    _assert_every_epoch_once(client, "mlflow-outage", rows)


def test_refusals_and_stop_are_one_clear_line(cluster, two_nodes, lv_small, tmp_path):
    local = _cli(["submit", "jobs/demo.yaml", *_sets(cluster, lv_small, "refused"), "--set", "storage.shared=false"],
                 cluster)
    assert local.returncode == 2 and local.stderr.count("\n") == 1, local.stderr
    assert "the Ray cluster has 2 nodes" in local.stderr and "storage.shared: true" in local.stderr

    attached = _cli(["run", "jobs/demo.yaml", *_sets(cluster, lv_small, "refused"), "--set", "storage.shared=false",
                     "--address", cluster.gcs_address], cluster)  # a driver attaching directly checks too
    assert attached.returncode == 2 and "storage.shared: true" in attached.stderr.splitlines()[-1]

    wrong_token = tmp_path / "token"
    wrong_token.write_text("0" * 64)
    denied = _cli(["status"], cluster, env={"RAY_AUTH_TOKEN_PATH": str(wrong_token)})
    assert denied.returncode == 2 and "authentication failed" in denied.stderr, denied.stderr

    unreachable = _submit(cluster, lv_small, "no-mlflow", "--set", f"tracking.uri=http://127.0.0.1:{free_port()}")
    logs = _cli(["logs", unreachable, "--follow"], cluster, timeout=300)
    assert logs.returncode == 1 and "hpsearch: error: tracking.uri" in logs.stdout
    assert "Traceback" not in logs.stdout

    running = _submit(cluster, lv_small, "stopped")
    _wait(lambda: _status(cluster, running) == "RUNNING", 120, "the job to run")
    assert "stop requested" in _cli(["stop", running], cluster).stdout
    _wait(lambda: "STOPPED" in _cli(["status", running], cluster).stdout, 60, "the job to stop")
    listed = _cli(["status"], cluster).stdout
    assert running in listed and unreachable in listed


# Helpers: the CLI as a user runs it, and MLflow read with its own client.


def _cli(args: list[str], cluster: LocalCluster | None = None, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(cluster.client_env() if cluster else {}), **(env or {})}
    return subprocess.run([*HPSEARCH, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _sets(cluster: LocalCluster, data: Path, experiment: str) -> list[str]:
    # The default max_failures (1): in CI runs (2026-12-02) a trial Ray placed on the worker as
    # it was killed failed five times in seconds ("actor unavailable: Socket closed", 0 epochs)
    # before the node was declared dead; hpsearch.search.retries now gives those retries back
    # and waits before each.
    values = [f"dataset.path={data}", "dataset.image_size=[32,32]", "dataset.val_fraction=0.25",
              "search.num_trials=4", "search.dashboard=false", "scheduler.max_epochs=6",
              "scheduler.grace_period=2",
              f"storage.path={cluster.state_dir / 'results'}", "storage.shared=true",
              f"tracking.uri={cluster.mlflow_uri}", f"tracking.experiment={experiment}"]
    return [word for value in values for word in ("--set", value)]


def _submit(cluster: LocalCluster, data: Path, experiment: str, *extra: str, job: Path | str = "jobs/demo.yaml") -> str:
    done = _cli(["submit", str(job), *_sets(cluster, data, experiment), *extra], cluster)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _status(cluster: LocalCluster, job_id: str) -> str:
    with token_env(cluster.token_path):
        return JobSubmissionClient(cluster.dashboard_url).get_job_status(job_id).value


def _parent(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`hpsearch.experiment_dir` != ''")[0]


def _children(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`hpsearch.trial_id` != ''")


def _steps(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_dice"))


def _history(client, run) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, "val_dice"))


def _results(client, experiment: str) -> list[dict]:
    folder = Path(_parent(client, experiment).data.tags["hpsearch.experiment_dir"])
    return json.loads((folder / "results.json").read_text())["trials"]


def _assert_none_failed(rows: list[dict], logs) -> None:
    # With each failed trial's reason and its lines of the job's log: CI saw trials fail here after
    # the node loss that local runs did not reproduce (retries used up before Ray saw the node
    # dead, then a reused actor's reset on the lost node; both fixed in hpsearch.search.retries).
    failed = [(r["trial_id"], r.get("failure"), r.get("error"), r.get("epochs_run")) for r in rows
              if r["status"] == "failed"]
    about = [line for line in logs.stdout.splitlines()  # the failed trials' story, not just the log's end
             if any(trial_id in line for trial_id, *_ in failed) or "retrying in" in line or "Traceback" in line]
    assert len(rows) == 4 and not failed, (failed, "\n".join(about)[-6000:], logs.stdout[-2000:])


def _assert_every_epoch_once(client, experiment: str, rows: list[dict]) -> None:
    children = _children(client, experiment)
    assert all(r.info.status != "RUNNING" for r in children)  # lost runs are ended too
    runs = {r.data.tags["hpsearch.trial_id"]: r for r in children if r.data.tags["hpsearch.status"] != "lost"}
    assert sorted(runs) == sorted(r["trial_id"] for r in rows)  # one child run per trial
    for row in rows:
        assert _steps(client, runs[row["trial_id"]]) == list(range(1, row["epochs_run"] + 1)), row["trial_id"]


def _wait(condition, timeout_s: float, what: str, job: tuple[LocalCluster, str] | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if job and _status(*job) in ("FAILED", "SUCCEEDED", "STOPPED"):
            break  # ended before the moment came: say why at once
        time.sleep(0.5)
    logs = _cli(["logs", job[1]], job[0]).stdout[-4000:] if job else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs}")
