"""Recording learning-curve tables: real Keras training on tiny synthetic NIfTI data, and
a real tiny search (local Ray, SQLite MLflow) read back into a table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

from hpsearch.curves import CurveTable, record_curves, sample_configs, table_from_mlflow
from hpsearch.errors import HpsearchError
from hpsearch.space import parse_space
from hpsearch.spec import load_job

JOB = """\
name: {name}
dataset: {{path: {data}, image_size: [32, 32], val_fraction: 0.25}}
model: unet
params: {{epochs: 3, depth: 2, base_filters: 4, batch_size: 8, decay_steps: 50, activation: leaky_relu, loss: ce}}
search_space: space.yaml
search: {{sampler: random, num_trials: 4, max_concurrent: 2, seed: 0, max_failures: 0}}
scheduler: {{type: {scheduler}, max_epochs: 3, grace_period: 1, reduction_factor: 2}}
resources: {{cpus_per_trial: 1}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results
"""
# A learning rate of 10 with leaky ReLU and plain cross-entropy drives the loss to NaN.
SPACE = {"learning_rate": {"type": "choice", "values": [0.003, 10.0]},
         "dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
         "epochs": {"type": "int", "low": 1, "high": 3}}


def _job(tmp_path: Path, data: Path, scheduler: str = "none"):
    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(name="curves", data=data, scheduler=scheduler))
    (tmp_path / "space.yaml").write_text("\n".join(f"{k}: {v}" for k, v in SPACE.items()).replace("'", ""))
    return load_job(path), parse_space(SPACE, "unet", "space.yaml")


class Interrupted(Exception):
    pass


def test_record_resumes_after_interruption_and_fills_the_table(tmp_path, lv_small):
    job, space = _job(tmp_path, lv_small)
    out = tmp_path / "curves" / "t.npz"
    sampled = sample_configs(space, 3, seed=4)
    assert {c["learning_rate"] for c in sampled} == {0.003, 10.0}, "the seed must draw a diverging configuration"

    def stop_after_first(row, record):
        raise Interrupted

    with pytest.raises(Interrupted):
        record_curves(job, space, configs=3, seed=4, workers=1, out=out, on_row=stop_after_first)
    assert not out.exists()
    first = [line for line in (tmp_path / "curves" / "t.npz.partial.jsonl").read_text().splitlines()[1:]]
    assert len(first) >= 1  # the running configuration may finish too before the pool shuts down

    trained: list[int] = []
    table = record_curves(job, space, configs=3, seed=4, workers=1, out=out,
                          on_row=lambda row, record: trained.append(row))
    assert len(trained) == 3 - len(first), "finished configurations were trained again"

    loaded = CurveTable.load(out)
    assert loaded.configs == sampled
    assert loaded.val_dice.shape == loaded.val_loss.shape == loaded.epoch_seconds.shape == (3, 3)
    assert loaded.meta["max_epochs"] == 3 and loaded.meta["resumed_rows"] == len(first)
    assert loaded.meta["machine"]["cores"] >= 1 and loaded.meta["task"] == "curves"
    for row, config in enumerate(sampled):
        dice = loaded.val_dice[row]
        if config["learning_rate"] == 10.0:  # diverged: NaN from the failing epoch on, and said so
            assert np.isnan(dice[-1]) and loaded.meta["failures"].get("nan", 0) >= 1
            ended = len(loaded.curve(row)["val_dice"])
            assert np.isnan(dice[ended:]).all() and np.isfinite(dice[:ended]).all()
        else:  # trained to max_epochs whatever its sampled `epochs`
            assert np.isfinite(dice).all() and config["epochs"] <= 3
            assert ((dice >= 0) & (dice <= 1)).all()
            assert (loaded.val_loss[row] > 0).all() and (loaded.epoch_seconds[row] > 0).all()
    np.testing.assert_allclose(table.val_dice, loaded.val_dice, rtol=1e-6, equal_nan=True)

    # A table already there is extended, not trained again (here: to the same size), never cut.
    (tmp_path / "curves" / "t.npz.partial.jsonl").unlink()
    again = record_curves(job, space, configs=3, seed=4, workers=1, out=out, on_row=lambda row, record: trained.append(row))
    assert len(trained) == 3 - len(first)
    np.testing.assert_allclose(again.val_dice, loaded.val_dice, equal_nan=True)
    assert again.meta["rows"] == loaded.meta["rows"] and again.meta["resumed_rows"] == 3
    with pytest.raises(HpsearchError, match="holds 3 configurations"):
        record_curves(job, space, configs=2, seed=4, workers=1, out=out)
    with pytest.raises(HpsearchError, match="recorded with another"):
        record_curves(job, space, configs=3, seed=5, workers=1, out=out)


def test_same_seed_same_configs_and_a_prefix():
    space = parse_space({**SPACE, "depth": {"type": "int", "low": 2, "high": 4}}, "unet", "s.yaml")
    for sampler in ("random", "qmc"):
        a, b = sample_configs(space, 6, seed=1, sampler=sampler), sample_configs(space, 6, seed=1, sampler=sampler)
        assert a == b
        assert sample_configs(space, 3, seed=1, sampler=sampler) == a[:3]
        assert sample_configs(space, 6, seed=2, sampler=sampler) != a
        assert all(0.0 <= c["dropout"] <= 0.3 and c["depth"] in (2, 3, 4) for c in a)


def test_partial_of_another_recording_is_refused(tmp_path, lv_small):
    job, space = _job(tmp_path, lv_small)
    out = tmp_path / "t.npz"
    (tmp_path / "t.npz.partial.jsonl").write_text('{"key": {"seed": 99}}\n')
    with pytest.raises(HpsearchError, match="partial recording of another"):
        record_curves(job, space, configs=2, seed=0, workers=1, out=out)


def test_table_from_mlflow_holds_the_search_curves(tmp_path, lv_small, monkeypatch):
    from hpsearch.search.driver import run_search

    _job(tmp_path, lv_small, scheduler="asha")
    monkeypatch.chdir(tmp_path)  # relative storage and tracking paths land in tmp_path
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    try:
        experiment = run_search(tmp_path / "job.yaml", echo=lambda line: None)
    finally:
        if started:
            ray.shutdown()
    table = table_from_mlflow(experiment)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.info.run_id: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`hpsearch.trial_id` != ''")}
    assert len(table) == len(runs) == 4 and table.max_epochs == 3
    for config, dice, loss in zip(table.configs, table.val_dice, table.val_loss):
        run = next(r for r in runs.values() if {k: str(v) for k, v in config.items()} == r.data.params)
        for key, row in (("val_dice", dice), ("val_loss", loss)):
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            expected = [history.get(epoch, math.nan) for epoch in (1, 2, 3)]
            np.testing.assert_allclose(row, expected, rtol=1e-6, equal_nan=True)
    lengths = sorted(len(table.curve(row)["val_dice"]) for row in range(len(table)))
    assert lengths[0] < 3, f"no shorter curve (stopped early, diverged or a smaller epochs): {lengths}"
    assert table.meta["source"] == "mlflow" and table.meta["max_epochs"] == 3
    assert set(table.space) == set(SPACE)
    loaded = CurveTable.load(table.save(tmp_path / "m.npz"))
    assert loaded.configs == table.configs


def test_table_from_mlflow_refuses_a_folder_that_is_no_search(tmp_path):
    with pytest.raises(HpsearchError):
        table_from_mlflow(tmp_path)
