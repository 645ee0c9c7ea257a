"""``hpsearch export``: the best trial's best checkpoint as a self-describing model.

Reads ``results.json`` of a finished search (the best trial and its best checkpoint),
writes ``model.keras`` + ``hpsearch-model.json`` through :func:`hpsearch.export.export_model`,
and with ``register`` adds a version to the MLflow Model Registry linked to the trial's
child run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hpsearch.errors import HpsearchError
from hpsearch.export import export_model
from hpsearch.search.results import read_results
from hpsearch.search.tuner import read_search_state


def export_best(
    experiment_dir: Path, out: Path, *, register: str | None = None, echo: Callable[[str], None] = print
) -> Path:
    """Export the best trial of a finished search into the new folder ``out``."""
    experiment_dir = Path(experiment_dir)
    state = read_search_state(experiment_dir)
    results = read_results(experiment_dir)
    best = results.get("best")
    if not best or best["status"] == "failed" or not best.get("checkpoint"):
        raise HpsearchError(f"{experiment_dir}: no trial finished with a checkpoint; nothing to export")
    checkpoint = Path(best["checkpoint"])
    if not checkpoint.is_dir():
        raise HpsearchError(
            f"{checkpoint}: the best checkpoint is missing (storage moved or cleaned?); "
            "export needs the experiment folder as the search left it"
        )
    import mlflow

    client = mlflow.MlflowClient(state["tracking_uri"])
    run_id = _child_run_id(client, state["parent_run_id"], best["trial_id"])
    extra = {
        "trial_id": best["trial_id"],
        "experiment_dir": str(experiment_dir.resolve()),
        "search_metric": {results["metric"]: best["best_value"]},
        "mlflow": {"tracking_uri": state["tracking_uri"], "parent_run_id": state["parent_run_id"], "run_id": run_id},
        "fingerprint": state["data_info"].get("fingerprint"),
    }
    path = export_model(checkpoint, out, data_info=state["data_info"], extra=extra)
    echo(f"best trial {best['trial_id']}: {results['metric']} {best['best_value']:.4f} (epoch {best['best_epoch']})")
    if register:
        if run_id is None:
            raise HpsearchError(f"--register {register}: the trial's MLflow run was not found in {state['tracking_uri']}")
        client.log_artifacts(run_id, str(path), artifact_path="model")
        try:
            client.create_registered_model(register)
        except mlflow.exceptions.MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        version = client.create_model_version(register, source=source, run_id=run_id,
                                              description=f"hpsearch best trial {best['trial_id']}")
        echo(f"registered {register} version {version.version} (run {run_id})")
    return path


def _child_run_id(client, parent_run_id: str, trial_id: str) -> str | None:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`hpsearch.trial_id` = '{trial_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
