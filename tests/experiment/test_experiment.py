"""The Experiment: folders claimed atomically, typed state, damaged files, changed datasets.

Real files, real threads; the MLflow side is exercised by the search tests.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hpsearch.cli import main
from hpsearch.data import read_index
from hpsearch.data.cache import cached_file_digests, digest_of_files
from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment, SearchState, base_name, read_state
from hpsearch.outcome import SearchStatus

STATE = {"job": {"name": "x", "dataset": {"path": "/data/x"}, "model": "unet"}, "tracking_uri": "sqlite:////tmp/m.db",
         "parent_run_id": "abc123"}


def _experiment(tmp_path: Path, **state) -> Experiment:
    folder = Experiment.claim_folder(tmp_path / "results", "x-20261202-101500")
    return Experiment.create(folder, SearchState.model_validate({**STATE, **state}), {})


def test_searches_started_in_the_same_second_get_their_own_folders(tmp_path):
    name = base_name("demo", dt.datetime(2026, 12, 2, 10, 15, 0))
    start, claimed = threading.Barrier(8), []

    def claim():
        start.wait()
        claimed.append(Experiment.claim_folder(tmp_path, name))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == 8
    assert sorted(p.name for p in claimed) == sorted([name] + [f"{name}-{n}" for n in range(2, 9)])


def test_state_round_trip_and_status(tmp_path):
    experiment = _experiment(tmp_path, dataset_digest="d1")
    experiment.set_status(SearchStatus.INTERRUPTED)
    again = Experiment.open(experiment.path)
    assert again.status is SearchStatus.INTERRUPTED and again.name == "x-20261202-101500"
    assert again.state.created and again.state.parent_run_id == "abc123"
    with pytest.raises(HpsearchError, match="the search was interrupted; run `hpsearch resume"):
        again.results()


def test_a_session_one_state_file_still_opens(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "hpsearch-search.json").write_text(json.dumps({**STATE, "data_info": {"digest": "d0"}}))
    state = read_state(folder)
    assert state.dataset_digest == "d0" and state.name == "old" and state.status is SearchStatus.RUNNING


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "damaged (not JSON"),
        (json.dumps({**STATE, "parent_run_id": ""}), "damaged (parent_run_id: String should have at least 1"),
        (json.dumps({"job": {}}), "damaged (tracking_uri: Field required)"),
        ("[]", "damaged ((top level): Input should be a valid dictionary"),
    ],
)
@pytest.mark.parametrize("command", [["export", "{dir}", "--out", "{out}"], ["resume", "{dir}"],
                                     ["dashboard", "{dir}"]])
def test_a_damaged_state_file_is_one_line(tmp_path, capsys, text, needle, command):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "hpsearch-search.json").write_text(text)
    before = (folder / "hpsearch-search.json").read_bytes()
    args = [part.format(dir=folder, out=tmp_path / "model") for part in command]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"hpsearch: error: {folder / 'hpsearch-search.json'}: {needle}"), line
    assert (folder / "hpsearch-search.json").read_bytes() == before and not (tmp_path / "model").exists()


def test_a_changed_dataset_is_named_file_by_file(tmp_path, lv_small):
    import shutil

    data = shutil.copytree(lv_small, tmp_path / "lv")
    cache = tmp_path / "cache"
    cache.mkdir()
    files = cached_file_digests(read_index(data), cache)
    experiment = _experiment(tmp_path, dataset_digest=digest_of_files(files), dataset_files=files)
    assert experiment.check_dataset(digest_of_files(files), files) == []

    label = data / "labelsTr" / "lv_003.nii.gz"
    raw = bytearray(label.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other content
    label.write_bytes(bytes(raw))
    changed = cached_file_digests(read_index(data), cache)
    with pytest.raises(HpsearchError) as refused:
        experiment.check_dataset(digest_of_files(changed), changed)
    assert "changed since the search started (labelsTr/lv_003.nii.gz)" in str(refused.value)
    assert "--accept-data-change" in str(refused.value)
    assert Experiment.open(experiment.path).state.dataset_digest == digest_of_files(files)


def test_reading_an_experiment_imports_no_ray_optuna_tensorflow_or_mlflow(tmp_path):
    experiment = _experiment(tmp_path)
    code = ("import sys; from hpsearch.experiment import Experiment; "
            f"e = Experiment.open({str(experiment.path)!r}); e.job; "
            "print(sorted(m for m in ('ray', 'optuna', 'tensorflow', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
