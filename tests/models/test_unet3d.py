"""Tests for hpsearch.models.unet3d: shapes in both down-sampling modes and paddings,
anisotropic pooling, the filter cap, safe-mode save/load, option validation, training."""

import keras
import numpy as np
import pydantic
import pytest
from helpers import assert_safe_mode_round_trip, predict

from hpsearch.files import format_validation_error
from hpsearch.models import build_model
from hpsearch.models.unet3d import build_unet3d
from hpsearch.params import validate_params

ANISO = [[1, 2, 2], [2, 2, 2]]  # thick slices: the first down-sampling leaves depth alone


@pytest.mark.parametrize(("shape", "downsample", "padding", "pool_sizes", "norm"), [
    ((16, 16, 16), "pool", "same", None, "none"),
    ((16, 16, 16), "strided", "same", None, "instance"),
    ((13, 17, 19), "pool", "same", ANISO, "batch"),
    ((13, 17, 19), "strided", "same", ANISO, "none"),
    ((13, 17, 19), "pool", "valid", None, "instance"),
    ((13, 17, 19), "strided", "valid", None, "none"),
    ((13, 17, 19), "pool", "valid", ANISO, "none"),
    ((13, 17, 19), "strided", "valid", ANISO, "batch"),
])
def test_output_is_float32_logits_at_input_size(shape, downsample, padding, pool_sizes, norm):
    model = build_unet3d((*shape, 2), 3, depth=2, base_filters=2, padding=padding, norm=norm,
                         downsample=downsample, pool_sizes=pool_sizes)
    out = predict(model, np.random.default_rng(0).normal(size=(1, *shape, 2)))
    assert out.shape == (1, *shape, 3)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize("downsample", ["pool", "strided"])
def test_anisotropic_pool_sizes_down_and_up_sample_per_axis(downsample):
    model = build_unet3d((16, 16, 16, 1), 2, depth=2, base_filters=2, downsample=downsample,
                         pool_sizes=ANISO)
    # Depth is halved once, height and width twice.
    assert tuple(model.get_layer("bottleneck_2_conv").output.shape[1:4]) == (8, 4, 4)
    assert model.get_layer("dec0_up").strides == (1, 2, 2)
    assert model.get_layer("dec1_up").strides == (2, 2, 2)
    if downsample == "pool":
        assert model.get_layer("enc0_pool").pool_size == (1, 2, 2)
        assert model.get_layer("enc1_1_conv").strides == (1, 1, 1)
    else:  # nnU-Net's: the first conv of the next level strides, no pooling layer
        assert model.get_layer("enc1_1_conv").strides == (1, 2, 2)
        assert model.get_layer("bottleneck_1_conv").strides == (2, 2, 2)
        assert not any(isinstance(layer, keras.layers.MaxPooling3D) for layer in model.layers)


@pytest.mark.parametrize(("max_filters", "expected"), [
    (8, [4, 8, 8, 8]),     # capped from level 1 on
    (320, [4, 8, 16, 32]),  # nnU-Net's cap, not reached
])
def test_filters_double_per_level_up_to_the_cap(max_filters, expected):
    model = build_unet3d((16, 16, 16, 1), 2, depth=3, base_filters=4, max_filters=max_filters)
    names = ["enc0_2_conv", "enc1_2_conv", "enc2_2_conv", "bottleneck_2_conv"]
    assert [model.get_layer(name).filters for name in names] == expected
    assert model.get_layer("bottleneck_2_conv").kernel.shape[-1] == expected[-1]


@pytest.mark.parametrize(("downsample", "padding", "norm"), [
    ("pool", "valid", "batch"), ("strided", "same", "instance"),
])
def test_safe_mode_save_load_round_trip(tmp_path, downsample, padding, norm):
    # Numpy scalars, as a search space may sample them, must still serialise.
    model = build_unet3d((13, 17, 19, 1), 2, depth=np.int64(2), base_filters=np.int64(2),
                         padding=padding, norm=norm, activation="leaky_relu",
                         dropout=np.float32(0.1), downsample=downsample,
                         pool_sizes=np.array(ANISO), max_filters=np.int64(4))
    assert_safe_mode_round_trip(model, tmp_path / "unet3d.keras", seed=5)


@pytest.mark.parametrize(("options", "line"), [
    ({"downsample": "avg"}, "job.yaml: params.downsample: Input should be 'pool' or 'strided' (got 'avg')"),
    ({"max_filters": 0}, "job.yaml: params.max_filters: Input should be greater than or equal to 1 (got 0)"),
    ({"depth": 2, "pool_sizes": [[1, 2, 2]]},
     "job.yaml: params.pool_sizes: Value error, needs one [d, h, w] per down-sampling, as many "
     "as depth (2) (got [[1, 2, 2]])"),
    ({"depth": 1, "pool_sizes": [[3, 2, 2]]}, "job.yaml: params.pool_sizes.0.0: Input should be 1 or 2 (got 3)"),
    ({"pool": "max"}, "job.yaml: params.pool: unknown key; check the spelling or remove it"),
])
def test_bad_option_is_one_line_naming_the_key(options, line):
    with pytest.raises(pydantic.ValidationError) as error:
        validate_params("unet3d", options)
    assert format_validation_error("job.yaml", error.value, prefix="params") == line
    with pytest.raises(pydantic.ValidationError):
        build_model("unet3d", (16, 16, 16, 1), 2, **options)


@pytest.mark.parametrize(("input_shape", "kwargs", "message"), [
    ((16, 16, 1), {}, r"input_shape must be four positive integers \(depth, height, width, channels\)"),
    ((16, 16, 16, 1), {"downsample": "avg"}, "unknown downsample 'avg'"),
    ((16, 16, 16, 1), {"depth": 2, "pool_sizes": [[2, 2], [2, 2]]}, "pool_sizes must be 2 .depth. lists of 3"),
    ((16, 16, 16, 1), {"max_filters": 0}, "max_filters must be an integer >= 1"),
])
def test_builder_refuses_bad_arguments(input_shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_unet3d(input_shape, 2, **kwargs)


def test_tiny_training_run_reduces_loss():
    keras.utils.set_random_seed(0)
    volumes = np.random.default_rng(6).normal(size=(4, 16, 16, 16, 1)).astype("float32")
    labels = (volumes[..., 0] > 0).astype("int32")  # learnable voxel by voxel
    model = build_model("unet3d", (16, 16, 16, 1), 2, depth=1, base_filters=4, norm="batch",
                        downsample="strided")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(volumes, labels, batch_size=2, epochs=6, verbose=0).history["loss"]
    # 0.67-0.71 of the first epoch over seeds 0-2; 0.8 leaves room for other seeds.
    assert losses[-1] < 0.8 * losses[0], losses
