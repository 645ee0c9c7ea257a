"""The training-memory estimate a trial checks before its first step."""

from __future__ import annotations

import pytest

from hpsearch.models import build_model
from hpsearch.models.footprint import DoesNotFit, check_fits, training_bytes


def test_estimate_grows_with_batch_and_counts_every_weight_copy():
    model = build_model("unet", (32, 32, 1), 2, depth=2, base_filters=4)
    one, eight = training_bytes(model, 1), training_bytes(model, 8)
    weights = model.count_params() * 4 * 5
    per_sample = one - weights
    assert per_sample > 32 * 32 * 4 * 2  # at least the input-sized first feature maps
    assert eight - weights == 8 * per_sample


def test_check_fits_names_the_budget_and_what_to_lower():
    model = build_model("unet", (32, 32, 1), 2, depth=2, base_filters=4)
    assert check_fits(model, 4, 2**30) == training_bytes(model, 4)
    with pytest.raises(DoesNotFit, match=r"the trial has 0\.00 GiB; lower batch_size") as error:
        check_fits(model, 4, 2**20)
    assert error.value.failure_kind == "invalid_config"
