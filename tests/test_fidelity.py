"""Cheaper first epochs (hpsearch.fidelity): sizes, case subsets, down-sampling, the job section."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hpsearch.fidelity import FidelityConfig, case_subset, downsample, low_size
from hpsearch.search.config import SchedulerConfig


@pytest.mark.parametrize("size, resolution, multiple, expected", [
    ((96, 96), 0.5, 16, (48, 48)),
    ((96, 96), 0.25, 16, (32, 32)),   # 24 is no multiple of 16: the nearest one
    ((96, 64), 0.5, 8, (48, 32)),
    ((32, 32), 0.1, 16, (16, 16)),    # never below one multiple
    ((96, 96), 1.0, 4, (96, 96)),
])
def test_low_size_is_the_nearest_multiple_the_network_takes(size, resolution, multiple, expected):
    assert low_size(size, resolution, multiple) == expected


def test_low_size_refuses_slices_the_network_pads():
    with pytest.raises(ValueError, match="100x100 do not divide by 16.*dataset.image_size divisible by 16"):
        low_size((100, 100), 0.5, 16)


@pytest.mark.parametrize("fraction, cases, kept", [(0.5, 4, 2), (0.25, 10, 3), (0.01, 10, 1), (1.0, 5, 5)])
def test_case_subset_keeps_whole_cases(fraction, cases, kept):
    slice_cases = np.repeat(np.arange(cases), 3)  # 3 slices per case
    rows = case_subset(slice_cases, cases, fraction, seed=3)
    assert len(np.unique(slice_cases[rows])) == kept
    assert len(rows) == 3 * kept  # every slice of a chosen case, none of another
    np.testing.assert_array_equal(rows, case_subset(slice_cases, cases, fraction, seed=3))  # same trial, same cases


def test_case_subset_differs_between_seeds():
    slice_cases = np.arange(20)
    subsets = {tuple(case_subset(slice_cases, 20, 0.25, seed)) for seed in range(5)}
    assert len(subsets) > 1


def test_downsample_keeps_classes_and_intensities():
    rng = np.random.default_rng(0)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 8:24, 8:24] = 2
    images = np.full((2, 32, 32, 3), 5.0, np.float32)
    small_x, small_y = downsample(images + rng.normal(0, 1e-3, images.shape).astype(np.float32), labels, (16, 16))
    assert small_x.shape == (2, 16, 16, 3) and small_x.dtype == np.float32
    assert small_y.shape == (2, 16, 16) and small_y.dtype == np.uint8
    np.testing.assert_allclose(small_x, 5.0, atol=1e-2)  # interpolation, no new intensities
    assert set(np.unique(small_y)) == {0, 2}  # nearest neighbour: no class in between
    assert small_y[:, 4:12, 4:12].all() and not small_y[:, :3, :3].any()  # the square stays where it was


@pytest.mark.parametrize("section, message", [
    ({}, "both 1, so no epoch is cheaper"),
    ({"resolution": 0}, "greater than 0"),
    ({"case_fraction": 1.5}, "less than or equal to 1"),
    ({"resolution": 0.5, "steps": 2}, "Extra inputs"),
])
def test_fidelity_section_refuses_what_would_do_nothing_or_is_out_of_range(section, message):
    with pytest.raises(ValidationError, match=message):
        FidelityConfig(**section)


def test_fidelity_epochs_default_to_the_first_rung_and_leave_full_epochs():
    assert SchedulerConfig(grace_period=3, fidelity={"resolution": 0.5}).fidelity.epochs == 3
    assert SchedulerConfig(grace_period=3, fidelity={"resolution": 0.5, "epochs": 5}).fidelity.epochs == 5
    with pytest.raises(ValidationError, match=r"fidelity.epochs \(20\) must be below max_epochs \(20\)"):
        SchedulerConfig(max_epochs=20, fidelity={"case_fraction": 0.5, "epochs": 20})


def test_applies_to_the_first_epochs_only():
    fidelity = FidelityConfig(case_fraction=0.5, epochs=2)
    assert [fidelity.applies(epoch) for epoch in range(4)] == [True, True, False, False]


def test_a_job_refuses_fidelity_in_patch_mode_in_one_line():
    from hpsearch.errors import HpsearchError
    from hpsearch.spec import load_job

    with pytest.raises(HpsearchError) as caught:
        load_job("jobs/brats-3d.yaml", ["scheduler.fidelity.resolution=0.5"])
    assert str(caught.value).count("\n") == 0
    assert "brats-3d.yaml: scheduler.fidelity: slice mode only" in str(caught.value)


def test_a_job_keeps_its_filled_in_fidelity_through_a_saved_state():
    from hpsearch.spec import Job, load_job

    job = load_job("jobs/demo.yaml", ["scheduler.fidelity.case_fraction=0.5"])
    assert job.scheduler.fidelity == FidelityConfig(case_fraction=0.5, epochs=job.scheduler.grace_period)
    assert Job.model_validate(job.model_dump(mode="json")) == job  # as a resumed search reads it back
