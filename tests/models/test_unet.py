"""Tests for hpsearch.models.unet: shapes, valid-padding alignment, save/load, training."""

import keras
import numpy as np
import pytest
from helpers import assert_safe_mode_round_trip, predict

from hpsearch.models.unet import (
    build_unet,
    valid_input_size,
    valid_output_size,
    valid_padding,
)


@pytest.mark.parametrize(
    ("height", "width", "depth", "padding", "norm"),
    [
        (32, 32, 1, "same", "none"),
        (37, 41, 2, "same", "batch"),
        (64, 48, 3, "same", "instance"),
        (37, 41, 6, "same", "none"),
        (197, 233, 1, "same", "none"),
        (32, 32, 1, "valid", "none"),
        (37, 41, 2, "valid", "batch"),
        (64, 48, 3, "valid", "instance"),
        (37, 41, 6, "valid", "none"),
        (197, 233, 1, "valid", "none"),
    ],
)
def test_output_is_float32_logits_at_input_size(height, width, depth, padding, norm):
    model = build_unet((height, width, 2), 3, depth=depth, base_filters=2, padding=padding,
                       norm=norm)
    out = predict(model, np.random.default_rng(0).normal(size=(1, height, width, 2)))
    assert out.shape == (1, height, width, 3)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_paper_tile_sizes():
    # Ronneberger et al., Fig. 1: a 572x572 tile gives a 388x388 map at depth 4.
    assert valid_output_size(572, 4) == 388
    assert valid_input_size(388, 4) == 572
    # 573 leaves an odd map before a pooling; 139 is too small for depth 4.
    assert valid_output_size(573, 4) is None
    assert valid_output_size(139, 4) is None


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
@pytest.mark.parametrize("size", [1, 2, 37, 41, 197, 388])
def test_valid_padding_is_minimal_and_consistent(size, depth):
    padded = valid_input_size(size, depth)
    assert valid_output_size(padded, depth) >= size
    assert all(
        (out := valid_output_size(smaller, depth)) is None or out < size
        for smaller in range(1, padded)
    )
    (pad_before, pad_after), (crop_before, crop_after) = valid_padding(size, depth)
    assert size + pad_before + pad_after == padded
    assert valid_output_size(padded, depth) - crop_before - crop_after == size
    assert min(pad_before, pad_after, crop_before, crop_after) >= 0


def _make_monotone(model):
    """Sets kernels to positive constants and biases to zero.

    Then an all-zero image gives exactly zero everywhere, and a positive input
    pixel makes exactly the output pixels in its receptive field positive
    (ReLU and max pooling pass positive values; nothing cancels). Constants of
    1 / (kernel width * input channels) keep the values within float32 range.
    """
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kernel, *rest = weights
        if isinstance(layer, keras.layers.Conv2DTranspose):  # (kh, kw, out, in)
            fan = kernel.shape[3]
        else:  # Conv2D: (kh, kw, in, out)
            fan = kernel.shape[1] * kernel.shape[2]
        layer.set_weights([np.full_like(kernel, 1.0 / fan), *map(np.zeros_like, rest)])


def _keep_only_path(model, depth, level, base_filters):
    """Zeroes weights so the logits depend only on the path through ``level``.

    The path through ``level`` goes down to that level, across its skip and
    back up. Zeroing the skip half of a decoder conv's kernel cuts the skip
    (Concatenate puts the skip first); zeroing the up-sampling into ``level``
    cuts everything deeper.
    """
    for shallower in range(level):
        conv = model.get_layer(f"dec{shallower}_1_conv")
        kernel, *rest = conv.get_weights()
        kernel[:, :, : base_filters * 2**shallower, :] = 0.0
        conv.set_weights([kernel, *rest])
    if level < depth:
        up = model.get_layer(f"dec{level}_up")
        up.set_weights([np.zeros_like(w) for w in up.get_weights()])


def _row_receptive_field_centres(model, rows):
    """Centre, in input rows, of the receptive field of each output row in ``rows``.

    Batch item r lights up input row r only; output row j of item r is
    positive iff input row r is in output row j's receptive field.
    """
    _, height, width, _ = model.input.shape
    images = np.zeros((height, height, width, 1), "float32")
    images[np.arange(height), np.arange(height)] = 1.0
    out = predict(model, images)
    reaches = out.sum(axis=(2, 3)) > 0  # [input row, output row]
    centres = []
    for row in rows:
        seen = np.flatnonzero(reaches[:, row])
        # The field must lie inside the image to see both of its edges.
        assert 0 < seen[0] and seen[-1] < height - 1, "image too small for the field"
        centres.append((seen[0] + seen[-1]) / 2)
    return np.array(centres)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(("depth", "height"), [(1, 40), (2, 75), (3, 150)])
def test_output_pixel_j_is_centred_on_input_pixel_j(depth, height, padding):
    # Checked one path at a time, since the union of paths has no exact centre.
    # Through level l, 2**l output rows share one pooled row, so single fields
    # lean by up to (2**l - 1) / 2 rows in alternation; over 2**l consecutive
    # rows the lean cancels exactly, so the mean offset is 0 when aligned. A
    # misaligned pad, crop or skip crop shifts every centre, hence the mean.
    base_filters = 2
    model = build_unet((height, 8, 1), 1, depth=depth, base_filters=base_filters,
                       padding=padding)
    start = height // 2 - 2**depth
    rows = np.arange(start, start + 2 * 2**depth)
    for level in range(depth + 1):
        _make_monotone(model)
        _keep_only_path(model, depth, level, base_filters)
        offsets = _row_receptive_field_centres(model, rows) - rows
        assert offsets.mean() == pytest.approx(0.0), (level, offsets)
        assert np.abs(offsets).max() <= (2**level - 1) / 2, (level, offsets)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_shifting_the_input_shifts_the_output(padding):
    # Shift by the pooling period so the pooling grid lines up the same way.
    depth, shift, height = 2, 4, 96
    model = build_unet((height, 8, 1), 2, depth=depth, base_filters=2, padding=padding)
    image = np.random.default_rng(2).normal(size=(1, height + shift, 8, 1))
    out_a = predict(model, image[:, :height])
    out_b = predict(model, image[:, shift:])
    margin = 48  # beyond the receptive-field radius, away from the zero padding
    np.testing.assert_allclose(out_a[:, margin:-margin], out_b[:, margin - shift:-margin - shift],
                               rtol=1e-4, atol=1e-5)


def test_dropout_and_activation_layers():
    with_dropout = build_unet((16, 16, 1), 2, depth=1, base_filters=2, dropout=0.5,
                              activation="leaky_relu")
    names = [layer.name for layer in with_dropout.layers]
    assert "bottleneck_dropout" in names
    assert any(isinstance(layer, keras.layers.LeakyReLU) for layer in with_dropout.layers)
    without = build_unet((16, 16, 1), 2, depth=1, base_filters=2)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in without.layers)


@pytest.mark.parametrize(("norm", "layer_type"), [
    ("batch", keras.layers.BatchNormalization),
    ("instance", keras.layers.GroupNormalization),
])
def test_norm_layers_and_conv_bias(norm, layer_type):
    model = build_unet((16, 16, 1), 2, depth=1, base_filters=2, norm=norm)
    assert sum(isinstance(layer, layer_type) for layer in model.layers) == 6  # 2 per level
    assert not model.get_layer("enc0_1_conv").use_bias
    assert build_unet((16, 16, 1), 2, depth=1, base_filters=2).get_layer("enc0_1_conv").use_bias


def test_mixed_precision_logits_stay_float32():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        for padding in ("same", "valid"):
            model = build_unet((37, 41, 1), 2, depth=2, base_filters=2, padding=padding)
            assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize(("padding", "norm"), [("same", "batch"), ("valid", "instance")])
def test_safe_mode_save_load_round_trip(tmp_path, padding, norm):
    # Numpy scalars, as a search space may sample them, must still serialise.
    model = build_unet((37, 41, 1), 3, depth=np.int64(2), base_filters=np.int64(2),
                       padding=padding, norm=norm, activation="leaky_relu",
                       dropout=np.float32(0.1))
    assert_safe_mode_round_trip(model, tmp_path / "unet.keras", seed=3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"norm": "layer"}, "unknown norm 'layer'; expected one of: 'none', 'batch', 'instance'"),
    ({"activation": "gelu"}, "unknown activation 'gelu'; expected one of: 'relu', 'leaky_relu'"),
    ({"padding": "reflect"}, "unknown padding 'reflect'"),
    ({"depth": 0}, "depth must be an integer >= 1"),
    ({"base_filters": 0}, "base_filters must be an integer >= 1"),
    ({"dropout": 1.0}, r"dropout must be a rate in \[0, 1\)"),
])
def test_bad_options_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_unet((16, 16, 1), 2, **kwargs)


@pytest.mark.parametrize(("input_shape", "num_classes"), [
    ((16, 16), 2), ((16, 0, 1), 2), ((16, 16.0, 1), 2), ((16, None, 1), 2), ((16, 16, 1), 0),
])
def test_bad_shapes_raise_value_error(input_shape, num_classes):
    with pytest.raises(ValueError, match="input_shape|num_classes"):
        build_unet(input_shape, num_classes)


def test_tiny_training_run_reduces_loss():
    # Batch norm keeps this tiny ReLU net out of the dead, constant-output
    # start that some seeds give without it, so the check is seed-robust.
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(4).normal(size=(8, 32, 32, 1)).astype("float32")
    labels = (images[..., 0] > 0).astype("int32")
    model = build_unet((32, 32, 1), 2, depth=2, base_filters=4, norm="batch")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(images, labels, batch_size=2, epochs=10, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
