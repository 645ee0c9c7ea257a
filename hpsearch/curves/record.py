"""Recording learning-curve tables: train sampled configurations to the end, or read a
finished search's curves back from MLflow.

:func:`record_curves` samples ``configs`` configurations of a search space (Optuna's
seeded random or quasi-random sampler over the same distributions a search uses) and
trains each with hpsearch's own :class:`~hpsearch.trainer.Trainer` for the search's
``scheduler.max_epochs``, in ``workers`` processes of one TensorFlow thread each. A
configuration's ``epochs`` is recorded but not trained to: the learning-rate schedule
(``ExponentialDecay`` on ``optimizer.iterations``) counts optimizer steps, so a run of
``epochs`` epochs is the first ``epochs`` epochs of the full curve and the replay cuts it
there (:meth:`CurveTable.curve`).

Every finished configuration is appended to ``<out>.partial.jsonl`` as it ends; a
recording run again with the same job, space, seed and epochs continues from there, and
one with more ``configs`` extends a finished table (the first ``k`` of ``n`` sampled
configurations are the same).

Example:
    >>> table = record_curves(job, space, configs=200, seed=0, workers=2,
    ...                       out=Path("benchmarks/curves/lv-unet.npz"))       # doctest: +SKIP
    >>> table.best()                                                           # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import gc
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpsearch.curves.table import CURVE_KEYS, CurveTable
from hpsearch.errors import HpsearchError, first_line
from hpsearch.failures import RECURRING, failure_kind
from hpsearch.space import split_config, to_optuna

SAMPLERS = ("random", "qmc")


def sample_configs(space: dict[str, Any], configs: int, seed: int, sampler: str = "random") -> list[dict[str, Any]]:
    """``configs`` configurations of ``space`` (:func:`hpsearch.space.load_space` output),
    drawn by Optuna's seeded ``random`` or ``qmc`` (scrambled Sobol) sampler; the first
    ``k`` of ``n`` are the ``k`` drawn with the same seed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler not in SAMPLERS:
        raise HpsearchError(f"sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    chosen = (optuna.samplers.RandomSampler(seed=seed) if sampler == "random"
              else optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False))
    study = optuna.create_study(sampler=chosen)
    distributions = to_optuna(space)
    out = []
    for _ in range(configs):
        trial = study.ask(distributions)
        out.append({name: _plain(trial.params[name]) for name in distributions})
        study.tell(trial, 0.0)  # QMC numbers its points by finished trials
    return out


def record_curves(job, space: dict[str, Any], *, configs: int, seed: int, workers: int, out: Path,
                  sampler: str = "random", name: str | None = None, meta: dict[str, Any] | None = None,
                  on_row: Callable[[int, dict[str, Any]], None] | None = None) -> CurveTable:
    """Train ``configs`` sampled configurations to ``job.scheduler.max_epochs`` and save their curves.

    Args:
        job: The task (:class:`hpsearch.spec.Job`): data, model, base ``params``, ``augment``.
        space: The search space (:func:`hpsearch.space.load_space`).
        configs, seed, sampler: How many configurations, drawn how (:func:`sample_configs`).
        workers: Parallel training processes, one TensorFlow thread each.
        out: The table's ``.npz``; ``<out>.partial.jsonl`` beside it keeps finished rows. A
            table already there, recorded the same way, is extended (its rows are kept).
        name: The table's name (default: ``out``'s stem).
        meta: Extra ``meta`` entries (the command, the dataset's description).
        on_row: Called with (row, record) after each configuration is saved.

    Returns:
        The table, also written to ``out``.

    Raises:
        HpsearchError: ``out`` or the partial file belongs to another recording, or a
            configuration failed in a way that is not its own (a bug, a lost process).
    """
    out = Path(out)
    if workers < 1 or configs < 1:
        raise HpsearchError(f"configs {configs}, workers {workers}: both must be at least 1")
    from hpsearch.data.guard import refuse_inside

    refuse_inside(out, job.dataset.path, "--out")
    started = time.perf_counter()
    max_epochs = job.scheduler.max_epochs
    plain_space = {k: d.model_dump() for k, d in space.items()}
    sampled = sample_configs(space, configs, seed, sampler)
    key = {"space": plain_space, "seed": seed, "sampler": sampler, "max_epochs": max_epochs,
           "model": job.model, "params": job.params, "dataset": job.dataset.model_dump(mode="json"),
           **({"fidelity": job.scheduler.fidelity.model_dump()} if job.scheduler.fidelity else {})}
    partial = out.with_name(out.name + ".partial.jsonl")
    done = {**_read_table(out, key, sampled), **_read_partial(partial, key, sampled)}
    data, _ = job.load_data()  # generated and cached here once, so workers only read the cache
    todo = [row for row in range(configs) if row not in done]
    if todo:
        _train_rows(job, sampled, todo, max_epochs, workers, partial, key, done, on_row)
    curves = {k: np.array([done[row][k] for row in range(configs)], dtype=np.float64) for k in CURVE_KEYS}
    failures: dict[str, int] = {}
    for row in range(configs):
        if done[row].get("failure"):
            failures[done[row]["failure"]] = failures.get(done[row]["failure"], 0) + 1
    fold = data.info["splits"]["folds"][0]
    info = {**_machine(), "task": job.name, "model": job.model, "max_epochs": max_epochs, "configs": configs,
            "seed": seed, "sampler": sampler, "workers": workers, "classes": list(data.class_names),
            "dataset": job.dataset.model_dump(mode="json"), "train_cases": len(fold["train"]),
            "val_cases": len(fold["val"]), "test_cases": len(data.info["splits"]["test"]), "failures": failures,
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "seconds": round(time.perf_counter() - started, 1),
            "resumed_rows": configs - len(todo),
            "train_seconds": round(sum(done[r]["seconds"] for r in range(configs)), 1),
            "recording_key": key, "rows": [{k: done[r][k] for k in _ROW_META} for r in range(configs)], **(meta or {})}
    table = CurveTable(name or out.stem, plain_space, sampled, meta=info, **curves)
    table.save(out)
    return table


_ROW_META = ("failure", "error", "seconds")  # per-row facts kept in meta, so a table can be extended


def _read_table(out: Path, key: dict[str, Any], sampled: list[dict[str, Any]]) -> dict[int, dict]:
    """Rows of an earlier table at ``out`` recorded with the same ``key``: recording more
    configurations extends it (the first ``k`` of ``n`` sampled are the same)."""
    if not out.exists():
        return {}
    table = CurveTable.load(out)
    if table.meta.get("recording_key") != json.loads(json.dumps(key)):
        raise HpsearchError(f"{out}: exists, recorded with another job, space, seed or max_epochs; "
                            "choose another --out or delete it to record again")
    if len(table) > len(sampled):
        raise HpsearchError(f"{out}: holds {len(table)} configurations; record at least that many (--configs) "
                            "or choose another --out")
    done = {}
    for row, config in enumerate(table.configs[:len(sampled)]):
        if config == json.loads(json.dumps(sampled[row])):
            done[row] = {"row": row, "config": config, **table.meta["rows"][row],
                         **{k: getattr(table, k)[row].tolist() for k in CURVE_KEYS}}
    return done


def _read_partial(partial: Path, key: dict[str, Any], sampled: list[dict[str, Any]]) -> dict[int, dict]:
    """Finished rows of an earlier, interrupted recording of the same ``key``."""
    if not partial.is_file():
        return {}
    lines = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("key") != json.loads(json.dumps(key)):
        raise HpsearchError(f"{partial}: partial recording of another job, space, seed or max_epochs; "
                            "delete it or choose another --out")
    done = {}
    for record in lines[1:]:
        row = record["row"]
        if row < len(sampled) and record["config"] == json.loads(json.dumps(sampled[row])):
            done[row] = record
    return done


def _train_rows(job, sampled, todo, max_epochs, workers, partial, key, done, on_row) -> None:
    if not partial.is_file():
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"key": key}) + "\n")
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(job,))
    try:
        futures = {pool.submit(_train_one, sampled[row], max_epochs): row for row in todo}
        for future in cf.as_completed(futures):
            row = futures[future]
            record = {"row": row, "config": sampled[row], **future.result()}
            with partial.open("a") as f:  # only this process writes it: whole lines, in order of finishing
                f.write(json.dumps(record) + "\n")
            done[row] = record
            if on_row:
                on_row(row, record)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def table_from_mlflow(experiment_dir: Path, name: str | None = None) -> CurveTable:
    """The curves of a finished search's trials, as MLflow holds them (one row per child run).

    A trial stopped early or failed has a shorter curve (NaN after); rows are in the
    order the trials started.

    Args:
        experiment_dir: The search's experiment folder (``results/<job>-<stamp>``).
        name: The table's name (default: the search's name).

    Raises:
        HpsearchError: Not an experiment folder, MLflow unreachable, or no trial with a curve.
    """
    from mlflow.tracking import MlflowClient

    from hpsearch.dashboard.collect import collect_search

    search = collect_search(Path(experiment_dir))
    trials = [t for t in search.trials if t.epochs]
    if not trials:
        raise HpsearchError(f"{experiment_dir}: no trial logged an epoch in MLflow; let the search run first")
    max_epochs = int(search.scheduler.get("max_epochs") or max(max(t.epochs) for t in trials))
    client = MlflowClient(tracking_uri=search.tracking_uri)
    curves = {k: np.full((len(trials), max_epochs), np.nan) for k in CURVE_KEYS}
    for row, trial in enumerate(trials):
        # collect_search holds the search metric and epoch seconds; val_dice (if the search
        # optimised something else) and val_loss come from the run's own histories.
        dice = dict(zip(trial.epochs, trial.values)) if search.metric == "val_dice" else _history(client, trial.run_id, "val_dice")
        per_key = {"val_dice": dice, "val_loss": _history(client, trial.run_id, "val_loss"),
                   "epoch_seconds": dict(zip(trial.epochs, trial.epoch_seconds))}
        for key, values in per_key.items():
            for epoch, value in values.items():
                if 1 <= epoch <= max_epochs:  # MLflow steps are 1-based epochs
                    curves[key][row, epoch - 1] = value
    configs = [dict(t.params) for t in trials]
    meta = {**_machine(), "source": "mlflow", "experiment_dir": str(Path(experiment_dir).resolve()),
            "tracking_uri": search.tracking_uri, "search": search.name, "task": search.job.get("name"),
            "model": search.model, "sampler": search.sampler, "scheduler": search.scheduler,
            "max_epochs": max_epochs, "dataset": search.job.get("dataset"), "classes": search.class_names,
            "statuses": [t.status for t in trials], "date": dt.datetime.now().isoformat(timespec="seconds")}
    space = {k: d.model_dump() for k, d in search.space.items()}
    return CurveTable(name or search.name, space, configs, meta=meta, **curves)


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {int(m.step): float(m.value) for m in client.get_metric_history(run_id, key)}


# -- in the worker processes -------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _start_worker(job) -> None:
    from hpsearch.runtime import RuntimeConfig, configure_tensorflow, quiet_tensorflow

    quiet_tensorflow()
    _exit_with_parent(os.getppid())
    runtime = job.runtime.model_copy(update={"intra_op_threads": 1, "inter_op_threads": 1})
    configure_tensorflow(RuntimeConfig(**runtime.model_dump()))
    _WORKER.update(job=job, runtime=runtime, data=job.load_data()[0])


def _exit_with_parent(parent: int) -> None:
    """End this worker when the recording process is gone (killed, not interrupted): a pool
    worker would otherwise train on as an orphan."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _train_one(config: dict[str, Any], max_epochs: int) -> dict[str, Any]:
    """One configuration's curves, NaN from a failure (diverged, does not fit) on."""
    import keras

    from hpsearch.models.footprint import check_fits
    from hpsearch.runtime import trial_memory_bytes
    from hpsearch.trainer import Trainer

    job, runtime, data = _WORKER["job"], _WORKER["runtime"], _WORKER["data"]
    curves = {k: [math.nan] * max_epochs for k in CURVE_KEYS}
    record: dict[str, Any] = {"failure": None, "error": ""}
    keras.backend.clear_session()  # free the previous configuration's graph
    gc.collect()
    started = time.perf_counter()
    trainer = None
    try:
        params, augment = split_config(config)
        # `epochs` is the search's cap, not the sampled one (see the module docstring).
        params = {**job.params_for(data.info), **params, "epochs": max_epochs}
        trainer = Trainer(data, job.model, params, seed=runtime.seed, augment={**job.augment.model_dump(), **augment},
                          workers=runtime.loader_workers, fidelity=job.scheduler.fidelity)
        check_fits(trainer.model, trainer.train_params.batch_size, trial_memory_bytes(runtime, 1, 0))
        for epoch in range(max_epochs):
            result = trainer.train_epoch()
            curves["val_dice"][epoch] = result.val_dice
            curves["val_loss"][epoch] = result.val_loss
            curves["epoch_seconds"][epoch] = result.seconds
    except Exception as exc:
        kind = failure_kind(exc)
        if kind not in RECURRING:
            raise HpsearchError(f"configuration {config}: {first_line(exc, 300)}") from None
        record.update(failure=kind, error=first_line(exc, 300))
    finally:
        if trainer is not None:
            trainer.close()
    return {**record, **curves, "seconds": round(time.perf_counter() - started, 2)}


# -- helpers --------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _machine() -> dict[str, Any]:
    """Where a table was recorded: its epoch seconds only compare on the same machine."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {"machine": {"cores": os.cpu_count(), "cpu": model or platform.processor(), "host": platform.node(),
                        "python": platform.python_version()}}
