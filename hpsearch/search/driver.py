"""``hpsearch run`` and ``hpsearch resume``: the search from job file to results table.

Order matters: every file is validated, the MLflow store is reached, and the data is
prepared before Ray starts, so a typo costs a second, not a cluster start.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ray import tune

from hpsearch.data import load_dataset
from hpsearch.errors import HpsearchError
from hpsearch.search import results as results_mod
from hpsearch.search.tuner import (
    build_tuner,
    read_search_state,
    restore_tuner,
    write_search_state,
)
from hpsearch.space import load_space
from hpsearch.spec import Job, load_job

Echo = Callable[[str], None]


def run_search(job_path: Path, overrides=(), *, address: str | None = None, echo: Echo = print) -> Path:
    """Run the search a job file describes; return the experiment folder."""
    from hpsearch.tracking import MLflowTracker, start_search_run

    job = load_job(job_path, overrides)
    if job.search_space is None:
        raise HpsearchError(f"{job_path}: search_space: missing; name a YAML file of distributions")
    # Absolute from here on: ray.init() in a Ray job's driver may change the working directory.
    job_path = Path(job_path).resolve()
    job = job.model_copy(update={
        "search_space": job.search_space.resolve(),
        "dataset": job.dataset.model_copy(update={"path": job.dataset.path.resolve()}),
    })
    space = load_space(job.search_space, job.model)
    storage = str(Path(job.storage.path).expanduser().resolve())
    name = f"{job.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    experiment_dir = Path(storage) / name
    tracking_uri = _tracking_uri(job.tracking.uri)
    _check_tracking(tracking_uri)

    data, from_cache = load_dataset(job.dataset)
    echo(
        f"data: {len(data.train_x)} training / {len(data.val_x)} validation slices "
        f"({'cache' if from_cache else 'preprocessed'}), classes {data.class_names}"
    )
    _init_ray(address)
    job.storage.check_for_cluster(_alive_nodes())
    resolved = job.model_copy(
        update={
            "storage": job.storage.model_copy(update={"path": storage}),
            "tracking": job.tracking.model_copy(update={"uri": tracking_uri}),
        }
    )
    parent_run_id = start_search_run(
        tracking_uri,
        job.tracking.experiment or job.name,
        run_name=name,
        params=_search_params(job),
        tags={"hpsearch.job": str(job_path), "hpsearch.experiment_dir": str(experiment_dir),
              "mlflow.source.git.commit": _code_version()},
        artifacts={"job.yaml": Path(job_path), "search_space.yaml": job.search_space},
        dataset_fingerprint=data.info.get("fingerprint"),
    )
    write_search_state(
        experiment_dir,
        {
            "parent_run_id": parent_run_id,
            "tracking_uri": tracking_uri,
            "job": resolved.model_dump(mode="json"),
            "data_info": data.info,
        },
        {"job.yaml": Path(job_path), "search_space.yaml": job.search_space},
    )
    echo(f"search: {name}: {job.search.num_trials} trials, {job.search.max_concurrent} at a time, "
         f"sampler {job.search.sampler}, scheduler {job.scheduler.type}")
    echo(f"experiment folder: {experiment_dir}")
    tracker = MLflowTracker(tracking_uri, _experiment_id(tracking_uri, parent_run_id), parent_run_id)
    tuner = build_tuner(job, space, data, name=name, storage=storage, callbacks=[tracker, ProgressPrinter(echo)])
    return _finish(tuner, resolved, experiment_dir, echo)


def resume_search(experiment_dir: Path, *, address: str | None = None, echo: Echo = print) -> Path:
    """Continue an interrupted search with its searcher and scheduler state."""
    experiment_dir = Path(experiment_dir).resolve()
    state = read_search_state(experiment_dir)
    job = Job.model_validate(state["job"])
    _check_tracking(state["tracking_uri"])
    data, _ = load_dataset(job.dataset)
    _init_ray(address)
    job.storage.check_for_cluster(_alive_nodes())
    echo(f"resuming {experiment_dir}")
    tuner = restore_tuner(experiment_dir, job, data)
    return _finish(tuner, job, experiment_dir, echo)


def _finish(tuner: tune.Tuner, job: Job, experiment_dir: Path, echo: Echo) -> Path:
    grid = tuner.fit()
    rows = results_mod.summarise(grid, job.search.metric, job.search.mode)
    path = results_mod.write_results(experiment_dir, rows, job.search.metric, job.search.mode)
    counts = {s: sum(r.status == s for r in rows) for s in ("completed", "stopped_early", "failed")}
    echo(results_mod.format_table(rows, job.search.metric))
    echo(f"{len(rows)} trials: {counts['completed']} completed, {counts['stopped_early']} stopped early "
         f"by ASHA, {counts['failed']} failed; results in {path}")
    if rows and rows[0].status != "failed":
        best = rows[0]
        shown = ", ".join(f"{k}={results_mod.format_value(v)}" for k, v in sorted(best.params.items()))
        echo(f"best: trial {best.trial_id} {job.search.metric}={best.best_value:.4f} at epoch "
             f"{best.best_epoch} with {shown}")
    _write_dashboard(experiment_dir, echo)
    return experiment_dir


def _write_dashboard(experiment_dir: Path, echo: Echo) -> None:
    """The search's dashboard (``hpsearch dashboard``), after results.json: never costs results.

    In a child process: drawing the best trial's predictions imports TensorFlow, which the
    driver otherwise never loads (~0.6 GB), and nothing that goes wrong there, not even a
    crash, can take the finished search down with it. Its failure is one warning line.
    """
    command = [sys.executable, "-m", "hpsearch", "dashboard", str(experiment_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if done.returncode == 0:
            for line in done.stdout.splitlines():
                echo(line)
            return
        errors = [line for line in done.stderr.splitlines() if line.startswith("hpsearch: error: ")]
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        reason = errors[0].removeprefix("hpsearch: error: ") if errors else last
    echo(f"warning: dashboard not written ({reason[:300]}); retry with `hpsearch dashboard {experiment_dir}`")


class ProgressPrinter(tune.Callback):
    """One line per finished trial on the driver's console."""

    def __init__(self, echo: Echo = print):
        self.echo = echo
        self.finished = 0

    def __getstate__(self):
        return {"finished": self.finished}  # the console is not part of the state

    def __setstate__(self, state):
        self.__dict__.update(state, echo=print)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed")

    def _line(self, trial, outcome: str) -> None:
        self.finished += 1
        last = trial.last_result or {}
        self.echo(
            f"  trial {trial.trial_id} {outcome} after {last.get('training_iteration', 0)} epoch(s): "
            f"best val_dice {last.get('best_val_dice', float('nan')):.4f}"
        )


def tracking_uri_of(job_path: Path) -> str:
    """The absolute MLflow URI of a job file's tracking section."""
    return _tracking_uri(load_job(job_path).tracking.uri)


def _init_ray(address: str | None) -> None:
    import ray

    # Checkpointing every epoch with num_to_keep=2 is deliberate (see tuner.py); Ray's
    # "snapshotting may become a bottleneck" warning about it is noise at these sizes.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # The embedded default: a private local Ray on loopback, no dashboard. "local"
        # because a bare ray.init() would attach to whatever `ray start` ran last here.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")


def _alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _tracking_uri(uri: str) -> str:
    # A relative sqlite path would point elsewhere once Ray workers or a resume run
    # from another directory; pin it to the absolute file now.
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _check_tracking(uri: str) -> None:
    from hpsearch.tracking import ensure_reachable

    ensure_reachable(uri)


def _experiment_id(uri: str, run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id


def _search_params(job: Job) -> dict:
    return {
        "model": job.model,
        "sampler": job.search.sampler,
        "num_trials": job.search.num_trials,
        "max_concurrent": job.search.max_concurrent,
        "metric": job.search.metric,
        "seed": job.search.seed,
        "scheduler": job.scheduler.type,
        "max_epochs": job.scheduler.max_epochs,
        "grace_period": job.scheduler.grace_period,
        "reduction_factor": job.scheduler.reduction_factor,
        "cpus_per_trial": job.resources.cpus_per_trial,
        "gpus_per_trial": job.resources.gpus_per_trial,
        "dataset": str(job.dataset.path),
        "image_size": list(job.dataset.image_size),
        **{f"default.{k}": v for k, v in job.params.items()},
    }


def _code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
