"""``hpsearch run``, ``hpsearch run --extend`` and ``hpsearch resume``: the search from job
file to results table.

Order matters: every file is validated, the MLflow store is reached, and the data is
prepared before Ray starts, so a typo costs a second, not a cluster start. The search's
state belongs to its :class:`~hpsearch.experiment.Experiment`; this module only drives it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ray import tune

from hpsearch.data import split_dataset
from hpsearch.data.cache import cached_file_digests, digest_of_files
from hpsearch.data.guard import real_path, refuse_inside
from hpsearch.errors import HpsearchError, SearchInterrupted
from hpsearch.experiment import RESULTS_FILE, Experiment, SearchState, base_name
from hpsearch.outcome import Outcome, SearchStatus
from hpsearch.search import results as results_mod
from hpsearch.search.local_ray import init_ray
from hpsearch.search.progress import SearchProgress
from hpsearch.search.retries import NodeLossRetries
from hpsearch.search.folds import objective_name
from hpsearch.search.interrupt import interruptible
from hpsearch.search.tuner import build_tuner, restore_tuner
from hpsearch.selection import check_metric
from hpsearch.space import load_space, to_optuna
from hpsearch.spec import Job, load_job
from hpsearch.tracking.store import ensure_reachable, local_store_path, resolve_uri

Echo = Callable[[str], None]


def run_search(job_path: Path, overrides=(), *, address: str | None = None, echo: Echo = print) -> Path:
    """Run the search a job file describes; return the experiment folder."""
    from hpsearch.search import warm_start
    from hpsearch.search.study import create_study
    from hpsearch.tracking.runs import EXPERIMENT_DIR_TAG, start_search_run

    job = load_job(job_path, overrides)
    name = base_name(job.name)  # when the user started it, whatever the set-up costs
    if job.search_space is None:
        raise HpsearchError(f"{job_path}: search_space: missing; name a YAML file of distributions")
    # Absolute from here on: ray.init() in a Ray job's driver may change the working directory.
    # (real_path, not Path.resolve: a symlink loop is then a clear error later, not a RuntimeError)
    job_path = real_path(job_path)
    storage = real_path(Path(job.storage.path).expanduser())
    job = job.model_copy(update={
        "search_space": real_path(job.search_space),
        "dataset": job.dataset.model_copy(update={
            "path": real_path(job.dataset.path),
            **{key: real_path(getattr(job.dataset, key)) for key in ("splits", "groups_file")
               if getattr(job.dataset, key) is not None}}),
        "storage": job.storage.model_copy(update={"path": str(storage)}),
        "tracking": job.tracking.model_copy(update={"uri": resolve_uri(job.tracking.uri)}),
    })
    space = load_space(job.search_space, job.family)
    _refuse_outputs_in_dataset(job)
    ensure_reachable(job.tracking.uri)

    folds, from_cache = job.load_search_data()
    data = folds[0]
    check_metric(job.search.metric, job.search.mode, [*data.class_names, *job.dataset.regions])  # regions too
    files = _search_files(job)
    echo(f"data: {data.summary()} ({'cache' if from_cache else 'preprocessed'})")
    echo(_splits_line(job, data.info["splits"], len(folds)))
    warm = None
    if job.search.warm_start:  # checked before anything is written: a refusal leaves no trace
        where = f"{job_path}: search.warm_start"
        sources = warm_start.resolve_sources(job.search.warm_start, job.tracking.uri, where)
        warm = warm_start.prepare(sources, space=to_optuna(space), mode=job.search.mode,
                                  objective=objective_name(job.search.metric, len(folds)),
                                  digest=data.info["digest"], force=job.search.warm_start_force, where=where)
        job = job.model_copy(update={"search": job.search.model_copy(update={"warm_start": list(map(str, sources))})})
    init_ray(address)
    job.storage.check_for_cluster(_alive_nodes())

    folder = Experiment.claim_folder(storage, name)
    copies = {"job.yaml": job_path, "search_space.yaml": job.search_space}
    try:
        parent_run_id = start_search_run(
            job.tracking.uri, job.tracking.experiment or job.name, run_name=folder.name,
            params=_search_params(job, data.info), artifacts=copies, dataset_fingerprint=data.info.get("fingerprint"),
            tags={"hpsearch.job": str(job_path), EXPERIMENT_DIR_TAG: str(folder),
                  "mlflow.source.git.commit": _code_version(), **(warm.tags() if warm else {})})
        experiment = Experiment.create(folder, SearchState(
            job=job.model_dump(mode="json"), tracking_uri=job.tracking.uri, parent_run_id=parent_run_id,
            dataset_digest=data.info["digest"], dataset_files=files, data_info=data.info), copies)
    except BaseException:
        Experiment.release_folder(folder)  # nothing of this search exists: no folder left behind
        raise
    experiment.state.experiment_id = experiment.runs.experiment_id
    experiment.set_status(SearchStatus.RUNNING)
    echo(f"search: {experiment.name}: {job.search.num_trials} trials, {job.search.max_concurrent} at a time, "
         f"sampler {job.search.sampler}, scheduler {job.scheduler.type}")
    echo(f"experiment folder: {experiment.path}")
    for line in warm.lines() if warm else ():
        echo(line)
    _write_splits(experiment, data.info["splits"])
    create_study(experiment, job.search.mode, warm.trials if warm else ())
    tuner = build_tuner(job, space, folds, name=experiment.name, storage=str(storage),
                        callbacks=_callbacks(experiment, job, echo), study=_study(experiment))
    return _finish(tuner, experiment, echo)


def extend_search(experiment_dir: Path, trials: int, *, address: str | None = None, echo: Echo = print) -> Path:
    """Add ``trials`` trials to a finished search: same experiment folder, MLflow parent run
    and Optuna study (the sampler sees every earlier trial); its ranking then covers all.

    They run as a Ray Tune run of their own (``Tuner.restore`` cannot add samples) in a
    sub-folder of the experiment (:meth:`Experiment.add_extension`), with the sampler seeded
    anew (a random sampler would otherwise repeat the first trials' configurations).

    Raises:
        HpsearchError: ``trials`` < 1, not an experiment folder, a search that is still
            running or was interrupted, or a dataset that changed since it ran.
    """
    from hpsearch.search.study import create_study, finished_trials

    if trials < 1:
        raise HpsearchError(f"--trials {trials}: must be at least 1")
    experiment = Experiment.open(experiment_dir)
    if experiment.status is SearchStatus.RUNNING:
        raise HpsearchError(f"{experiment.path}: the search is still running (or its driver was killed: then "
                            f"`hpsearch resume {experiment.path}` first); extend it once it has finished")
    if experiment.status is SearchStatus.INTERRUPTED:
        raise HpsearchError(f"{experiment.path}: the search was interrupted; finish it with "
                            f"`hpsearch resume {experiment.path}`, then extend it")
    job = experiment.job
    ensure_reachable(experiment.state.tracking_uri, f"{experiment.path.name}: tracking_uri")
    folds = _recorded_data(experiment, accept_data_change=False, echo=echo)
    space = load_space(experiment.space_file(), job.family)
    init_ray(address)
    job.storage.check_for_cluster(_alive_nodes())
    if not experiment.study_file.is_file():  # recorded before studies were kept: rebuilt from results.json
        create_study(experiment, job.search.mode, finished_trials(experiment, to_optuna(space)) or ())
    extension = experiment.add_extension(trials)
    more = job.model_copy(update={"search": job.search.model_copy(update={"num_trials": trials,
                                                                         "seed": extension.seed})})
    try:
        experiment.runs.reopen_parent()
        experiment.runs.set_parent_tags({"hpsearch.extensions": ", ".join(
            f"{e.name}: +{e.trials} trial(s) at {e.at}" for e in experiment.state.extensions)})
        tuner = build_tuner(more, space, folds, name=extension.name, storage=str(experiment.path),
                            callbacks=_callbacks(experiment, more, echo), study=_study(experiment))
    except BaseException:
        experiment.state.extensions.pop()  # nothing of it ran: the search is as it was
        experiment.set_status(SearchStatus.FINISHED)
        raise
    echo(f"extending {experiment.path}: {trials} more trial(s) ({extension.name}), sampler seed {extension.seed}")
    return _finish(tuner, experiment, echo)


def resume_search(experiment_dir: Path, *, address: str | None = None, echo: Echo = print,
                  accept_data_change: bool = False) -> Path:
    """Continue an interrupted search with its searcher and scheduler state.

    Raises:
        HpsearchError: The dataset's content changed since the search started (unless
            ``accept_data_change``: then the change is recorded and the search goes on).
    """
    experiment = Experiment.open(experiment_dir)
    job = experiment.job
    ensure_reachable(experiment.state.tracking_uri, f"{experiment.path.name}: tracking_uri")
    folds = _recorded_data(experiment, accept_data_change=accept_data_change, echo=echo)
    init_ray(address)
    job.storage.check_for_cluster(_alive_nodes())
    echo(f"resuming {experiment.path}")
    experiment.set_status(SearchStatus.RUNNING)
    tuner = restore_tuner(experiment.ray_runs[-1], job, folds)  # an extension's, if it has any
    return _finish(tuner, experiment, echo)


def _recorded_data(experiment: Experiment, *, accept_data_change: bool, echo: Echo) -> list:
    """The search's prepared data (one per fold), refused if its content or splits changed
    since the search started (unless a content change is accepted: then it is recorded)."""
    job = experiment.job
    files = _search_files(job)
    changed = experiment.check_dataset(digest_of_files(files), files, accept=accept_data_change)
    folds, _ = job.load_search_data(plan=experiment.state.data_info.get("plan"))
    recorded = experiment.state.data_info.get("splits")
    if recorded and folds[0].info["splits"] != recorded and not changed:
        raise HpsearchError(f"{experiment.path}: the dataset's splits differ from those the search started with "
                            f"(dataset.splits or groups_file changed?); restore them, or start a new search")
    if changed:
        experiment.update_data_info(folds[0].info)
        echo(f"warning: dataset changed ({len(changed)} file(s)); accepted and recorded in {experiment.path}")
    return folds


def _study(experiment: Experiment) -> dict:
    """Where Ray's OptunaSearch keeps the search's study: the experiment's journal file."""
    from hpsearch.search.study import storage_for

    return {"storage": storage_for(experiment), "study_name": experiment.name}


def _callbacks(experiment: Experiment, job: Job, echo: Echo) -> list[tune.Callback]:
    from hpsearch.tracking.tracker import MLflowTracker

    state = experiment.state
    tracker = MLflowTracker(state.tracking_uri, experiment.runs.experiment_id, state.parent_run_id,
                            metric=experiment.objective, mode=job.search.mode, max_epochs=job.scheduler.max_epochs)
    # NodeLossRetries after the tracker: the tracker tags the attempt count before the refund.
    return [tracker, SearchProgress(job.search.num_trials, experiment.objective, job.search.mode, echo),
            NodeLossRetries()]


def _finish(tuner: tune.Tuner, experiment: Experiment, echo: Echo) -> Path:
    from hpsearch.search.study import dashboard_hint

    job = experiment.job
    with interruptible() as stop:
        grid = tuner.fit()
    if stop.signal is not None:
        experiment.set_status(SearchStatus.INTERRUPTED)
        raise SearchInterrupted(
            f"search interrupted ({signal.Signals(stop.signal).name}); its state is saved: "
            f"continue with `hpsearch resume {experiment.path}`", 128 + stop.signal)
    objective = experiment.objective
    rows = results_mod.merge_rows(_recorded_rows(experiment, echo), results_mod.summarise(
        grid, objective, job.search.mode), job.search.mode)  # an extended search ranks all its trials
    path = experiment.write_results(rows, objective, job.search.mode)
    counts = {o: sum(r.status == o for r in rows) for o in Outcome}
    echo(results_mod.format_table(rows, objective))
    echo(f"{len(rows)} trials: {counts[Outcome.COMPLETED]} completed, {counts[Outcome.STOPPED_EARLY]} stopped "
         f"early by ASHA, {counts[Outcome.FAILED]} failed; results in {path}")
    if rows and Outcome(rows[0].status).scored:
        best = rows[0]
        shown = ", ".join(f"{k}={results_mod.format_value(v)}" for k, v in sorted(best.params.items()))
        where = (f"over {best.folds} fold(s)" if best.folds else f"at epoch {best.best_epoch}")
        echo(f"best: trial {best.trial_id} {objective}={best.best_value:.4f} {where} with {shown}")
        if experiment.test_cases:
            _in_child("evaluate", experiment.path, "test evaluation", echo)
        else:
            echo(f"note: no locked test split; {objective} is the selection metric, an optimistic estimate. "
                 "Hold cases out with dataset.test_fraction (or labelled imagesTs/labelsTs)")
    if job.search.dashboard:
        _in_child("dashboard", experiment.path, "dashboard", echo)
    echo(f"optuna study: {experiment.study_file} (to browse it: {dashboard_hint(experiment)})")
    return experiment.path


def _recorded_rows(experiment: Experiment, echo: Echo) -> list[results_mod.TrialSummary]:
    """The rows ``results.json`` already has (an extended search's earlier trials), or none."""
    if not experiment.file(RESULTS_FILE).is_file():
        return []
    try:
        return results_mod.rows_from_payload(experiment.results())
    except HpsearchError as exc:
        echo(f"warning: earlier results not kept ({exc})")
        return []


def _in_child(command: str, experiment_dir: Path, what: str, echo: Echo) -> None:
    """``hpsearch COMMAND EXPERIMENT_DIR`` after results.json: never costs results.

    The dashboard and the locked test split's evaluation run in a child process: they
    import TensorFlow, which the driver otherwise never loads (~0.6 GB), and nothing that
    goes wrong there, not even a crash, can take the finished search down with it. A
    failure is one warning line saying how to retry.
    """
    argv = [sys.executable, "-m", "hpsearch", command, str(experiment_dir)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
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
    echo(f"warning: {what} not written ({reason[:300]}); retry with `hpsearch {command} {experiment_dir}`")


def _search_files(job: Job) -> dict[str, str]:
    """Per-file digests of what the search may read: every case but the locked test split."""
    index, _ = split_dataset(job.dataset)
    return cached_file_digests(index, job.dataset.cache_dir)


def _splits_line(job: Job, splits: dict, folds: int) -> str:
    test = splits.get("test") or []
    held = f"locked test split: {len(test)} case(s) ({splits.get('test_source')})" if test else "no locked test split"
    if folds > 1:
        return f"splits: {folds}-fold cross-validation ({job.search.cross_validation}); {held}"
    return f"splits: one train/validation split; {held}"


def _write_splits(experiment: Experiment, splits: dict) -> None:
    """The search's folds as nnU-Net's splits_final.json, for nnU-Net or the next search."""
    from hpsearch.data.splits import Splits, write_nnunet_splits
    from hpsearch.experiment.experiment import SPLITS_FILE

    write_nnunet_splits(Splits.from_dict(splits).folds, experiment.file(SPLITS_FILE))


def _refuse_outputs_in_dataset(job: Job) -> None:
    """hpsearch never writes into a dataset folder: not its results, not its MLflow store."""
    refuse_inside(Path(job.storage.path), job.dataset.path, "storage.path")
    if (store := local_store_path(job.tracking.uri)) is not None:
        refuse_inside(store, job.dataset.path, "tracking.uri")


def _alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _search_params(job: Job, data_info: dict) -> dict:
    """The parent run's params: the search's settings, the dataset's plan (patch mode) and
    the job's default hyperparameters."""
    plan = data_info.get("plan") or {}
    shown = ("dims", "target_spacing", "patch_size", "poolings", "batch_size", "median_shape", "slice_axis")
    return {
        "model": job.model,
        "sampler": job.search.sampler,
        "num_trials": job.search.num_trials,
        "max_concurrent": job.search.max_concurrent,
        "metric": job.search.metric,
        "mode": job.search.mode,
        "seed": job.search.seed,
        "scheduler": job.scheduler.type,
        "max_epochs": job.scheduler.max_epochs,
        "grace_period": job.scheduler.grace_period,
        "reduction_factor": job.scheduler.reduction_factor,
        "cpus_per_trial": job.resources.cpus_per_trial,
        "gpus_per_trial": job.resources.gpus_per_trial,
        "dataset": str(job.dataset.path),
        "folds": len((data_info.get("splits") or {}).get("folds", ())) or 1,
        "cross_validation": job.search.cross_validation,
        "test_cases": len((data_info.get("splits") or {}).get("test", ())),
        "test_source": (data_info.get("splits") or {}).get("test_source", "none"),
        **({f"region.{k}": v for k, v in job.dataset.regions.items()}),
        **({"image_size": list(job.dataset.image_size)} if not plan else {}),
        **{f"plan.{k}": plan[k] for k in shown if k in plan},
        **({f"augment.{k}": v for k, v in job.augment.model_dump().items()} if plan else {}),
        **{f"default.{k}": v for k, v in job.params.items()},
        **({"warm_start": job.search.warm_start, "warm_start_force": job.search.warm_start_force}
           if job.search.warm_start else {}),
    }


def _code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
