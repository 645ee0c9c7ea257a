"""Fractional GPUs through Ray's logical GPU resources (this machine has no GPU).

Ray is started with one *logical* GPU; two trials asking for 0.5 each must run side by
side on it, each told by Ray which device is theirs. TensorFlow then finds no physical
device and trains on the CPU, the path a GPU-less developer machine takes.
"""

from __future__ import annotations

import json

import pytest
import ray

from hpsearch.search.driver import run_search

JOB = """\
name: gpu
dataset: {{path: {data}, image_size: [32, 32], val_fraction: 0.25}}
model: unet
params: {{epochs: 3, depth: 1, base_filters: 4, batch_size: 8}}
runtime: {{gpu_memory_growth: true}}
search_space: space.yaml
search: {{sampler: random, num_trials: 2, max_concurrent: 2, seed: 0, dashboard: false}}
scheduler: {{type: none, max_epochs: 3}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 0.5}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results
"""


@pytest.fixture(scope="module")
def ray_with_logical_gpu():
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def test_half_gpu_trials_share_one_device(ray_with_logical_gpu, lv_small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text("learning_rate: {type: loguniform, low: 1.0e-3, high: 1.0e-2}\n")
    (tmp_path / "job.yaml").write_text(JOB.format(data=lv_small))
    experiment = run_search(tmp_path / "job.yaml", echo=lambda line: None)
    results = json.loads((experiment / "results.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["completed", "completed"]
    spans = []
    for trial in experiment.glob("trial_*"):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        spans.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]))
    (a_start, a_end), (b_start, b_end) = spans
    assert a_start < b_end and b_start < a_end, "0.5-GPU trials should run at the same time"
