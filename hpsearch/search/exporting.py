"""``hpsearch export``: the best trial's best checkpoint as a self-describing model.

Asks the :class:`~hpsearch.experiment.Experiment` for the finished search's best trial and
its best checkpoint, writes ``model.keras`` + ``hpsearch-model.json`` through
:func:`hpsearch.export.export_model`, and with ``register`` adds a version to the MLflow
Model Registry linked to the trial's child run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment
from hpsearch.outcome import Outcome


def export_best(
    experiment_dir: Path, out: Path, *, register: str | None = None, echo: Callable[[str], None] = print
) -> Path:
    """Export the best trial of a finished search into the new folder ``out``."""
    from hpsearch.data.guard import refuse_inside

    experiment = Experiment.open(experiment_dir)
    refuse_inside(Path(out), Path(experiment.state.job["dataset"]["path"]), "--out")
    results = experiment.results()
    best = results.get("best")
    if not best or not Outcome.parse(best.get("status")).scored or not best.get("checkpoint"):
        raise HpsearchError(f"{experiment.path}: no trial finished with a checkpoint; nothing to export")
    checkpoint = Path(best["checkpoint"])
    if not checkpoint.is_dir():
        raise HpsearchError(
            f"{checkpoint}: the best checkpoint is missing (storage moved or cleaned?); "
            "export needs the experiment folder as the search left it"
        )
    from hpsearch.export import export_model
    from hpsearch.trainer import STATE_FILE

    runs, state = experiment.runs, experiment.state
    child = runs.child(best["trial_id"])
    run_id = child.info.run_id if child else None
    try:  # which dataset content the checkpoint saw: the search's, or one accepted on resume
        trained_on = json.loads((checkpoint / STATE_FILE).read_text()).get("data_digest", "")
    except (OSError, ValueError):
        trained_on = ""  # export_model names the incomplete checkpoint
    extra = {
        "trial_id": best["trial_id"],
        "experiment_dir": str(experiment.path),
        "search_metric": {results["metric"]: best["best_value"]},
        "mlflow": {"tracking_uri": state.tracking_uri, "parent_run_id": state.parent_run_id, "run_id": run_id},
        "fingerprint": state.data_info.get("fingerprint"),
    }
    path = export_model(checkpoint, out, data_info=experiment.data_info_for(trained_on), extra=extra)
    echo(f"best trial {best['trial_id']}: {results['metric']} {best['best_value']:.4f} (epoch {best['best_epoch']})")
    if register:
        if run_id is None:
            raise HpsearchError(f"--register {register}: the trial's MLflow run was not found in {state.tracking_uri}")
        version = runs.register_model(register, run_id, path, f"hpsearch best trial {best['trial_id']}")
        echo(f"registered {register} version {version} (run {run_id})")
    return path
