"""How a network fits its data: family, input shape, poolings from the plan (table-driven)."""

from __future__ import annotations

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.network import DoesNotPool, build_network, family, input_shape, network_options, pool_sizes_for

SLICES = {"channel_names": ["MRI"], "label_values": [0, 1], "preprocess": {"image_size": [48, 40]}}


def patches(dims, patch, poolings, channels=1):
    return {"channel_names": ["c"] * channels, "label_values": [0, 1, 2, 4],
            "plan": {"dims": dims, "patch_size": patch, "poolings": poolings}}


@pytest.mark.parametrize("model, dims, expected", [
    ("unet", None, "unet"), ("fcn", None, "fcn"), ("unet", 2, "unet"), ("fcn", 2, "fcn"), ("unet", 3, "unet3d"),
])
def test_family(model, dims, expected):
    assert family(model, dims) == expected


def test_an_fcn_has_no_3d_variant():
    with pytest.raises(HpsearchError, match="model: fcn has no 3D variant"):
        family("fcn", 3)


@pytest.mark.parametrize("info, expected", [
    (SLICES, (48, 40, 1)),
    (patches(2, [64, 80], [4, 4]), (64, 80, 1)),
    (patches(3, [16, 64, 64], [2, 4, 4], channels=4), (16, 64, 64, 4)),
])
def test_input_shape(info, expected):
    assert input_shape(info) == expected


@pytest.mark.parametrize("poolings, depth, expected", [
    ([3, 3, 3], 3, [(2, 2, 2)] * 3),
    ([1, 3, 3], 3, [(1, 2, 2), (1, 2, 2), (2, 2, 2)]),  # the coarse axis is halved last
    ([0, 4, 4], 2, [(1, 2, 2), (1, 2, 2)]),
    ([2, 4, 4], 4, [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]),
])
def test_pool_sizes_for(poolings, depth, expected):
    sizes = pool_sizes_for(poolings, depth)
    assert sizes == expected
    # never more halvings per axis than the patch allows
    for axis, allowed in enumerate(poolings):
        assert sum(level[axis] == 2 for level in sizes) == min(allowed, depth)


def test_a_depth_the_patch_cannot_take_is_an_invalid_configuration():
    with pytest.raises(DoesNotPool, match="depth 5 needs a patch that can be halved 5 times") as caught:
        pool_sizes_for([2, 4, 4], 5)
    assert caught.value.failure_kind == "invalid_config"
    with pytest.raises(DoesNotPool, match="choose a dataset.patch_size divisible by 32"):
        network_options("unet", {"depth": 5}, patches(2, [48, 64], [4, 4]))


def test_slice_mode_options_pass_through():
    assert network_options("unet", {"depth": 4}, SLICES) == {"depth": 4}


@pytest.mark.parametrize("info, model", [
    (patches(2, [32, 48], [3, 4]), "unet"),
    (patches(3, [8, 32, 32], [1, 3, 3], channels=4), "unet"),
])
def test_build_network_takes_the_patch(info, model):
    net = build_network(family(model, info["plan"]["dims"]), {"depth": 3, "base_filters": 4}, info)
    assert tuple(net.input.shape[1:]) == input_shape(info)
    assert net.output.shape[-1] == 4
