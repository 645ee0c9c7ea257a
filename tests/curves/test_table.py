"""CurveTable: nearest configuration in the space's geometry, curve cutting, the .npz file."""

from __future__ import annotations

import numpy as np
import pytest

from hpsearch.curves import CurveTable
from hpsearch.errors import HpsearchError

SPACE = {
    "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
    "depth": {"type": "int", "low": 2, "high": 4},
    "loss": {"type": "choice", "values": ["ce", "dice"]},
    "epochs": {"type": "int", "low": 5, "high": 20},
}
BASE = {"learning_rate": 1e-3, "dropout": 0.25, "depth": 3, "loss": "ce", "epochs": 10}


def _table(configs, curves=None, space=SPACE) -> CurveTable:
    n = len(configs)
    dice = np.linspace(0.1, 0.9, n * 4).reshape(n, 4) if curves is None else np.asarray(curves, dtype=float)
    return CurveTable("t", space, configs, val_dice=dice, val_loss=1 - dice, epoch_seconds=np.ones_like(dice),
                      meta={"task": "toy"})


@pytest.mark.parametrize("name, candidates, query, expected", [
    # log scale: 3e-3 and 1.5e-3 are linearly nearer 1e-4 but logarithmically nearer 1e-2;
    # 5e-4 is nearer 1e-4 either way
    ("learning_rate", [1e-4, 1e-2], 3e-3, 1),
    ("learning_rate", [1e-4, 1e-2], 1.5e-3, 1),
    ("learning_rate", [1e-4, 1e-2], 5e-4, 0),
    # linear: 0.2 is nearer 0.0 than 0.5
    ("dropout", [0.0, 0.5], 0.2, 0),
    ("dropout", [0.0, 0.5], 0.3, 1),
    ("depth", [2, 4], 3.4, 1),
    # a choice matches exactly or not at all
    ("loss", ["ce", "dice"], "dice", 1),
    ("loss", ["dice", "ce"], "dice", 0),
])
def test_nearest_in_the_space_geometry(name, candidates, query, expected):
    table = _table([{**BASE, name: value} for value in candidates])
    assert table.nearest({**BASE, name: query}) == expected


def test_nearest_ignores_the_epoch_cap():
    # `epochs` cuts the curve, it does not choose it: a differing epochs must not outweigh learning_rate.
    table = _table([{**BASE, "learning_rate": 1e-4, "epochs": 10}, {**BASE, "learning_rate": 1e-2, "epochs": 5}])
    assert table.nearest({**BASE, "learning_rate": 8e-3, "epochs": 10}) == 1


@pytest.mark.parametrize("curve, epochs, expected", [
    ([0.1, 0.2, 0.3, 0.4], None, [0.1, 0.2, 0.3, 0.4]),
    ([0.1, 0.2, 0.3, 0.4], 2, [0.1, 0.2]),
    ([0.1, 0.2, np.nan, np.nan], None, [0.1, 0.2]),       # a run that failed at epoch 3
    ([0.1, 0.2, np.nan, np.nan], 3, [0.1, 0.2]),
    ([0.1, 0.2, np.nan, np.nan], 1, [0.1]),
    ([np.nan] * 4, None, []),                              # failed before its first epoch
])
def test_curve_is_cut_at_epochs_and_where_the_run_ended(curve, epochs, expected):
    table = _table([BASE], [curve])
    cut = table.curve(0, epochs)
    assert cut["val_dice"].tolist() == pytest.approx(expected)
    assert len(cut["val_loss"]) == len(cut["epoch_seconds"]) == len(expected)


def test_best_skips_nan():
    table = _table([BASE, BASE], [[0.1, np.nan, np.nan, np.nan], [0.2, 0.7, 0.5, 0.6]])
    assert table.best() == pytest.approx(0.7)


def test_save_load_round_trip(tmp_path):
    configs = [{**BASE, "learning_rate": np.float64(2e-3), "depth": np.int64(2)}, {**BASE, "loss": "dice"}]
    table = _table(configs, [[0.1, 0.2, np.nan, np.nan], [0.3, 0.4, 0.5, 0.6]])
    loaded = CurveTable.load(table.save(tmp_path / "sub" / "t.npz"))
    assert (loaded.name, loaded.space, loaded.meta) == ("t", SPACE, {"task": "toy"})
    assert loaded.configs == [{**BASE, "learning_rate": 2e-3, "depth": 2}, {**BASE, "loss": "dice"}]
    for key in ("val_dice", "val_loss", "epoch_seconds"):
        np.testing.assert_allclose(getattr(loaded, key), getattr(table, key), rtol=1e-6)  # stored as float32
    assert loaded.nearest({**BASE, "loss": "dice"}) == 1


@pytest.mark.parametrize("content", [b"", b"not a zip", None])
def test_corrupt_file_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content is None:  # a valid .npz without a header: some other array file
        np.savez_compressed(path, val_dice=np.zeros((1, 2)))
    else:
        path.write_bytes(content)
    with pytest.raises(HpsearchError) as caught:
        CurveTable.load(path)
    assert "not a learning-curve table" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(HpsearchError, match="not a learning-curve table"):
        CurveTable.load(tmp_path / "absent.npz")


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="curves must all be"):
        CurveTable("t", SPACE, [BASE], val_dice=np.zeros((1, 3)), val_loss=np.zeros((1, 2)),
                   epoch_seconds=np.zeros((1, 3)))
