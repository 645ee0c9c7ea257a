"""How a network fits its data: the model family, input shape and poolings a dataset asks for.

A job names a model (``unet``, ``fcn``); what is built also depends on how the data is
prepared. In slice mode the input is one resized slice; in patch mode it is the plan's
patch, 2D or 3D, and a 3D job gets the 3D U-Net (``unet3d``) with the plan's per-axis
poolings (anisotropic data pools its coarse axis later, as nnU-Net does). The trainer, the
export and the job checks all ask this module, from the data's ``info`` alone, so the same
checkpoint always rebuilds the same network.

Example:
    >>> info = {"channel_names": ["T1"], "plan": {"dims": 3, "patch_size": [16, 32, 32], "poolings": [2, 3, 3]}}
    >>> family("unet", dims_of(info)), input_shape(info)
    ('unet3d', (16, 32, 32, 1))
    >>> pool_sizes_for([2, 3, 3], depth=3)
    [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hpsearch.errors import HpsearchError


class DoesNotPool(HpsearchError):
    """A U-Net deeper than its patch can be halved; another depth or patch is needed."""

    failure_kind = "invalid_config"  # the same configuration fails again (see hpsearch.failures)


def dims_of(info: Mapping[str, Any]) -> int | None:
    """2 or 3 for data prepared as patches, ``None`` for slice mode."""
    plan = info.get("plan")
    return int(plan["dims"]) if plan else None


def family(model: str, dims: int | None) -> str:
    """The model family to build: a job's ``unet`` on 3D patches is the 3D U-Net.

    Raises:
        HpsearchError: A family that has no 3D variant on 3D patches.
    """
    if dims == 3:
        if model in ("unet", "unet3d"):
            return "unet3d"
        raise HpsearchError(f"model: {model} has no 3D variant; use model: unet with dataset.dims: 3, or dims: 2")
    return model


def input_shape(info: Mapping[str, Any]) -> tuple[int, ...]:
    """``(*spatial, channels)`` the network takes: the slice size, or the plan's patch."""
    channels = len(info["channel_names"])
    plan = info.get("plan")
    spatial = plan["patch_size"] if plan else info["preprocess"]["image_size"]
    return (*(int(s) for s in spatial), channels)


def pool_sizes_for(poolings: Sequence[int], depth: int) -> list[tuple[int, ...]]:
    """Per level, the factor (1 or 2) along each axis for a ``depth``-level U-Net.

    An axis that can be halved ``n`` times is halved at the *last* ``n`` levels: the fine
    axes of anisotropic data are pooled first, until their spacing reaches the coarse
    axis's (nnU-Net's topology).

    Raises:
        DoesNotPool: ``depth`` exceeds what every axis allows.
    """
    if depth > max(poolings):
        raise DoesNotPool(
            f"depth {depth} needs a patch that can be halved {depth} times; this patch allows "
            f"{max(poolings)} (poolings {list(poolings)}): lower depth or enlarge dataset.patch_size"
        )
    return [tuple(2 if level >= depth - n else 1 for n in poolings) for level in range(depth)]


def network_options(name: str, options: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The builder options of family ``name`` for this data: the job's, plus the plan's poolings.

    Raises:
        DoesNotPool: The depth does not fit the patch.
    """
    out = dict(options)
    plan = info.get("plan")
    if not plan:
        return out
    poolings, depth = [int(n) for n in plan["poolings"]], int(out.get("depth", 1))
    if name == "unet3d":
        if out.get("pool_sizes") is None:
            out["pool_sizes"] = pool_sizes_for(poolings, depth)
    elif name == "unet" and depth > min(poolings):  # the 2D U-Net halves both axes at every level
        raise DoesNotPool(
            f"depth {depth} halves the {list(plan['patch_size'])} patch {depth} times, but it allows "
            f"{min(poolings)}: lower depth or choose a dataset.patch_size divisible by {2 ** depth}"
        )
    return out


def size_multiple(name: str, options: Mapping[str, Any]) -> int | None:
    """What a 2D network of family ``name`` halves a slice's size to: a slice whose size divides
    by it passes without padding, so the same weights take any such size (what
    ``scheduler.fidelity.resolution`` trains at). ``None``: the network takes only the size it
    was built for (unpadded convolutions crop by amounts fixed at that size)."""
    depth = int(options.get("depth", 1))
    if name == "fcn":
        return 4**depth  # a stride-2 conv and a 2x2 pool per stage
    if name == "unet" and options.get("padding", "same") == "same":
        return 2**depth
    return None


def build_network(model: str, options: Mapping[str, Any], info: Mapping[str, Any]):
    """The Keras model of family ``model`` for data described by ``info``."""
    from hpsearch.models import build_model

    name = family(model, dims_of(info))
    return build_model(name, input_shape(info), len(info["label_values"]), **network_options(name, options, info))
