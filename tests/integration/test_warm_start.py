"""Warm starts and extended searches on a local Ray: real tiny searches, real Optuna studies
(opened with ``optuna.load_study`` on the experiment's journal file), an MLflow SQLite store,
NIfTI files written with nibabel.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import optuna
import pytest
from helpers import snapshot
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment
from hpsearch.outcome import SearchStatus
from hpsearch.search import warm_start
from hpsearch.search.driver import run_search
from hpsearch.space import load_space, to_optuna

JOB = """\
name: {name}
dataset: {{path: {data}, image_size: [32, 32], val_fraction: 0.25}}
model: unet
params: {{epochs: 2, depth: 2, base_filters: 4, batch_size: 4, learning_rate: 3.0e-3, decay_steps: 50}}
search_space: {space}
search: {{sampler: tpe, num_trials: {trials}, max_concurrent: 2, seed: {seed}, max_failures: 1, dashboard: false,
         metric: {metric}{extra}}}
scheduler: {{type: asha, max_epochs: 2, grace_period: 1, reduction_factor: 2}}
resources: {{cpus_per_trial: 1}}
tracking: {{uri: "sqlite:///{store}/mlflow.db"}}
storage: {root}/results
"""
SPACE = """\
learning_rate: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
base_filters: {type: choice, values: [4, 8]}
"""


def _job(root: Path, data: Path, *, name: str = "first", trials: int = 3, seed: int = 0, space: str = SPACE,
         extra: str = "", metric: str = "val_loss", store: Path | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    space_file = root / f"{name}-space.yaml"
    space_file.write_text(space)
    text = JOB.format(name=name, data=data, space=space_file, trials=trials, seed=seed, extra=extra, root=root,
                      metric=metric, store=store or root)
    (root / f"{name}.yaml").write_text(text)
    return root / f"{name}.yaml"


def _study(experiment: Path) -> optuna.Study:
    return optuna.load_study(study_name=experiment.name,
                             storage=JournalStorage(JournalFileBackend(str(experiment / "optuna.journal"))))


def _parent_and_children(experiment: Path):
    state = json.loads((experiment / "hpsearch-search.json").read_text())
    client = mlflow.MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'")
    return parent, children


def _runs_in(root: Path) -> int:
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


@pytest.fixture(scope="module")
def earlier(local_ray, lv_small, tmp_path_factory) -> Path:
    """A finished 3-trial search (some trials stopped by ASHA at epoch 1), ranked by val_loss:
    two epochs of a tiny U-Net leave every Dice at 0, the loss differs from trial to trial."""
    root = tmp_path_factory.mktemp("warm")
    return run_search(_job(root, lv_small), echo=lambda line: None)


def test_the_study_holds_every_trial_with_its_curve(earlier):
    results = json.loads((earlier / "results.json").read_text())
    trials = _study(earlier).trials
    assert len(trials) == len(results["trials"]) == 3
    assert all(t.state is TrialState.COMPLETE for t in trials) and len({t.value for t in trials}) == 3
    for row in results["trials"]:
        (trial,) = [t for t in trials if t.params == row["params"]]
        curve = {int(h["training_iteration"]): h["val_loss"] for h in row["history"]}
        # Every epoch reached the study, the last one as its value too (what the sampler ranks by).
        assert trial.intermediate_values == pytest.approx(curve), (trial.intermediate_values, curve)
        assert trial.value == pytest.approx(curve[max(curve)])


def test_a_warm_started_study_has_the_earlier_trials_first(earlier, lv_small):
    root = earlier.parent.parent
    before = _study(earlier).trials
    parent_id = json.loads((earlier / "hpsearch-search.json").read_text())["parent_run_id"]
    # An MLflow parent run names the same search as its folder does.
    assert warm_start.resolve_sources([f"runs:/{parent_id}"], f"sqlite:///{root}/mlflow.db", "x") == [earlier]

    job = _job(root, lv_small, name="second", trials=2, seed=1, extra=f", warm_start: ['runs:/{parent_id}']")
    lines: list[str] = []
    second = run_search(job, echo=lines.append)

    trials = _study(second).trials
    assert len(trials) == 5 and all(t.state is TrialState.COMPLETE for t in trials)
    copied, own = trials[:3], trials[3:]
    for old, new in zip(before, copied):
        assert (new.params, new.value, new.intermediate_values) == (old.params, old.value, old.intermediate_values)
        assert new.user_attrs["hpsearch.origin"] == f"{earlier.name}#{old.number}"
    assert all(t.intermediate_values and "hpsearch.origin" not in t.user_attrs for t in own)
    assert any(line.startswith(f"warm start: 3 trial(s) from {earlier.name}: 3 trial(s)") for line in lines), lines
    parent, children = _parent_and_children(second)
    assert parent.data.tags["hpsearch.warm_start_trials"] == "3"
    assert parent.data.tags["hpsearch.warm_start_dirs"] == str(earlier)
    assert parent.data.params["warm_start"] == str([str(earlier)])
    assert len(children) == 2  # the earlier trials seed the sampler; they are not this search's runs
    assert len(json.loads((second / "results.json").read_text())["trials"]) == 2


@pytest.mark.parametrize("change, expected", [
    ("dataset", "it ran on other data (dataset digest"),
    ("space", "its search space differs (learning_rate: loguniform 0.001..0.01 there, loguniform 0.0001..0.01 here)"),
    ("metric", "it ranked trials by val_loss (min), this search by val_dice (max)"),
    ("not an experiment", "not an hpsearch experiment folder"),
])
def test_an_incompatible_warm_start_is_refused_in_one_line_and_writes_nothing(earlier, lv_small, tmp_path, capsys,
                                                                              change, expected):
    root, data, space, metric, source = tmp_path / "new", lv_small, SPACE, "val_loss", earlier
    if change == "dataset":  # one voxel relabelled: a valid dataset with other content
        data = shutil.copytree(lv_small, tmp_path / "lv")
        label = data / "labelsTr" / "lv_003.nii.gz"
        image = nib.load(label)
        voxels = np.asarray(image.dataobj).copy()
        voxels[0, 0, 0] = 1 - voxels[0, 0, 0]
        nib.save(nib.Nifti1Image(voxels, image.affine, image.header), label)
    elif change == "space":
        space = SPACE.replace("low: 1.0e-3", "low: 1.0e-4")
    elif change == "metric":
        metric = "val_dice"
    else:
        source = tmp_path
    store = earlier.parent.parent  # the earlier search's MLflow store, as a user's next search would
    job = _job(root, data, name="refused", space=space, extra=f", warm_start: ['{source}']", metric=metric,
               store=store)
    earlier_before, runs_before = snapshot(earlier), _runs_in(store)

    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hpsearch: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"hpsearch: error: {job}: search.warm_start: ") and expected in errors[0], errors
    assert not (root / "results").exists() and _runs_in(store) == runs_before  # nothing written
    assert snapshot(earlier) == earlier_before
    if change in ("dataset", "space"):
        assert "search.warm_start_force: true" in errors[0]


def test_forced_warm_start_skips_the_trials_outside_the_new_space(earlier):
    """Forced, a narrower space takes the trials inside it and counts the rest."""
    rates = sorted(t.params["learning_rate"] for t in _study(earlier).trials)
    narrow = earlier.parent.parent / "narrow.yaml"  # the smallest learning rate tried lies outside
    narrow.write_text(f"learning_rate: {{type: loguniform, low: {rates[1]!r}, high: 1.0e-2}}\n"
                      "base_filters: {type: choice, values: [4, 8]}\n")
    space = to_optuna(load_space(narrow, "unet"))
    digest = Experiment.open(earlier).state.dataset_digest
    kwargs = dict(space=space, objective="val_loss", mode="min", digest=digest, where="job: search.warm_start")
    with pytest.raises(HpsearchError, match="its search space differs \\(learning_rate: loguniform 0.001..0.01 there"):
        warm_start.prepare([earlier], force=False, **kwargs)

    warm = warm_start.prepare([earlier, earlier], force=True, **kwargs)  # the same search twice: taken once
    assert (warm.taken, warm.skipped) == ({earlier.name: 2}, {earlier.name: 1})
    assert sorted(t.params["learning_rate"] for t in warm.trials) == rates[1:]
    assert all(t.distributions == space for t in warm.trials)
    assert warm.summary() == (f"{earlier.name}: 2 trial(s) (1 outside this search's space skipped; "
                              "space differ(s), forced)")


def test_extend_keeps_the_parent_run_and_adds_exactly_n_trials(local_ray, lv_small, tmp_path, capsys):
    experiment = run_search(_job(tmp_path, lv_small, name="ext", trials=2), echo=lambda line: None)
    parent_before, children_before = _parent_and_children(experiment)
    study_before = _study(experiment).trials
    assert len(children_before) == 2 and len(study_before) == 2

    refusals = {("--trials", "0"): "--trials 0: must be at least 1",
                ("--trials", "1", "--set", "x=1"): "no job file or --set"}
    for extra, expected in refusals.items():
        assert main(["run", "--extend", str(experiment), *extra]) == 2
        assert expected in capsys.readouterr().err
    assert main(["run", "--extend", str(tmp_path), "--trials", "1"]) == 2
    assert "not an hpsearch experiment folder" in capsys.readouterr().err
    Experiment.open(experiment).set_status(SearchStatus.RUNNING)
    assert main(["run", "--extend", str(experiment), "--trials", "1"]) == 2
    assert "the search is still running" in capsys.readouterr().err
    Experiment.open(experiment).set_status(SearchStatus.FINISHED)

    assert main(["run", "--extend", str(experiment), "--trials", "2"]) == 0
    parent, children = _parent_and_children(experiment)
    assert parent.info.run_id == parent_before.info.run_id and parent.info.status == "FINISHED"
    assert len(children) == 4 and {c.info.run_id for c in children_before} < {c.info.run_id for c in children}
    assert parent.data.tags["hpsearch.trials_total"] == "4"
    trials = _study(experiment).trials
    assert len(trials) == 4 and all(t.state is TrialState.COMPLETE for t in trials)
    assert [(t.params, t.intermediate_values) for t in trials[:2]] == [
        (t.params, t.intermediate_values) for t in study_before]
    results = json.loads((experiment / "results.json").read_text())
    assert len(results["trials"]) == 4
    best = min(t["best_value"] for t in results["trials"] if not math.isnan(t["best_value"]))
    assert results["best"]["best_value"] == best
    state = Experiment.open(experiment).state
    assert [e.name for e in state.extensions] == ["extend-1"] and state.status is SearchStatus.FINISHED
    new = {t["trial_id"] for t in results["trials"]} - {c.data.tags["hpsearch.trial_id"] for c in children_before}
    assert len(new) == 2 and all(
        Path(t["checkpoint"]).is_relative_to(experiment / "extend-1") for t in results["trials"]
        if t["trial_id"] in new)

    # Interrupted, an extended search is resumed in its latest Ray Tune run, and still ranks every trial.
    Experiment.open(experiment).set_status(SearchStatus.INTERRUPTED)
    assert main(["run", "--extend", str(experiment), "--trials", "1"]) == 2
    assert f"finish it with `hpsearch resume {experiment}`" in capsys.readouterr().err
    assert main(["resume", str(experiment)]) == 0
    resumed = json.loads((experiment / "results.json").read_text())
    assert sorted(t["trial_id"] for t in resumed["trials"]) == sorted(t["trial_id"] for t in results["trials"])
    assert len(_parent_and_children(experiment)[1]) == 4


@pytest.mark.parametrize("argv, expected", [
    (["run"], "run: give a job file (or --extend EXPERIMENT --trials N)"),
    (["run", "job.yaml", "--trials", "3"], "run --trials: only with --extend"),
    (["run", "--extend", "results/x"], "run --extend results/x: say how many trials to add with --trials N"),
    (["run", "job.yaml", "--extend", "results/x", "--trials", "1"], "no job file or --set"),
])
def test_run_arguments_are_refused_in_one_line(argv, expected, capsys):
    assert main(argv) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and expected in errors[0], errors
