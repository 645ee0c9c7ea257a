"""A resumed search trains on the folds it started with, or refuses in one line."""

from __future__ import annotations

import json

import pytest

from hpsearch.data.cache import digest_of_files
from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment, SearchState
from hpsearch.search.driver import _search_files, resume_search
from hpsearch.spec import load_job
from hpsearch.tracking.runs import start_search_run

JOB = """\
name: cv
dataset: {{path: {data}, image_size: [32, 32], folds: 2, groups_file: {groups}}}
model: unet
params: {{epochs: 1, depth: 2, base_filters: 4}}
tracking: {{uri: sqlite:///{tmp}/mlflow.db}}
storage: {tmp}/results
"""


def test_resume_refuses_folds_that_changed_since_the_search_started(lv_small, tmp_path):
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (lv_small / "labelsTr").glob("*.nii.gz"))
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({case: case for case in cases}))  # every case its own patient
    (tmp_path / "job.yaml").write_text(JOB.format(data=lv_small, groups=groups, tmp=tmp_path))
    job = load_job(tmp_path / "job.yaml")
    folds, _ = job.load_search_data()
    files = _search_files(job)
    uri = job.tracking.uri
    parent = start_search_run(uri, "cv", run_name="cv-20261202-101500", params={}, tags={})
    folder = Experiment.claim_folder(tmp_path / "results", "cv-20261202-101500")
    Experiment.create(folder, SearchState(job=job.model_dump(mode="json"), tracking_uri=uri, parent_run_id=parent,
                                          dataset_digest=digest_of_files(files), dataset_files=files,
                                          data_info=folds[0].info), {})
    before = (folder / "hpsearch-search.json").read_text()

    # Same data, other patients: pairs of cases now belong together, so the folds differ.
    groups.write_text(json.dumps({case: f"p{i // 2}" for i, case in enumerate(cases)}))
    with pytest.raises(HpsearchError, match=r"splits differ from those the search started with"):
        resume_search(folder, echo=lambda line: None)
    assert (folder / "hpsearch-search.json").read_text() == before
