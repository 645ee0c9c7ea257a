"""Job files: the YAML a user writes, validated before any work starts.

A job names a dataset and how to preprocess it, a model family, default
hyperparameters, and process settings::

    name: demo-lv
    dataset: {path: data/demo-lv, synthetic: lv, image_size: [64, 64]}
    model: unet
    params: {learning_rate: 1.0e-3, epochs: 20, depth: 4}

Unknown keys and bad values are refused with the file, the key and the reason
(:class:`~hpsearch.errors.HpsearchError`, one line per problem). Relative paths are
relative to the working directory, where ``hpsearch`` is run.

Example:
    >>> job = load_job("jobs/demo.yaml", overrides=["learning_rate=3e-4"])  # doctest: +SKIP
    >>> job.trial_params().learning_rate                                     # doctest: +SKIP
    0.0003
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpsearch.data.augment import AugmentConfig
from hpsearch.data.config import DatasetConfig
from hpsearch.errors import HpsearchError
from hpsearch.files import format_validation_error, read_yaml
from hpsearch.network import family
from hpsearch.params import validate_params
from hpsearch.runtime import RuntimeConfig
from hpsearch.search.config import (
    ResourcesConfig,
    SchedulerConfig,
    SearchConfig,
    StorageConfig,
    TrackingConfig,
)


class Job(BaseModel):
    """A validated job file.

    Attributes:
        name: Identifier used for output folders and MLflow experiments.
        dataset: Data location and preprocessing.
        model: Model family: ``unet`` or ``fcn``; ``unet`` on 3D patches
            (``dataset.dims: 3``) is the 3D U-Net (see :attr:`family`).
        params: Default hyperparameters (training and model options, flat); a search
            varies those named in the search space and keeps the others.
        augment: Augmentation of training patches (patch mode); a search space may
            vary any key as ``augment.<key>``.
        runtime: Threads, precision, seed.
        search_space: YAML file of distributions (needed by ``hpsearch run``).
        search: Sampler, number of trials, concurrency, metric.
        scheduler: Early stopping (ASHA) and the epoch cap.
        resources: CPUs and GPUs per trial.
        tracking: MLflow URI and experiment.
        storage: Where checkpoints and experiment folders go, and whether every node
            of a cluster sees the same folder.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    dataset: DatasetConfig
    model: Literal["unet", "fcn"]
    params: dict[str, Any] = Field(default_factory=dict)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    search_space: Path | None = None
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @property
    def family(self) -> str:
        """The model family built: ``model``, or ``unet3d`` for ``unet`` on 3D patches."""
        return family(self.model, self.dataset.dims)

    def trial_params(self) -> BaseModel:
        """The job's hyperparameters with every default filled in."""
        return validate_params(self.family, self.params)

    def params_for(self, data_info: dict[str, Any]) -> dict[str, Any]:
        """The job's ``params`` for data prepared as ``data_info``: in patch mode a
        ``batch_size`` the job does not set is the plan's (the largest that fits a trial's
        memory, nnU-Net's choice); a search space may still vary it."""
        plan = data_info.get("plan")
        if plan and "batch_size" not in self.params:
            return {**self.params, "batch_size": int(plan["batch_size"])}
        return dict(self.params)

    def load_data(self, plan: dict[str, Any] | None = None, *, fold: int = 0):
        """The job's preprocessed data (:func:`hpsearch.data.load_dataset`) of one fold and
        whether it came from the cache; in patch mode planned for one trial's memory (see
        :func:`~hpsearch.runtime.trial_memory_bytes`) and the job's ``base_filters``, or on
        ``plan`` (a :meth:`Plan.to_dict`, e.g. the plan a resumed search was trained on)."""
        from hpsearch.data import Plan, load_dataset
        from hpsearch.runtime import trial_memory_bytes

        if self.dataset.dims is None:
            return load_dataset(self.dataset, fold=fold)
        budget = trial_memory_bytes(self.runtime, self.resources.cpus_per_trial, self.resources.gpus_per_trial)
        return load_dataset(self.dataset, budget, base_filters=getattr(self.trial_params(), "base_filters", 32),
                            plan=Plan.from_dict(plan) if plan else None, fold=fold)

    def load_search_data(self, plan: dict[str, Any] | None = None) -> tuple[list, bool]:
        """The data a search trains on: one prepared dataset per fold it cross-validates
        over (just fold 0 for a single split or ``search.cross_validation: off``), all on
        one plan, and whether the first came from the cache."""
        first, hit = self.load_data(plan)
        folds = len(first.info["splits"]["folds"]) if self.search.cross_validation != "off" else 1
        plan = first.info.get("plan")
        return [first, *(self.load_data(plan, fold=f)[0] for f in range(1, folds))], hit


# `--set KEY=VALUE` with a bare KEY: a top-level job key if it is one, else a hyperparameter.
TOP_LEVEL_KEYS = frozenset(Job.model_fields)


def load_job(path: str | Path, overrides: Iterable[str] = ()) -> Job:
    """Read and validate a job file, applying ``key=value`` overrides first.

    An override key without a dot names a hyperparameter (``learning_rate=3e-4``
    sets ``params.learning_rate``); a dotted key names any field
    (``dataset.image_size=[64,64]``). Values are parsed as YAML.

    Raises:
        HpsearchError: Unreadable file, bad YAML, unknown keys or bad values.
    """
    path = Path(path)
    raw = read_yaml(path)
    for override in overrides:
        _apply_override(raw, override, path)
    try:
        job = Job.model_validate(raw)
    except ValidationError as exc:
        raise HpsearchError(format_validation_error(path, exc)) from None
    try:
        job.trial_params()
    except HpsearchError as exc:
        raise HpsearchError(f"{path}: {exc}") from None
    except ValidationError as exc:
        raise HpsearchError(format_validation_error(path, exc, prefix="params")) from None
    if job.scheduler.fidelity is not None and job.dataset.dims is not None:
        raise HpsearchError(f"{path}: scheduler.fidelity: slice mode only (dataset.dims unset); a patch-mode "
                            "epoch is a fixed number of patches of the planned size. Remove scheduler.fidelity")
    return job


def _apply_override(raw: dict[str, Any], override: str, path: Path) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise HpsearchError(f"--set {override!r}: expected KEY=VALUE, e.g. --set learning_rate=3e-4")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise HpsearchError(f"--set {override!r}: the value is not valid YAML") from None
    parts = key.strip().split(".")
    if len(parts) == 1 and parts[0] not in TOP_LEVEL_KEYS:  # a bare name is a hyperparameter
        parts = ["params", *parts]
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if part == "storage" and isinstance(child, str):  # the `storage: results` shorthand
            child = node[part] = {"path": child}
        if not isinstance(child, dict):
            raise HpsearchError(f"--set {override!r}: {part} in {path} is not a mapping")
        node = child
    node[parts[-1]] = _number_or_text(value, text)


def _number_or_text(value: Any, text: str) -> Any:
    # YAML 1.1 reads "3e-4" (no dot) as a string; users mean the number.
    if isinstance(value, str):
        try:
            return float(text) if any(c in text.lower() for c in ".e") else int(text)
        except ValueError:
            return value
    return value
