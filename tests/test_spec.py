"""Job files: valid ones load, broken ones are refused with file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.spec import Job, load_job

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
name: t
dataset: {path: data/x, image_size: [64, 48]}
model: unet
params: {learning_rate: 1.0e-3, depth: 3}
"""


def _write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("job", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_jobs_are_valid(job):
    assert load_job(job).name


def test_defaults_and_overrides(tmp_path):
    job = load_job(_write(tmp_path, GOOD), ["learning_rate=3e-4", "dataset.image_size=[32,32]", "optimizer=sgd"])
    params = job.trial_params()
    assert params.learning_rate == 3e-4 and params.optimizer == "sgd" and params.depth == 3
    assert params.epochs == 20 and params.norm == "none"  # defaults filled in
    assert job.dataset.image_size == (32, 32)


@pytest.mark.parametrize(
    "text, needle",
    [
        (GOOD + "extra: 1\n", "extra: unknown key"),
        (GOOD.replace("model: unet", "model: resnet"), "model: Input should be 'unet' or 'fcn'"),
        (GOOD.replace("depth: 3", "depth: 9"), "params.depth: Input should be less than or equal to 6"),
        (GOOD.replace("depth: 3", "dpeth: 3"), "params.dpeth: unknown key"),
        (GOOD.replace("model: unet", "model: fcn").replace("depth: 3", "padding: valid"), "params.padding: unknown key"),
        (GOOD.replace("1.0e-3", "-1"), "params.learning_rate: Input should be greater than 0"),
        (GOOD.replace("[64, 48]", "[64]"), "dataset.image_size"),
        (GOOD.replace("[64, 48]", "[2, 48]"), "dataset.image_size"),
        (GOOD.replace("path: data/x", "path: data/x, slice_axis: 3"), "dataset.slice_axis"),
        (GOOD.replace("path: data/x", "path: data/x, synthetic: ct"), "dataset.synthetic"),
        (GOOD.replace("name: t", "name: 'a b'"), "name: String should match pattern"),
        (GOOD.replace("name: t\n", ""), "name: Field required"),
        ("name: [unclosed\n", "invalid YAML"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_job_files_name_the_key(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(HpsearchError) as info:
        load_job(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert needle in message, message


def test_a_bare_override_key_is_a_top_level_key_if_it_is_one_else_a_hyperparameter(tmp_path):
    job = load_job(_write(tmp_path, GOOD), ["name=renamed", "search_space=other.yaml", "model=fcn", "dropout=0.25"])
    assert (job.name, job.search_space.name, job.model) == ("renamed", "other.yaml", "fcn")
    assert job.params["dropout"] == 0.25 and "name" not in job.params


def test_bad_overrides(tmp_path):
    path = _write(tmp_path, GOOD)
    with pytest.raises(HpsearchError, match="expected KEY=VALUE"):
        load_job(path, ["learning_rate"])
    with pytest.raises(HpsearchError, match="params.batch_size"):
        load_job(path, ["batch_size=zero"])


def test_missing_file(tmp_path):
    with pytest.raises(HpsearchError, match="file not found"):
        load_job(tmp_path / "nope.yaml")


def test_validating_jobs_and_driving_a_search_do_not_import_tensorflow():
    # The search driver validates files and talks to Ray and MLflow; TensorFlow (3 s,
    # 0.7 GB) belongs in the trials only.
    code = (
        "import sys, hpsearch.search.driver, hpsearch.spec, hpsearch.space, hpsearch.models;"
        "hpsearch.spec.load_job(sys.argv[1]);"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'"
    )
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "jobs" / "demo.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1500:]


@pytest.mark.parametrize("job_file", sorted(Path("jobs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_job_round_trips_through_the_state_it_is_stored_in(job_file):
    # A search's state stores the whole job with its defaults; reading it back must not
    # refuse a default (e.g. dataset.spacing: auto in slice mode) as if the user had set it.
    job = load_job(job_file)
    assert Job.model_validate(job.model_dump(mode="json")) == job


def test_patch_mode_takes_the_plans_batch_size_unless_the_job_sets_one():
    job = load_job("jobs/brats-3d.yaml")
    info = {"plan": {"batch_size": 5}}
    assert job.params_for(info)["batch_size"] == 2  # the job sets it
    unset = load_job("jobs/brats-3d.yaml", overrides=[])
    unset = unset.model_copy(update={"params": {k: v for k, v in unset.params.items() if k != "batch_size"}})
    assert unset.params_for(info)["batch_size"] == 5
    assert "batch_size" not in unset.params_for({})  # slice mode: the trainer's default
