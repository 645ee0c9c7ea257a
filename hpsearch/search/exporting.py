"""``hpsearch export``: the best trial's best checkpoint as a self-describing model.

Asks the :class:`~hpsearch.experiment.Experiment` for the finished search's best trial and
its best checkpoint, writes ``model.keras`` + ``hpsearch-model.json`` through
:func:`hpsearch.export.export_model` (with ``ensemble``: the trial's k fold models through
:func:`hpsearch.ensemble.export_ensemble`), and with ``register`` adds a version to the
MLflow Model Registry linked to the trial's child run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from hpsearch.errors import HpsearchError
from hpsearch.experiment import Experiment
from hpsearch.outcome import Outcome


def export_best(
    experiment_dir: Path,
    out: Path,
    *,
    register: str | None = None,
    ensemble: bool = False,
    echo: Callable[[str], None] = print,
) -> Path:
    """Export the best trial of a finished search into the new folder ``out``.

    Args:
        experiment_dir: The experiment folder `hpsearch run` printed.
        out: The new export folder.
        register: Also add a version of this name to the MLflow Model Registry.
        ensemble: Export the best trial's cross-validation fold models as one ensemble
            (all folds must have finished) instead of its checkpoint's model.
        echo: Where progress lines go.

    Returns:
        ``out``.

    Raises:
        HpsearchError: No finished search or best checkpoint; with ``ensemble``, a search
            that did not cross-validate or a best trial with unfinished folds.
    """
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
    from hpsearch.ensemble import export_ensemble, fold_checkpoints
    from hpsearch.search.folds import FOLDS_FILE, fold_zero
    from hpsearch.export import META_FILE, export_model

    folds_file = checkpoint / FOLDS_FILE
    members = fold_checkpoints(checkpoint) if ensemble else [fold_zero(checkpoint)]
    runs, state = experiment.runs, experiment.state
    child = runs.child(best["trial_id"])
    run_id = child.info.run_id if child else None
    extra = {
        "trial_id": best["trial_id"],
        "experiment_dir": str(experiment.path),
        "search_metric": {results["metric"]: best["best_value"]},
        "mlflow": {"tracking_uri": state.tracking_uri, "parent_run_id": state.parent_run_id, "run_id": run_id},
        "fingerprint": state.data_info.get("fingerprint"),
        "regions": dict(experiment.job.dataset.regions),  # `hpsearch evaluate MODEL DATASET` scores them too
    }
    # Which dataset content each checkpoint saw: the search's, or one accepted on resume.
    infos = [experiment.data_info_for(_trained_on(member)) for member in members]
    if folds_file.is_file():  # each fold's own normalisation statistics (CT: fitted on its training cases)
        done = json.loads(folds_file.read_text()).get("done", [])
        intensity = {entry["dir"]: entry.get("intensity") for entry in done}
        infos = [{**info, "intensity": intensity[m.name]} if intensity.get(m.name) is not None else info
                 for info, m in zip(infos, members)]
    if ensemble:
        path = export_ensemble(members, out, data_info=infos, extra=extra)
    else:
        path = export_model(members[0], out, data_info=infos[0], extra=extra)
    where = f"over {best['folds']} fold(s)" if best.get("folds") else f"(epoch {best['best_epoch']})"
    echo(f"best trial {best['trial_id']}: {results['metric']} {best['best_value']:.4f} {where}")
    if ensemble:
        dice = json.loads((path / META_FILE).read_text())["ensemble"]["member_val_dice"]
        echo(f"ensemble of {len(members)} fold models (val_dice per fold: "
             f"{', '.join('-' if d is None else f'{d:.4f}' for d in dice)})")
    if register:
        if run_id is None:
            raise HpsearchError(f"--register {register}: the trial's MLflow run was not found in {state.tracking_uri}")
        description = f"hpsearch best trial {best['trial_id']}"
        description += f", ensemble of {len(members)} folds" if ensemble else ""
        version = runs.register_model(register, run_id, path, description)
        echo(f"registered {register} version {version} (run {run_id})")
    return path


def _trained_on(checkpoint: Path) -> str:
    """The dataset digest a checkpoint records ("" when unreadable: the export names the
    incomplete checkpoint)."""
    from hpsearch.trainer import STATE_FILE

    try:
        return json.loads((checkpoint / STATE_FILE).read_text()).get("data_digest", "")
    except (OSError, ValueError, AttributeError):
        return ""
