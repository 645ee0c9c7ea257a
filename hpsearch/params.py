"""Hyperparameters of one trial: training settings plus the model family's options.

A job's ``params:`` (and every configuration a search proposes) is one flat mapping,
as users write it: ``learning_rate``, ``epochs``, ``depth``, ``base_filters`` ...
:func:`validate_params` checks it against :class:`TrainParams` combined with the
chosen model's options (e.g. :class:`~hpsearch.models.UNetOptions`), so a parameter
the model does not take is refused with its name.

Example:
    >>> params = validate_params("unet", {"learning_rate": 3e-4, "depth": 3})
    >>> params.learning_rate, params.depth, params.loss
    (0.0003, 3, 'ce_dice')
    >>> model_options(params)["depth"]
    3
"""

from __future__ import annotations

import functools
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, create_model

from hpsearch.models.options import options_for


class TrainParams(BaseModel):
    """Optimisation settings, as in the seeds' lab plus the usual knobs.

    Attributes:
        learning_rate: Initial learning rate.
        decay_rate: Factor applied every ``decay_steps`` optimizer steps
            (1.0: no decay; 0.5 halves the rate each ``decay_steps``).
        decay_steps: Optimizer steps (batches) between decays.
        epochs: Passes over the training slices.
        batch_size: Slices per optimizer step.
        optimizer: ``adam``, ``adamw``, ``sgd`` (Nesterov momentum) or ``rmsprop``.
        momentum: For ``sgd`` and ``rmsprop``.
        weight_decay: Decoupled weight decay (0 disables it).
        loss: ``ce``, ``dice`` or ``ce_dice``.
    """

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    decay_rate: float = Field(0.9, gt=0.0, le=1.0)
    decay_steps: int = Field(500, ge=1)
    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(8, ge=1, le=4096)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0)
    loss: Literal["ce", "dice", "ce_dice"] = "ce_dice"


@functools.cache
def params_model(model: str) -> type[BaseModel]:
    """The pydantic model of all hyperparameters of a model family."""
    options = options_for(model)
    clash = set(TrainParams.model_fields) & set(options.model_fields)
    if clash:  # a programming error in a model family, not a user error
        raise TypeError(f"model options {sorted(clash)} shadow training parameters")
    return create_model(f"{options.__name__.removesuffix('Options')}Params", __base__=(TrainParams, options))


def validate_params(model: str, params: Mapping[str, Any] | BaseModel) -> Any:
    """Check a flat mapping of hyperparameters for ``model``; fill in defaults.

    Raises:
        pydantic.ValidationError: Unknown names or values out of range.
        ValueError: Unknown model family.
    """
    if isinstance(params, BaseModel):
        params = params.model_dump()
    return params_model(model).model_validate(dict(params))


def model_options(params: BaseModel) -> dict[str, Any]:
    """The subset of validated params that the model builder takes."""
    return params.model_dump(exclude=set(TrainParams.model_fields))


def train_options(params: BaseModel) -> TrainParams:
    return TrainParams(**params.model_dump(include=set(TrainParams.model_fields)))
