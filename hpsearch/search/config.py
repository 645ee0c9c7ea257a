"""The search sections of a job file, grouped by concern as Ray Tune groups its own.

``search`` (what to propose and how many), ``scheduler`` (when to stop a trial early),
``resources`` (what one trial gets), ``tracking`` (where MLflow records it), ``storage``
(where checkpoints go, and whether every node sees them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpsearch.errors import HpsearchError
from hpsearch.fidelity import FidelityConfig
from hpsearch.selection import PATTERN, check_metric, default_mode


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchConfig(_Section):
    """Attributes:
    sampler: Optuna sampler: ``tpe`` (multivariate), ``random``, ``cmaes``, ``qmc``,
        ``gp`` (needs ``pip install 'hpsearch[gp]'``).
    num_trials: Configurations to try.
    max_concurrent: Trials running at once.
    metric: Per-epoch metric that picks the best epoch and trial: ``val_dice`` (mean
        foreground Dice), ``val_dice_<class>``, ``val_iou``, ``val_loss`` or ``loss``.
    mode: ``max`` for Dice and IoU, ``min`` for losses (the default follows the metric).
    seed: Seed of the sampler; the same seed proposes the same configurations.
    max_failures: Retries of a failed trial (from its last checkpoint) before it
        is recorded as failed. A lost node or process (a ``transient`` failure) does not use
        one up, as long as there is at least one (:mod:`hpsearch.search.retries`).
    dashboard: Write the search's dashboard (``hpsearch dashboard``) when it ends.
    cross_validation: With ``dataset.folds`` (or ``dataset.splits``) of more than one fold:
        ``fidelity`` (folds added as ASHA promotes a trial: a trial is judged on fold 0
        first, then on the mean over more folds), ``mean`` (every trial trains every fold;
        no early stopping) or ``off`` (the search uses fold 0 only). Without folds, unused.
    startup_trials: TPE's random proposals before it models the results (default: a
        quarter of ``num_trials``, 2 to 10).
    stopped_trials: What the sampler is told of a trial the scheduler stopped early:
        ``complete`` (its last value, as if it had finished) or ``pruned`` (Optuna's
        pruned state: TPE ranks it by how far it got, then by its intermediate values).
    warm_start: Earlier searches whose ended trials (their values and per-epoch curves, the
        failed ones as failed) seed the sampler before the first proposal: experiment folders
        (relative to the working directory), or ``runs:/<parent run id>`` in this job's
        tracking store. They must rank by the same metric and mode; a different dataset
        content or search space is refused unless ``warm_start_force``.
    warm_start_force: Warm-start although the dataset's content or the search space
        differs; trials outside this search's space are skipped (and counted).
    """

    sampler: Literal["tpe", "random", "cmaes", "qmc", "gp"] = "tpe"
    num_trials: int = Field(16, ge=1, le=100_000)
    max_concurrent: int = Field(2, ge=1, le=10_000)
    metric: str = Field("val_dice", pattern=PATTERN)
    mode: Literal["max", "min"] | None = None
    seed: int = 0
    max_failures: int = Field(1, ge=0, le=100)
    dashboard: bool = True
    cross_validation: Literal["fidelity", "mean", "off"] = "fidelity"
    startup_trials: int | None = Field(None, ge=1, le=100_000)
    stopped_trials: Literal["complete", "pruned"] = "complete"
    warm_start: list[str] = Field(default_factory=list, max_length=100)
    warm_start_force: bool = False

    @model_validator(mode="after")
    def _mode_follows_metric(self):
        if self.mode is None:
            self.mode = default_mode(self.metric)
        try:
            check_metric(self.metric, self.mode)
        except HpsearchError as exc:
            raise ValueError(str(exc).split(": ", 1)[1]) from None
        return self


class SchedulerConfig(_Section):
    """Attributes:
    type: ``asha`` (stop weak trials at rungs), ``hyperband`` (synchronous brackets that
        pause trials at each rung: Ray's ``HyperBandScheduler``), ``bohb`` (Hyperband with
        BOHB's own model proposing instead of ``search.sampler``; needs
        ``pip install 'hpsearch[bench]'``) or ``none``. Hyperband and BOHB take no
        ``grace_period``: their brackets follow ``max_epochs`` and ``reduction_factor``.
    max_epochs: Epoch cap of any trial (ASHA's ``max_t``).
    grace_period: Epochs every trial runs before it can be stopped.
    reduction_factor: ASHA keeps ``1/reduction_factor`` of the trials at each rung.
    fidelity: Cheaper first epochs of every trial (slice mode): ``resolution`` and
        ``case_fraction`` below 1 for ``epochs`` epochs (default ``grace_period``, ASHA's
        first rung); see :mod:`hpsearch.fidelity`.
    """

    type: Literal["asha", "hyperband", "bohb", "none"] = "asha"
    max_epochs: int = Field(20, ge=1, le=100_000)
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0)
    fidelity: FidelityConfig | None = None

    @model_validator(mode="after")
    def _grace_within_max(self):
        if self.grace_period > self.max_epochs:
            raise ValueError(
                f"grace_period ({self.grace_period}) must not exceed max_epochs ({self.max_epochs})"
            )
        if self.fidelity is not None:
            if self.fidelity.epochs is None:
                self.fidelity = self.fidelity.model_copy(update={"epochs": self.grace_period})
            if self.fidelity.epochs >= self.max_epochs:
                raise ValueError(f"fidelity.epochs ({self.fidelity.epochs}) must be below max_epochs "
                                 f"({self.max_epochs}): some epochs must train at full fidelity")
        return self


class ResourcesConfig(_Section):
    """Attributes:
    cpus_per_trial: CPUs reserved per trial; TensorFlow's threads follow it.
    gpus_per_trial: GPUs per trial; a fraction (0.5) puts several trials on one
        GPU, each trial's TensorFlow capped to its share of the memory (runtime.py).
    """

    cpus_per_trial: float = Field(1.0, gt=0.0, le=1024)
    gpus_per_trial: float = Field(0.0, ge=0.0, le=64)

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("more than one GPU per trial must be a whole number")
        return value


class TrackingConfig(_Section):
    """Attributes:
    uri: MLflow tracking URI; the embedded default is a SQLite file in the working
        directory, any server works (``http://127.0.0.1:5000``).
    experiment: MLflow experiment name (default: the job's name).
    """

    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None


class StorageConfig(_Section):
    """Attributes:
    path: Folder where Ray Tune keeps trial checkpoints and hpsearch its experiment
        folders; relative to the working directory. A job file may give
        ``storage: results`` as a shorthand for ``storage: {path: results}``.
    shared: The folder is the same storage on every node of the cluster (an NFS or
        EFS mount, or a single machine). A folder not marked shared is refused on a
        multi-node cluster: a trial moved to another node could not reach its
        checkpoints.
    checkpoint_interval_s: A trial saves a checkpoint once its last one is this many seconds
        of training old, and when it ends; a lost node or killed driver costs it at most
        that much training. 0: after every epoch (more driver work and disk writes,
        :mod:`hpsearch.search.checkpointing`).
    """

    path: str = Field("results", min_length=1)
    shared: bool = False
    checkpoint_interval_s: float = Field(30.0, ge=0.0, le=86_400)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"path": value} if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _a_folder(cls, value: str) -> str:
        # hpsearch writes its own files (search state, results) beside Ray's with plain
        # file I/O, so object-store URIs would half work; refuse them up front.
        if "://" in value:
            raise ValueError(
                "object-store URIs are not supported yet; mount the bucket or share (NFS, EFS, "
                "s3fs) on every node and give the mount path with shared: true"
            )
        return value

    def check_for_cluster(self, nodes: int) -> None:
        """Refuse a folder only one machine sees when trials may run on other nodes.

        Ray Tune would start, then fail the first time a trial is restored on another
        node (after ASHA pauses it, or after a node loss): its checkpoint is not there.

        Raises:
            HpsearchError: ``nodes`` > 1 and the folder is not marked shared.
        """
        if nodes > 1 and not self.shared:
            raise HpsearchError(
                f"storage.path {self.path}: a local folder, but the Ray cluster has {nodes} nodes and "
                "trials on the others could not reach their checkpoints; put it on storage every "
                "node mounts (NFS, EFS) and set storage.shared: true"
            )
