"""Tests for the hpsearch.models registry and the options models."""

import inspect

import pydantic
import pytest

import hpsearch.models as models
from hpsearch.models import (
    MODELS,
    FCNOptions,
    UNet3DOptions,
    UNetOptions,
    build_fcn,
    build_model,
    build_unet,
    build_unet3d,
    get_family,
)


def test_registry_contents():
    assert set(MODELS) == {"unet", "fcn", "unet3d"}
    assert get_family("unet3d").build is build_unet3d
    assert get_family("unet3d").options is UNet3DOptions
    assert get_family("unet").build is build_unet and get_family("unet").options is UNetOptions
    assert get_family("fcn").build is build_fcn and get_family("fcn").options is FCNOptions
    assert all(family.name == name for name, family in MODELS.items())
    for name in ("build_unet", "build_fcn", "build_unet3d", "UNetOptions", "FCNOptions",
                 "UNet3DOptions", "MODELS",
                 "get_family", "build_model"):
        assert name in models.__all__


@pytest.mark.parametrize("name", ["resnet", "UNet", "", None])
def test_unknown_family_lists_known_names(name):
    with pytest.raises(ValueError, match=r"unknown model .*expected one of: 'fcn', 'unet'"):
        get_family(name)
    with pytest.raises(ValueError, match="unknown model"):
        build_model(name, (16, 16, 1), 2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_options_model_matches_builder_signature(name):
    family = MODELS[name]
    params = list(inspect.signature(family.build).parameters.values())
    assert [p.name for p in params[:2]] == ["input_shape", "num_classes"]
    options = params[2:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options)
    assert {p.name: p.default for p in options} == {
        field: info.default for field, info in family.options.model_fields.items()
    }
    # Same order too, so the job-file docs and the builder read alike.
    assert [p.name for p in options] == list(family.options.model_fields)


@pytest.mark.parametrize(("name", "options"), [
    ("unet", {"depth": 2, "base_filters": 2, "padding": "valid", "norm": "instance"}),
    ("fcn", {"depth": 1, "base_filters": 2, "activation": "leaky_relu", "dropout": 0.1}),
])
def test_build_model_builds_validated_options(name, options):
    model = build_model(name, [37, 41, 1], 2, **options)  # a list, as from YAML
    assert tuple(model.output.shape) == (None, 37, 41, 2)
    assert model.name == name


@pytest.mark.parametrize(("name", "options"), [
    ("unet", {"depth": 0}),
    ("unet", {"depth": 7}),
    ("unet", {"padding": "reflect"}),
    ("unet", {"dropout": 1.0}),
    ("unet", {"base_filters": 257}),
    ("unet", {"filters": 16}),  # unknown option: extra="forbid"
    ("fcn", {"depth": 0}),
    ("fcn", {"depth": 4}),
    ("fcn", {"norm": "layer"}),
    ("fcn", {"padding": "same"}),  # a U-Net option, not an FCN one
])
def test_build_model_rejects_bad_options(name, options):
    with pytest.raises(pydantic.ValidationError):
        build_model(name, (16, 16, 1), 2, **options)


def test_options_defaults_are_the_papers():
    assert UNetOptions().model_dump() == {
        "depth": 4, "base_filters": 16, "padding": "same", "norm": "none",
        "activation": "relu", "dropout": 0.0,
    }
    assert FCNOptions().model_dump() == {
        "depth": 2, "base_filters": 100, "norm": "none", "activation": "relu", "dropout": 0.0,
    }
