"""Building, running and resuming a search: Ray Tune + Optuna + ASHA.

The driver side of ``hpsearch run`` / ``hpsearch resume``: everything is validated and
the data prepared *before* Ray starts; the Tuner gets Ray's ``OptunaSearch`` with a
seeded Optuna sampler, ``ASHAScheduler`` counting epochs (or Hyperband, or BOHB with its
own searcher), the :class:`~hpsearch.search.trainable.SegmentationTrainable` with the data
in the object store, and the MLflow callback. Ray keeps its state in the experiment folder
(:class:`~hpsearch.experiment.Experiment`), which ``Tuner.restore`` resumes from. Any other
trainable reporting the same keys can be given instead (the learning-curve replay of
:mod:`hpsearch.curves.replay`), so a benchmark measures the very searcher and scheduler a
job gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ray import tune

from hpsearch.data.preprocess import PreparedData
from hpsearch.errors import HpsearchError
from hpsearch.search.folds import objective_name
from hpsearch.search.schedulers import scheduler_for
from hpsearch.search.searchers import limited, searcher_for
from hpsearch.search.trainable import SegmentationTrainable

__all__ = ["build_tuner", "restore_tuner", "trainable_for"]


def build_tuner(
    job,
    space: dict[str, Any],
    data: list[PreparedData] | None,
    *,
    name: str,
    storage: str,
    callbacks: list[tune.Callback],
    trainable: Callable | None = None,
    study: dict[str, Any] | None = None,
) -> tune.Tuner:
    """A Tuner for a validated job, its search space and its prepared data (one per fold).

    ``study`` (``storage`` and ``study_name``) is where ``OptunaSearch`` keeps its Optuna
    study (:mod:`hpsearch.search.study`): it loads a study that exists, with every trial it
    holds, and reports each epoch's value to it; without one the study lives in memory.

    With several folds the search ranks by ``cv_<metric>`` and, for
    ``cross_validation: fidelity``, ASHA counts the fold-aware ``budget`` clock of
    :mod:`hpsearch.search.folds` up to ``folds x max_epochs``; ``mean`` trains every fold of
    every trial (no early stopping).

    Args:
        trainable: What runs a trial (default: :func:`trainable_for` the job and ``data``);
            e.g. :func:`hpsearch.curves.replay.replay_trainable`. With it, ``data`` may be
            ``None`` (one split).

    Raises:
        HpsearchError: ``scheduler.type`` hyperband or bohb with cross-validation, or bohb
            without its packages.
    """
    if trainable is None and data is None:
        raise ValueError("build_tuner needs the data or a trainable")
    search = job.search
    folds = len(data) if data else 1
    objective = objective_name(search.metric, folds)
    return tune.Tuner(
        trainable or trainable_for(job, data),
        tune_config=tune.TuneConfig(
            metric=objective,
            mode=search.mode,
            search_alg=limited(searcher_for(job, space, objective, study), job),
            scheduler=scheduler_for(job, folds),
            num_samples=search.num_trials,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(
                # Two, not one: Ray has let experiment state point at a just-deleted
                # checkpoint (ray#30073). Ray always keeps the latest, and the latest is the
                # one to export: it holds the best epoch's weights and every finished fold.
                num_to_keep=2,
                # When: the trainable asks (CheckpointClock, storage.checkpoint_interval_s),
                # and at the end of every trial, also one ASHA stopped.
                checkpoint_frequency=0,
                checkpoint_at_end=True,
            ),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
        ),
    )


def trial_name(trial) -> str:
    """A trial's name and folder: ``trial_<id>``, as MLflow and the experiment folder name it.

    A module-level function, not a lambda: Ray pickles both creators into every trial's entry
    of each experiment snapshot, a lambda by value (1.3 KB each), a function by reference.
    """
    return f"trial_{trial.trial_id}"


def trainable_for(job, data: list[PreparedData]) -> Callable:
    """The trainable with the job's constants bound and the data (one per fold) in the object store."""
    bound = tune.with_parameters(
        SegmentationTrainable,
        data=data,
        model=job.model,
        base_params=job.params_for(data[0].info),
        augment=job.augment.model_dump(),
        runtime=job.runtime.model_dump(),
        max_epochs=job.scheduler.max_epochs,
        metric=job.search.metric,
        mode=job.search.mode,
        checkpoint_interval_s=job.storage.checkpoint_interval_s,
        fidelity=job.scheduler.fidelity.model_dump() if job.scheduler.fidelity else None,
    )
    resources = {"cpu": job.resources.cpus_per_trial, "gpu": job.resources.gpus_per_trial}
    return tune.with_resources(bound, resources)


def restore_tuner(experiment_dir: Path, job, data: list[PreparedData] | None,
                  trainable: Callable | None = None) -> tune.Tuner:
    """The Tuner of an interrupted search, with searcher and scheduler state.

    Failed trials stay failed; unfinished ones continue from their last checkpoint.
    ``trainable`` as in :func:`build_tuner`.
    """
    if not tune.Tuner.can_restore(str(experiment_dir)):
        raise HpsearchError(
            f"{experiment_dir}: no Ray Tune experiment state to resume; the search may not "
            "have started any trial"
        )
    return tune.Tuner.restore(
        str(experiment_dir), trainable=trainable or trainable_for(job, data), resume_unfinished=True, resume_errored=False
    )
