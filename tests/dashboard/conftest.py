"""Two real tiny searches, run once for all dashboard tests (local Ray, MLflow SQLite, Keras).

``tpe``: TPE + ASHA, 4 trials of 3 epochs (ASHA rungs at epochs 1 and 2).
``random``: random search without ASHA whose learning-rate choice 10.0 diverges (failed trials).
Each run ends by writing its dashboard, as every ``hpsearch run`` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from hpsearch.search.driver import run_search

JOB = """\
name: {name}
dataset: {{path: {data}, image_size: [32, 32], val_fraction: 0.25}}
model: unet
params: {{epochs: 3, depth: 2, base_filters: 8, batch_size: 4, learning_rate: 3.0e-3, decay_steps: 50{extra}}}
search_space: {space}
search: {{sampler: {sampler}, num_trials: 4, max_concurrent: 2, seed: 0, max_failures: 0}}
scheduler: {{type: {scheduler}, max_epochs: 3, grace_period: 1, reduction_factor: 2}}
resources: {{cpus_per_trial: 1}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results
"""
SPACES = {
    "tpe": "learning_rate: {type: loguniform, low: 3.0e-3, high: 3.0e-2}\nbase_filters: {type: choice, values: [4, 8]}\n",
    # A learning rate of 10 with leaky ReLU and plain cross-entropy drives the loss to NaN.
    "random": "learning_rate: {type: choice, values: [0.003, 10.0]}\nbase_filters: {type: choice, values: [4, 8]}\n",
}


@pytest.fixture(scope="session")
def searches(lv_small, tmp_path_factory) -> dict[str, Path]:
    """Experiment folders of the two searches, sharing one MLflow store (``mlflow.db``)."""
    root = tmp_path_factory.mktemp("dash-searches")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    out = {}
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)  # relative storage and tracking paths land in root
            for kind, scheduler in (("tpe", "asha"), ("random", "none")):
                (root / f"{kind}.yaml").write_text(SPACES[kind])
                job = root / f"{kind}-job.yaml"
                extra = ", activation: leaky_relu, loss: ce" if kind == "random" else ""
                job.write_text(JOB.format(name=f"dash-{kind}", data=lv_small, space=f"{kind}.yaml", sampler=kind,
                                          scheduler=scheduler, extra=extra))
                lines: list[str] = []
                out[kind] = run_search(job, echo=lines.append)
                (root / f"{kind}.log").write_text("\n".join(lines))
    finally:
        if started:
            ray.shutdown()
    return out
