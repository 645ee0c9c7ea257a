"""Tests for hpsearch.models.fcn: the DLI lab's shapes, any input size, save/load."""

import keras
import numpy as np
import pytest
from helpers import assert_safe_mode_round_trip, predict

from hpsearch.models.fcn import build_fcn


def test_lab_network_layer_shapes():
    model = build_fcn((256, 256, 1), 2, depth=2, base_filters=100)
    compute_layers = (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.Conv2DTranspose)
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers
              if isinstance(layer, compute_layers)]
    assert shapes == [
        (128, 128, 100), (64, 64, 100), (32, 32, 200), (16, 16, 200),
        (16, 16, 300), (16, 16, 300), (16, 16, 2), (256, 256, 2),
    ]
    upscore = model.get_layer("upscore")
    assert upscore.kernel_size == (31, 31) and upscore.strides == (16, 16)
    assert model.get_layer("conv1_conv").kernel_size == (5, 5)
    assert model.get_layer("conv1_conv").strides == (2, 2)
    # 256 is a multiple of 16: no padding or cropping layers.
    assert not any(isinstance(layer, (keras.layers.ZeroPadding2D, keras.layers.Cropping2D))
                   for layer in model.layers)
    assert model.output.dtype == "float32"


@pytest.mark.parametrize(
    ("height", "width", "depth", "norm"),
    [
        (32, 32, 1, "none"),
        (37, 41, 2, "batch"),
        (64, 48, 3, "instance"),
        (37, 41, 3, "none"),
        (197, 233, 1, "none"),
        (197, 233, 2, "batch"),
    ],
)
def test_output_is_float32_logits_at_input_size(height, width, depth, norm):
    model = build_fcn((height, width, 2), 3, depth=depth, base_filters=2, norm=norm)
    out = predict(model, np.random.default_rng(0).normal(size=(1, height, width, 2)))
    assert out.shape == (1, height, width, 3)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize(("depth", "kernel", "stride"), [(1, 7, 4), (2, 31, 16), (3, 127, 64)])
def test_upsampling_kernel_and_stride(depth, kernel, stride):
    model = build_fcn((20, 20, 1), 2, depth=depth, base_filters=2)
    upscore = model.get_layer("upscore")
    assert upscore.kernel_size == (kernel, kernel) and upscore.strides == (stride, stride)
    # Filters: base * (level + 1) per stage, base * (depth + 1) for the 3x3 convs.
    assert [model.get_layer(f"conv{i + 1}_conv").filters for i in range(depth + 2)] == [
        *(2 * (level + 1) for level in range(depth)), 2 * (depth + 1), 2 * (depth + 1)
    ]


def test_dropout_and_leaky_relu():
    model = build_fcn((16, 16, 1), 2, depth=1, base_filters=2, dropout=0.5,
                      activation="leaky_relu")
    assert isinstance(model.get_layer("dropout"), keras.layers.Dropout)
    assert isinstance(model.get_layer("conv1_act"), keras.layers.LeakyReLU)
    plain = build_fcn((16, 16, 1), 2, depth=1, base_filters=2)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)


def test_mixed_precision_logits_stay_float32():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build_fcn((37, 41, 1), 2, depth=2, base_filters=2)  # padded, then cropped
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_safe_mode_save_load_round_trip(tmp_path, norm):
    model = build_fcn((37, 41, 1), 2, depth=2, base_filters=2, norm=norm, dropout=0.2)
    assert_safe_mode_round_trip(model, tmp_path / "fcn.keras", seed=1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"norm": "group"}, "unknown norm 'group'; expected one of: 'none', 'batch', 'instance'"),
    ({"activation": "elu"}, "unknown activation 'elu'; expected one of: 'relu', 'leaky_relu'"),
    ({"depth": 0}, "depth must be an integer >= 1"),
    ({"dropout": -0.1}, r"dropout must be a rate in \[0, 1\)"),
])
def test_bad_options_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_fcn((16, 16, 1), 2, **kwargs)
