"""The options of each model family, as job files and search spaces name them.

Pydantic only, no Keras: the driver of a search validates every job and search space
against these without importing TensorFlow (3 s and 0.7 GB it never uses). Field names
and defaults match the keyword arguments of the builders (a test checks that).

Example:
    >>> options_for("unet")(depth=3).base_filters
    16
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field, ValidationInfo, field_validator


class UNetOptions(pydantic.BaseModel):
    """U-Net options of a job file; field names and defaults match :func:`build_unet`."""

    model_config = pydantic.ConfigDict(extra="forbid")

    depth: int = Field(4, ge=1, le=6)
    base_filters: int = Field(16, ge=1, le=256)
    padding: Literal["same", "valid"] = "same"
    norm: Literal["none", "batch", "instance"] = "none"
    activation: Literal["relu", "leaky_relu"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class FCNOptions(pydantic.BaseModel):
    """FCN options of a job file; field names and defaults match :func:`build_fcn`."""

    model_config = pydantic.ConfigDict(extra="forbid")

    depth: int = Field(2, ge=1, le=3)
    base_filters: int = Field(100, ge=1, le=512)
    norm: Literal["none", "batch", "instance"] = "none"
    activation: Literal["relu", "leaky_relu"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


# nnU-Net pools an axis by 2 or leaves it (1, an anisotropic axis waiting for the others).
PoolFactor = Literal[1, 2]


class UNet3DOptions(pydantic.BaseModel):
    """3-D U-Net options; field names and defaults match :func:`build_unet3d`."""

    model_config = pydantic.ConfigDict(extra="forbid")

    depth: int = Field(4, ge=1, le=6)
    base_filters: int = Field(32, ge=1, le=256)
    padding: Literal["same", "valid"] = "same"
    norm: Literal["none", "batch", "instance"] = "none"
    activation: Literal["relu", "leaky_relu"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    downsample: Literal["pool", "strided"] = "pool"
    pool_sizes: list[tuple[PoolFactor, PoolFactor, PoolFactor]] | None = None
    max_filters: int = Field(320, ge=1, le=1024)

    @field_validator("pool_sizes")
    @classmethod
    def _one_per_level(cls, value, info: ValidationInfo):
        depth = info.data.get("depth")  # absent if depth itself was invalid
        if value is not None and depth is not None and len(value) != depth:
            raise ValueError(f"needs one [d, h, w] per down-sampling, as many as depth ({depth})")
        return value


MODEL_OPTIONS: dict[str, type[pydantic.BaseModel]] = {
    "unet": UNetOptions, "fcn": FCNOptions, "unet3d": UNet3DOptions,
}


def options_for(name: str) -> type[pydantic.BaseModel]:
    """The options model of the family called ``name``.

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    try:
        return MODEL_OPTIONS[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(n) for n in sorted(MODEL_OPTIONS))
        raise ValueError(f"unknown model {name!r}; expected one of: {known}") from None
