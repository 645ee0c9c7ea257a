"""`data plan`: nnU-Net's planning rules on fingerprints, and the command on real NIfTI files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import snapshot, write_msd

from hpsearch.data import Fingerprint, check_dataset, make_plan
from hpsearch.data.check import ChannelStats
from hpsearch.data.plan import MIN_FEATURE_MAP, estimate_training_bytes, fit_poolings, poolings, target_spacing
from hpsearch.errors import HpsearchError

GIB = 2**30
Z_SPACINGS = [3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 6.0]  # 10th percentile 3.9, median 5


def _fingerprint(shapes, spacings, channels: int = 1, classes: int = 2) -> Fingerprint:
    spacing = np.asarray(spacings, dtype=float)
    return Fingerprint(
        root="mem", layout="msd", num_cases=len(shapes),
        channels=[ChannelStats(f"c{i}", 0.0, 1.0, -1.0, 1.0, -1.0, 1.0) for i in range(channels)],
        class_names=[f"k{i}" for i in range(classes)], label_values=list(range(classes)), label_voxels={},
        shapes=[list(s) for s in shapes], spacing_min=spacing.min(0).tolist(),
        spacing_median=np.median(spacing, 0).tolist(), spacing_max=spacing.max(0).tolist(),
        spacings=spacing.tolist(),
    )


ISO = _fingerprint([(64, 64, 64)] * 4, [(1.0, 1.0, 1.0)] * 4)
ANISO = _fingerprint([(160, 160, 20)] * 10, [(0.7, 0.7, z) for z in Z_SPACINGS])
ODD = _fingerprint([(197, 233, 5)] * 3, [(1.0, 1.0, 3.0)] * 3)


@pytest.mark.parametrize("patch, pools, batch, expected", [
    # By hand. 2D 8x8, one pooling, base 4 filters, 1 channel, 2 classes:
    # values: level 0: 64 x 4 x 15 = 3840, bottleneck: 16 x 8 x 6 = 768, input+output 64 x 3 = 192
    #   -> 4800 x 2 x 4 bytes = 38400 per sample;
    # weights: enc 9(1x4 + 4x4) = 180, bottleneck 9(4x8 + 8x8) = 864, up 4 x 8 x 4 = 128,
    #   dec 9(8x4 + 4x4) = 432, head 4 x 2 = 8 -> 1612 x 4 bytes x 5 copies = 32240.
    ((8, 8), (1, 1), 2, 32240 + 2 * 38400),
    ((8, 8), (1, 1), 0, 32240),
    # 3D 8x8x3, the last axis not pooled: values 192 x 4 x 15 + 48 x 8 x 6 + 192 x 3 = 14400;
    # weights 27 x 20 + 27 x 96 + 4 x 32 (2x2x1 up-kernel) + 27 x 48 + 8 = 4564.
    ((8, 8, 3), (1, 1, 0), 2, 4564 * 20 + 2 * 14400 * 8),
])
def test_training_memory_estimate_by_hand(patch, pools, batch, expected):
    assert estimate_training_bytes(patch, pools, 4, 1, 2, batch) == expected


@pytest.mark.parametrize("spacing, size, expected", [
    ((1.0, 1.0, 1.0), (64, 64, 64), [4, 4, 4]),         # 64 -> 4 after 4 halvings
    ((1.0, 1.0), (197, 233), [5, 5]),                   # odd sizes: 197 -> 6, 233 -> 7
    # The coarse axis waits until the in-plane spacing is within 2x of it (after two
    # poolings: 2.8 mm vs 3.5 mm), then stops at 7 voxels while in-plane goes on to 5.
    ((0.7, 0.7, 3.5), (160, 160, 28), [5, 5, 2]),
    ((1.0, 1.0, 1.0), (64, 64, 7), [4, 4, 0]),          # under 2 x 4 voxels: never pooled
    ((1.0, 1.0), (3, 3), [0, 0]),
])
def test_poolings_per_axis(spacing, size, expected):
    assert poolings(spacing, size) == expected


@pytest.mark.parametrize("spacing, size, patch", [
    ((1.0, 1.0), (197, 233), [192, 224]),               # rounded *down* to multiples of 2**5
    ((0.7, 0.7, 3.5), (160, 160, 30), [160, 160, 28]),
    ((1.0, 1.0, 1.0), (57, 64, 5), [56, 64, 5]),
])
def test_patch_is_a_multiple_of_its_poolings_and_inside_the_size(spacing, size, patch):
    fitted, pools = fit_poolings(spacing, size)
    assert fitted == patch
    assert all(p % 2**n == 0 and p <= s and p // 2**n >= MIN_FEATURE_MAP or n == 0
               for p, n, s in zip(fitted, pools, size))


@pytest.mark.parametrize("spacings, shapes, target, coarse", [
    ([(1.0, 1.0, 1.0), (1.2, 1.2, 1.2), (0.8, 0.8, 0.8)], [(64, 64, 64)] * 3, [1.0, 1.0, 1.0], None),
    # Coarse spacing and few slices: the 10th percentile of the coarse axis.
    ([(0.7, 0.7, z) for z in Z_SPACINGS], [(160, 160, 20)] * 10, [0.7, 0.7, 3.9], 2),
    # Coarse spacing but as many slices as in-plane voxels: the median stays.
    ([(0.7, 0.7, z) for z in Z_SPACINGS], [(160, 160, 100)] * 10, [0.7, 0.7, 5.0], None),
    # The 10th percentile (0.5) would be finer than the other axes: clamped to them.
    ([(1.0, 1.0, z) for z in (0.5, 0.5, 0.5, 4, 4, 4, 4, 4)], [(160, 160, 20)] * 8, [1.0, 1.0, 1.0], 2),
])
def test_target_spacing(spacings, shapes, target, coarse):
    got, axis = target_spacing(np.array(spacings), np.array(shapes, dtype=float))
    np.testing.assert_allclose(got, target)
    assert axis == coarse


@pytest.mark.parametrize("fp, dims, patch, pools, axes, slice_axis", [
    (ISO, 3, (64, 64, 64), (4, 4, 4), (0, 1, 2), None),
    (ISO, 2, (64, 64), (4, 4), (0, 1), 2),                      # isotropic: slices along the last axis
    # 20 slices at 3.9 instead of 5 mm are 26 at the median; pooled twice against five times.
    (ANISO, 3, (160, 160, 24), (5, 5, 2), (0, 1, 2), None),
    (ANISO, 2, (160, 160), (5, 5), (0, 1), 2),
    (ODD, 2, (192, 224), (5, 5), (0, 1), 2),
    (ODD, 3, (192, 224, 5), (5, 5, 0), (0, 1, 2), None),
])
def test_plan_with_room_to_spare(fp, dims, patch, pools, axes, slice_axis):
    plan = make_plan(fp, dims, 64 * GIB, base_filters=8)
    assert (plan.patch_size, plan.poolings, plan.axes, plan.slice_axis) == (patch, pools, axes, slice_axis)
    assert plan.batch_size >= 2 and plan.estimated_bytes <= 64 * GIB
    assert len(plan.filters) == max(pools) + 1
    json.dumps(plan.to_dict())


def test_anisotropic_plan_names_the_coarse_axis():
    plan = make_plan(ANISO, 3, 64 * GIB, base_filters=8)
    assert plan.coarse_axis == 2
    assert plan.target_spacing == (0.7, 0.7, 3.9) and plan.median_spacing == (0.7, 0.7, 5.0)
    assert plan.median_shape == (160, 160, 26)
    assert "axis 2 is coarse" in plan.format()


@pytest.mark.parametrize("fp, dims", [(ISO, 3), (ANISO, 3), (ANISO, 2), (ODD, 2), (ODD, 3)])
@pytest.mark.parametrize("budget_mib", [1, 4, 16, 64, 256, 4096])
def test_patch_fits_the_budget_and_never_exceeds_the_median_shape(fp, dims, budget_mib):
    budget = budget_mib * 2**20
    try:
        plan = make_plan(fp, dims, budget, base_filters=8)
    except HpsearchError as exc:  # only the smallest budgets may be too small
        assert budget_mib == 1 and "too small" in str(exc)
        return
    assert plan.estimated_bytes <= budget and plan.batch_size >= 2
    assert all(p <= plan.median_shape[a] for p, a in zip(plan.patch_size, plan.axes))
    assert all(p % 2**n == 0 for p, n in zip(plan.patch_size, plan.poolings))


def test_a_tight_budget_shrinks_the_axis_largest_relative_to_the_median_shape():
    roomy = make_plan(ANISO, 3, 64 * GIB, base_filters=8)
    tight = make_plan(ANISO, 3, 200 * 2**20, base_filters=8)
    assert np.prod(tight.patch_size) < np.prod(roomy.patch_size)
    assert tight.batch_size == 2 and tight.estimated_bytes <= 200 * 2**20
    ratios = [p / tight.median_shape[a] for p, a in zip(tight.patch_size, tight.axes)]
    assert max(ratios) - min(ratios) < 0.35  # shrunk evenly, not one axis down to nothing


def test_batch_grows_with_the_budget_up_to_five_percent_of_the_dataset():
    many = _fingerprint([(64, 64, 64)] * 200, [(1.0, 1.0, 1.0)] * 200)
    small, large = (make_plan(many, 2, b, base_filters=8) for b in (256 * 2**20, 64 * GIB))
    assert small.patch_size == large.patch_size == (64, 64)
    assert 2 < small.batch_size < large.batch_size
    assert large.batch_size == round(0.05 * 64**3 * 200 / 64**2)


@pytest.mark.parametrize("kwargs, message", [
    ({"dims": 4}, "dims: must be 2 or 3"),
    ({"dims": 2, "slice_axis": 3}, "slice_axis: must be 0, 1 or 2"),
    ({"dims": 3, "base_filters": 0}, "base_filters: must be a positive integer"),
    ({"dims": 3, "memory_budget_bytes": 1000}, "too small for even a 4x4x4 patch"),
])
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(HpsearchError, match=message):
        make_plan(**{"fingerprint": ISO, "memory_budget_bytes": GIB, **kwargs})


def _anisotropic_dataset(root: Path) -> Path:
    """Four cases of 64x64x8 voxels at 0.7x0.7x(4..6) mm."""
    rng = np.random.default_rng(0)
    cases, affines = [], []
    for z in (4.0, 5.0, 5.0, 6.0):
        label = np.zeros((64, 64, 8), np.uint8)
        label[20:40, 18:44, 2:6] = 1
        cases.append((rng.uniform(0, 100, (64, 64, 8)), label))
        affines.append(np.diag([0.7, 0.7, z, 1.0]))
    return write_msd(root, cases, {0: "background", 1: "lesion"}, affines=affines)


def test_fingerprint_keeps_each_cases_spacing(tmp_path):
    fp = check_dataset(_anisotropic_dataset(tmp_path / "ds")).fingerprint
    np.testing.assert_allclose(fp.spacings, [[0.7, 0.7, z] for z in (4.0, 5.0, 5.0, 6.0)], rtol=1e-6)
    assert {"spacing_min", "spacing_median", "spacing_max", "shapes"} <= set(fp.to_dict())


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpsearch", "data", "plan", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_data_plan_command_text_and_json(tmp_path):
    root = _anisotropic_dataset(tmp_path / "ds")
    before = snapshot(root)
    text = _cli(root, "--memory-gb", "1")
    assert text.returncode == 0, text.stderr
    assert "patch       64x64x8 (axes 0,1,2)" in text.stdout
    assert "axis 2 is coarse" in text.stdout  # 10th percentile of 4, 5, 5, 6 mm
    as_json = _cli(root, "--dims", "2", "--json", "--memory-gb", "1")
    assert as_json.returncode == 0, as_json.stderr
    plan = json.loads(as_json.stdout)
    assert plan["dims"] == 2 and plan["slice_axis"] == 2 and plan["patch_size"] == [64, 64]
    assert plan["poolings"] == [4, 4] and plan["memory_budget_bytes"] == GIB
    np.testing.assert_allclose(plan["target_spacing"], [0.7, 0.7, 4.3], rtol=1e-5)
    assert snapshot(root) == before  # nothing written into the dataset


def test_data_plan_refuses_a_dataset_with_defects(tmp_path):
    root = _anisotropic_dataset(tmp_path / "ds")
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    result = _cli(root)
    assert result.returncode == 2 and result.stdout == ""
    assert any("case_001.nii.gz" in line for line in result.stderr.splitlines())
    assert "Traceback" not in result.stderr
