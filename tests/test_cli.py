"""The `hpsearch` command as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from helpers import alive, free_port, snapshot

EXE = Path(sys.executable).with_name("hpsearch")
COMMAND = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "hpsearch.cli"]


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def errors(result) -> list[str]:
    """stderr lines hpsearch wrote (TensorFlow's start-up chatter filtered out)."""
    return [line for line in result.stderr.splitlines() if line.startswith("hpsearch:")]


def test_data_check_prints_fingerprint(lv_small):
    result = run("data", "check", lv_small)
    assert result.returncode == 0, result.stderr
    assert "cases       8" in result.stdout and "no defects found" in result.stdout


def test_data_check_broken_dataset_exits_2_with_one_line_per_defect(lv_small, tmp_path):
    root = shutil.copytree(lv_small, tmp_path / "broken")
    (root / "labelsTr" / "lv_003.nii.gz").unlink()
    truncated = root / "imagesTr" / "lv_005.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:300])
    before = snapshot(root)
    result = run("data", "check", root)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = errors(result)
    assert len(lines) == 3, lines
    assert any("lv_003.nii.gz: file is missing" in line for line in lines)
    assert any("lv_005.nii.gz: unreadable or truncated" in line for line in lines)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["data", "check", "/nonexistent/ds"], "dataset folder not found"),
        (["train", "/nonexistent/job.yaml"], "file not found"),
    ],
)
def test_missing_inputs_are_one_line(args, needle):
    result = run(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(errors(result)) == 1 and needle in errors(result)[0]


def test_synth_refuses_to_overwrite(tmp_path):
    out = tmp_path / "lv"
    assert run("data", "synth", "--kind", "lv", "--cases", "2", "--out", out).returncode == 0
    before = snapshot(out)
    again = run("data", "synth", "--kind", "lv", "--cases", "3", "--out", out)
    assert again.returncode == 2 and "already exists" in errors(again)[0]
    assert snapshot(out) == before


JOB = """\
name: tiny
dataset: {path: data/tiny-lv, synthetic: lv, synthetic_cases: 6, image_size: [32, 32]}
model: unet
params: {epochs: 3, depth: 2, base_filters: 4, batch_size: 4}
runtime: {intra_op_threads: 1, inter_op_threads: 1}
"""


def test_train_end_to_end(tmp_path):
    (tmp_path / "job.yaml").write_text(JOB)
    result = run("train", "job.yaml", "--set", "epochs=2", "--set", "learning_rate=3e-3", "--out", "state", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "preprocessed" in out and "epoch   1" in out and "epoch   2" in out and "epoch   3" not in out
    assert "learning_rate=0.003" in out and "best epoch" in out
    assert (tmp_path / "data" / "tiny-lv" / "dataset.json").is_file()  # generated on first use
    assert (tmp_path / "state" / "trainer_state.json").is_file()


def test_train_bad_job_and_bad_dataset_exit_2(tmp_path, lv_small):
    (tmp_path / "job.yaml").write_text(JOB.replace("depth: 2", "depth: 0"))
    result = run("train", "job.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert errors(result) == ["hpsearch: error: job.yaml: params.depth: Input should be greater than or equal to 1 (got 0)"]

    root = shutil.copytree(lv_small, tmp_path / "broken")
    (root / "labelsTr" / "lv_002.nii.gz").unlink()
    (tmp_path / "job.yaml").write_text(JOB.replace("path: data/tiny-lv, synthetic: lv", f"path: {root}"))
    result = run("train", "job.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(errors(result)) == 1 and "lv_002.nii.gz: file is missing" in errors(result)[0]


SEARCH = JOB + "search_space: space.yaml\nsearch: {num_trials: 2}\nscheduler: {max_epochs: 3, grace_period: 1}\n"


@pytest.mark.parametrize(
    "space, needle",
    [
        ("depth: {type: int, low: 2, high: 9}\n", "space.yaml: depth: value 9 is out of range for 'unet'"),
        ("lr: {type: uniform, low: 0.1, high: 0.2}\n", "space.yaml: lr: not a hyperparameter of model 'unet'"),
        ("learning_rate: {type: loguniform, low: 0, high: 0.1}\n", "a log scale needs low > 0"),
    ],
)
def test_run_refuses_bad_search_space_before_ray_starts(tmp_path, space, needle):
    (tmp_path / "job.yaml").write_text(SEARCH)
    (tmp_path / "space.yaml").write_text(space)
    result = run("run", "job.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(errors(result)) == 1 and needle in errors(result)[0], errors(result)
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_run_refuses_unreachable_tracking_server(tmp_path):
    (tmp_path / "job.yaml").write_text(SEARCH + "tracking: {uri: 'http://127.0.0.1:9'}\n")
    (tmp_path / "space.yaml").write_text("learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    result = run("run", "job.yaml", "--set", "dataset.path=nowhere", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tracking.uri http://127.0.0.1:9: MLflow is not reachable" in errors(result)[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["resume", "."], "not an hpsearch experiment folder"),
        (["export", ".", "--out", "m"], "not an hpsearch experiment folder"),
        (["predict", "nomodel", "x.nii.gz", "y.nii.gz"], "nomodel"),
    ],
)
def test_search_commands_on_wrong_folders(tmp_path, args, needle):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert needle in errors(result)[0], errors(result)


def _start_ui(spawn, folder: Path, *args) -> tuple[subprocess.Popen, int]:
    """`hpsearch ui` on a free port, returned once its page answers."""
    port = free_port()
    proc = spawn([*COMMAND, "ui", *args, "--port", port], cwd=folder,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = next(line for line in proc.stdout if line.startswith("MLflow UI"))
    assert f"http://127.0.0.1:{port}" in first
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                assert response.status == 200
                return proc, port
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "MLflow UI did not come up"
            time.sleep(1)


def test_ui_serves_the_job_store_on_loopback(tmp_path, spawn):
    (tmp_path / "job.yaml").write_text(SEARCH)
    proc, port = _start_ui(spawn, tmp_path, "job.yaml")
    assert (tmp_path / "mlflow.db").is_file()
    listening = {c.laddr for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                 for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", port)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ui_stopped_by_its_pid_leaves_no_process(tmp_path, spawn, sig):
    # `hpsearch ui` runs `mlflow server`, which runs uvicorn workers (and in MLflow 3 a job
    # runner with its consumers): a signal to hpsearch's pid alone must stop all of them.
    proc, _ = _start_ui(spawn, tmp_path, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    time.sleep(3)  # MLflow's job runner, when on, starts its consumers after the server
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert tree, "the UI runs in child processes"
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=30) == 128 + sig
    _, survivors = psutil.wait_procs(tree, timeout=15)
    assert not alive(survivors), [p.cmdline()[:4] for p in alive(survivors)]


def test_ui_costs_one_server_process(tmp_path, spawn):
    # No MLflow job runner (Huey consumers) and one worker: hpsearch uses neither.
    proc, _ = _start_ui(spawn, tmp_path, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    time.sleep(3)
    commands = [" ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(recursive=True)]
    assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands
    assert len(commands) <= 2, commands  # `mlflow server` and its uvicorn


@pytest.mark.parametrize(
    "uri, needle",
    [
        ("gopher://x", "--tracking-uri gopher://x: unsupported tracking URI scheme 'gopher'; use sqlite:///"),
        ("file:///tmp/mlruns", "a folder (file store) is not a tracking store MLflow 3 opens"),
        ("mlruns", "a folder (file store) is not a tracking store MLflow 3 opens"),
        ("mlflow.db", "a plain path; a SQLite store is named sqlite:///"),
    ],
)
def test_ui_refuses_unusable_tracking_uris_in_one_line(tmp_path, uri, needle):
    result = run("ui", "--tracking-uri", uri, "--port", free_port(), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == errors(result) and len(errors(result)) == 1, result.stderr
    assert needle in errors(result)[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, line",
    [
        (["export", "/nonexistent", "--out", "x"], "hpsearch: error: /nonexistent: no such folder"),
        (["predict", "/nonexistent", "a.nii.gz", "b.nii.gz"],
         "hpsearch: error: /nonexistent/hpsearch-model.json: missing; not a model folder"),
    ],
)
def test_export_and_predict_errors_are_one_line_without_tensorflow_chatter(tmp_path, args, line):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(line), result.stderr
    assert list(tmp_path.iterdir()) == []


def _single_case(root):
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["training"] = manifest["training"][:1]
    (root / "dataset.json").write_text(json.dumps(manifest))


def test_data_check_and_train_agree_on_declaration_defects(lv_small, tmp_path):
    root = shutil.copytree(lv_small, tmp_path / "one-case")
    _single_case(root)
    checked = run("data", "check", root)
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    defect = (
        f"{root / 'dataset.json'}: the dataset has 1 usable case; "
        "a train/validation split by case needs at least 2"
    )
    assert errors(checked)[0].startswith(f"hpsearch: defect: {defect}"), errors(checked)
    (tmp_path / "job.yaml").write_text(JOB.replace("path: data/tiny-lv, synthetic: lv", f"path: {root}"))
    trained = run("train", "job.yaml", cwd=tmp_path)
    assert trained.returncode == 2 and "Traceback" not in trained.stderr
    assert errors(trained) == [errors(checked)[0].replace("hpsearch: defect:", "hpsearch: error:")]


@pytest.mark.parametrize(
    "break_it, needle",
    [
        (lambda root: (root / "dataset.json").write_text(
            (root / "dataset.json").read_text().replace('"./imagesTr/lv_000.nii.gz"', "5")),
         "dataset.json: training[0].image: must be a file path relative to the dataset folder"),
        (lambda root: (root / "dataset.json").write_text(
            (root / "dataset.json").read_text().replace("./imagesTr/lv_001.nii.gz", "../../lv_001.nii.gz")),
         "dataset.json: training[1].image: '../../lv_001.nii.gz' resolves to"),
    ],
)
def test_bad_dataset_entries_are_one_line(lv_small, tmp_path, break_it, needle):
    root = shutil.copytree(lv_small, tmp_path / "ds")
    break_it(root)
    result = run("data", "check", root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert needle in errors(result)[0], errors(result)


def test_data_check_on_a_file(lv_small):
    result = run("data", "check", lv_small / "dataset.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert errors(result) == [
        f"hpsearch: error: {lv_small / 'dataset.json'}: is a file, not a folder; "
        "the dataset path must name the folder holding dataset.json"
    ]


def test_train_out_inside_the_dataset_is_refused_before_training(lv_small, tmp_path):
    root = shutil.copytree(lv_small, tmp_path / "ds")
    (tmp_path / "job.yaml").write_text(JOB.replace("path: data/tiny-lv, synthetic: lv", f"path: {root}"))
    before = snapshot(root)
    result = run("train", "job.yaml", "--out", root / "state", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert errors(result) == [
        f"hpsearch: error: --out {root / 'state'}: inside the dataset folder {root}; "
        "hpsearch never writes there, choose another folder"
    ]
    assert snapshot(root) == before and "data:" not in result.stdout


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip().startswith("hpsearch 0.")
