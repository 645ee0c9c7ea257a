"""Search spaces: YAML files of hyperparameter distributions, checked before Ray starts.

A search space maps hyperparameter names to distributions::

    learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
    decay_rate:    {type: uniform, low: 0.5, high: 1.0}
    decay_steps:   {type: choice, values: [100, 500, 1000]}
    epochs:        {type: int, low: 5, high: 20}

Types: ``uniform`` and ``loguniform`` (floats), ``int`` (optionally ``log: true``),
``choice`` (any values). Every name must be a hyperparameter of the job's model
family, or ``augment.<key>`` for a key of the job's ``augment:`` section (so a search
finds how much augmentation a dataset wants), and every bound or choice a value that
family or section accepts, so a typo or a depth of 9 fails here, naming the file and
key, not in trial 7 an hour later.

Example:
    >>> space = parse_space({"depth": {"type": "int", "low": 2, "high": 4}}, "unet", "s.yaml")
    >>> to_optuna(space)["depth"]
    IntDistribution(high=4, log=False, low=2, step=1)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import optuna.distributions as od
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from hpsearch.data.augment import AugmentConfig
from hpsearch.errors import HpsearchError
from hpsearch.files import format_validation_error, read_yaml
from hpsearch.params import params_model


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Uniform(_Dist):
    """Floats uniformly between ``low`` and ``high``."""

    type: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        return _check_order(self)


class LogUniform(_Dist):
    """Floats log-uniformly between ``low`` and ``high`` (both > 0): learning rates."""

    type: Literal["loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _positive_ordered(self):
        if self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got low={self.low}")
        return _check_order(self)


class IntRange(_Dist):
    """Integers from ``low`` to ``high`` inclusive, optionally on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got low={self.low}")
        return _check_order(self)


class Choice(_Dist):
    """One of ``values``."""

    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self):
        if len({repr(v) for v in self.values}) != len(self.values):
            raise ValueError(f"values must be distinct, got {self.values}")
        return self


Distribution = Annotated[Union[Uniform, LogUniform, IntRange, Choice], Field(discriminator="type")]
_SPACE = TypeAdapter(dict[str, Distribution])
AUGMENT = "augment."  # search-space names of the job's augment: keys


def _check_order(dist):
    if not (math.isfinite(dist.low) and math.isfinite(dist.high)):
        raise ValueError("low and high must be finite")
    if dist.low >= dist.high:
        raise ValueError(f"low must be below high, got low={dist.low} high={dist.high}")
    return dist


def load_space(path: str | Path, model: str) -> dict[str, Uniform | LogUniform | IntRange | Choice]:
    """Read and check a search-space YAML file for a model family.

    Raises:
        HpsearchError: One line per problem: file, key, reason.
    """
    return parse_space(read_yaml(Path(path)), model, path)


def parse_space(raw: dict[str, Any], model: str, source: str | Path) -> dict[str, Any]:
    """Check a search-space mapping (see :func:`load_space`)."""
    if not raw:
        raise HpsearchError(f"{source}: the search space is empty; name at least one hyperparameter")
    try:
        space = _SPACE.validate_python(raw)
    except ValidationError as exc:
        raise HpsearchError(format_validation_error(Path(source), exc)) from None
    params = params_model(model)
    problems = []
    for name, dist in space.items():
        accepted, key = (AugmentConfig, name[len(AUGMENT):]) if name.startswith(AUGMENT) else (params, name)
        if key not in accepted.model_fields:
            takes = sorted(params.model_fields) + [f"{AUGMENT}<{', '.join(sorted(AugmentConfig.model_fields))}>"]
            problems.append(f"{source}: {name}: not a hyperparameter of model '{model}' (it takes: "
                            f"{', '.join(takes)})")
            continue
        for value in _extremes(dist):
            try:
                accepted.model_validate({key: value})
            except ValidationError as exc:
                error = exc.errors()[0]
                if error["type"] == "int_from_float":  # a float range for an integer parameter
                    problems.append(f"{source}: {name}: takes whole numbers; write {{type: int, low: "
                                    f"{math.ceil(dist.low)}, high: {math.floor(dist.high)}}}")
                else:
                    problems.append(f"{source}: {name}: value {value!r} is out of range for '{model}': "
                                    f"{error['msg']}")
                break
    if problems:
        raise HpsearchError("\n".join(problems))
    return space


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's configuration as (hyperparameters, ``augment:`` overrides).

    Example:
        >>> split_config({"depth": 3, "augment.elastic_p": 0.1})
        ({'depth': 3}, {'elastic_p': 0.1})
    """
    params = {k: v for k, v in config.items() if not k.startswith(AUGMENT)}
    augment = {k[len(AUGMENT):]: v for k, v in config.items() if k.startswith(AUGMENT)}
    return params, augment


def _extremes(dist) -> list[Any]:
    """Values the model must accept: every choice, or a range's ends and, for a continuous
    range, a value between them (a float range for an integer parameter fails there)."""
    if isinstance(dist, Choice):
        return list(dist.values)
    if isinstance(dist, IntRange):
        return [dist.low, dist.high]
    return [dist.low, dist.high, dist.low + (dist.high - dist.low) / math.pi]


def to_optuna(space: dict[str, Any]) -> dict[str, od.BaseDistribution]:
    """Optuna distributions for Ray's ``OptunaSearch(space=...)``."""
    out: dict[str, od.BaseDistribution] = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            out[name] = od.CategoricalDistribution(dist.values)
        elif isinstance(dist, IntRange):
            out[name] = od.IntDistribution(dist.low, dist.high, log=dist.log)
        else:
            out[name] = od.FloatDistribution(dist.low, dist.high, log=isinstance(dist, LogUniform))
    return out
