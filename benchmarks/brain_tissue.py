"""Held-out Dice of a brain-tissue model, scored the way a user would score it.

The search's own ``val_dice`` is measured on what training sees (in slice mode: the
resized slices). What matters to a user is the Dice of ``hpsearch predict`` output on
scans nobody trained or validated on, in the scans' own geometry. This script measures
that, end to end, with the real commands as subprocesses:

1. generate the training data (the job's synthetic settings) and a SEPARATE held-out test
   set with another seed (``--test-seed``; or ``--test-data`` for a labelled MSD/nnU-Net
   folder), both under a fresh work folder;
2. ``hpsearch run JOB`` (or ``hpsearch train JOB --out`` with ``--train-only``) with its
   own cache dir, MLflow SQLite file and storage under the work folder; ``--timeout``
   stops it (by its process group) when the budget is spent;
3. ``hpsearch export`` of the best trial (``--train-only``: the trained state exported
   through :func:`hpsearch.export.export_model`);
4. ``hpsearch predict`` on the held-out scans;
5. per-class and mean foreground Dice of the predictions against the ground truth in
   the original geometry (:class:`hpsearch.metrics.DiceMetric`, per case then averaged),
   printed and written as JSON (``WORK/summary.json`` and ``--json-out``).

Every subprocess runs in its own process group and is stopped on error, timeout or
Ctrl-C. Run from the repository root, preferably niced on a shared machine:

    nice -n 10 .venv/bin/python benchmarks/brain_tissue.py                    # jobs/brain-slices.yaml
    nice -n 10 .venv/bin/python benchmarks/brain_tissue.py --set search.num_trials=4 --timeout 15
    .venv/bin/python benchmarks/brain_tissue.py --smoke-test                  # seconds, tiny cases
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a source tree

from hpsearch.data import read_index, synthesize  # noqa: E402
from hpsearch.metrics import DiceMetric  # noqa: E402
from hpsearch.processes import stop_group  # noqa: E402
from hpsearch.spec import load_job  # noqa: E402

# Tiny everything: checks the pipeline, not the model.
SMOKE_SHAPE = (48, 56, 8)
SMOKE_OVERRIDES = [
    "dataset.synthetic_cases=3", "dataset.image_size=[32,32]", "depth=2", "base_filters=4", "epochs=1",
    "search.num_trials=1", "search.max_concurrent=1", "scheduler.max_epochs=1", "scheduler.grace_period=1",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, default=REPO / "jobs" / "brain-slices.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to hpsearch run/train (e.g. search.num_trials=4); repeatable")
    parser.add_argument("--train-only", action="store_true", help="hpsearch train the job's params, no search")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="MIN",
                        help="wall-clock budget of the search/training in minutes (default 30)")
    parser.add_argument("--test-cases", type=int, help="held-out synthetic scans (default 4; smoke test 2)")
    parser.add_argument("--test-seed", type=int, help="seed of the held-out set (default: training seed + 1000)")
    parser.add_argument("--test-data", type=Path, help="a labelled MSD/nnU-Net folder to score on instead")
    parser.add_argument("--work", type=Path, help="new work folder (default: a fresh temporary one)")
    parser.add_argument("--json-out", type=Path, help="also write the summary here")
    parser.add_argument("--smoke-test", action="store_true", help="2-3 tiny cases, 1 epoch: seconds")
    args = parser.parse_args()

    work = (args.work or Path(tempfile.mkdtemp(prefix="hpsearch-brain-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        parser.error(f"--work {work}: not empty; give a new folder")
    smoke = [*SMOKE_OVERRIDES] if args.smoke_test else []
    if smoke and load_job(args.job).dataset.dims is not None:  # patch mode: tiny patches, few of them
        smoke += ["dataset.patch_size=[32, 32]", "dataset.samples_per_epoch=8"]
    overrides = smoke + args.overrides
    overrides += [
        f"dataset.path={work / 'data'}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        f"storage.path={work / 'results'}", "search.dashboard=false",
    ]
    job = load_job(args.job, overrides)
    env = dict(os.environ, HPSEARCH_CACHE_DIR=str(work / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    os.environ.update(HPSEARCH_CACHE_DIR=env["HPSEARCH_CACHE_DIR"])  # the --train-only export reads it
    shape = SMOKE_SHAPE if args.smoke_test else None
    times: dict[str, float] = {}
    started = time.perf_counter()

    # 1. Data: the training set as the job describes it, and a held-out set never trained on.
    ds = job.dataset
    if ds.synthetic:
        t = time.perf_counter()
        synthesize(ds.synthetic, ds.path, ds.synthetic_cases, ds.synthetic_seed, shape=shape)
        times["generate_train_s"] = time.perf_counter() - t
    if args.test_data is not None:
        test_root, test_seed = args.test_data.resolve(), None
    else:
        if not ds.synthetic:
            parser.error("the job's dataset is not synthetic: give --test-data with labelled held-out scans")
        test_seed = args.test_seed if args.test_seed is not None else ds.synthetic_seed + 1000
        if test_seed == ds.synthetic_seed:
            parser.error("--test-seed equals the training seed: the held-out scans would be the training scans")
        t = time.perf_counter()
        cases = args.test_cases or (2 if args.smoke_test else 4)
        test_root = synthesize(ds.synthetic, work / "test", cases, test_seed, shape=shape)
        times["generate_test_s"] = time.perf_counter() - t
    test = read_index(test_root)

    # 2.-3. Train (search or one configuration) within the budget, then export.
    hpsearch = [sys.executable, "-m", "hpsearch"]
    model_dir, budget_s = work / "model", args.timeout * 60
    t = time.perf_counter()
    if args.train_only:
        _run([*hpsearch, "train", str(args.job), "--out", str(work / "state"), *_sets(overrides)],
             work / "train.log", env, budget_s)
        times["train_s"] = time.perf_counter() - t
        _export_state(job, work / "state", model_dir)
    else:
        _run([*hpsearch, "run", str(args.job), *_sets(overrides)], work / "run.log", env, budget_s)
        times["search_s"] = time.perf_counter() - t
        (experiment,) = sorted((work / "results").glob(f"{job.name}-*/"))
        _run([*hpsearch, "export", str(experiment), "--out", str(model_dir)], work / "export.log", env, 600)
    times["train_and_export_s"] = time.perf_counter() - t

    # 4. Predict the held-out scans with the exported model, as a user would.
    t = time.perf_counter()
    images = {case.images[0].parent for case in test.cases}
    (image_dir,) = images  # one folder of scans (MSD imagesTr / nnU-Net imagesTr)
    _run([*hpsearch, "predict", str(model_dir), str(image_dir), str(work / "pred")], work / "predict.log", env, 1800)
    times["predict_s"] = time.perf_counter() - t

    # 5. Dice in the scans' own geometry.
    summary = {
        "job": str(args.job), "mode": "train" if args.train_only else "run", "overrides": overrides,
        "data": {"train": f"synthetic {ds.synthetic} seed {ds.synthetic_seed}" if ds.synthetic else str(ds.path),
                 "train_cases": len(read_index(ds.path).cases), "shape": list(shape) if shape else "default",
                 "test": f"held-out synthetic {ds.synthetic} seed {test_seed}" if test_seed is not None else str(test_root),
                 "test_cases": len(test.cases)},
        "budget": {"timeout_min": args.timeout, "num_trials": job.search.num_trials,
                   "max_epochs": job.scheduler.max_epochs, "epochs": job.trial_params().epochs,
                   "image_size": list(ds.image_size)},
        "exported": _exported_summary(model_dir),
        "held_out": _score(test, work / "pred"),
        "times_s": {k: round(v, 1) for k, v in {**times, "wall": time.perf_counter() - started}.items()},
        "work": str(work),
    }
    text = json.dumps(summary, indent=2)
    (work / "summary.json").write_text(text + "\n")
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)
    return 0


def _sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def _run(command: list[str], log: Path, env: dict, timeout_s: float) -> None:
    """Run a command in its own process group, output to ``log``; stop the group whatever happens.

    On timeout the group first gets SIGINT (a search saves its state and exits), then
    :func:`hpsearch.processes.stop_group` ends what is left; the run counts as failed.
    """
    print(f"$ {' '.join(command)}   (log: {log})", flush=True)
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGINT)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            raise SystemExit(f"{command[3]} did not finish within {timeout_s / 60:.1f} min (see {log}); "
                             "lower search.num_trials / scheduler.max_epochs or raise --timeout") from None
        finally:
            stop_group(child)  # also on Ctrl-C: no orphaned Ray or TensorFlow processes
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"{command[3]} failed with exit code {code}:\n" + "\n".join(tail))


def _export_state(job, state_dir: Path, model_dir: Path) -> None:
    """``--train-only``: export the trained state the way ``hpsearch export`` exports a trial."""
    from hpsearch.data import load_dataset
    from hpsearch.export import export_model

    data, _ = load_dataset(job.dataset)  # the cache entry `hpsearch train` just wrote
    export_model(state_dir, model_dir, data_info=data.info)


def _exported_summary(model_dir: Path) -> dict:
    from hpsearch.export import META_FILE

    meta = json.loads((model_dir / META_FILE).read_text())
    return {"model": meta["model"], "best_val_dice": meta.get("best_val_dice"), "best_epoch": meta.get("best_epoch"),
            "hyperparameters": meta.get("hyperparameters"), "preprocess": meta.get("preprocess")}


def _score(test, pred_dir: Path) -> dict:
    """Per-case, per-class Dice of the predicted label files against the ground truth."""
    import nibabel as nib
    import numpy as np

    lookup = np.zeros(max(test.label_values) + 1, dtype=np.int64)
    lookup[list(test.label_values)] = np.arange(len(test.label_values))  # label value -> class index
    metric, per_case = DiceMetric(num_classes=len(test.label_values)), {}
    for case in test.cases:
        truth = nib.load(case.label)
        pred = nib.load(pred_dir / f"{case.case_id}.nii.gz")
        if pred.shape != truth.shape or not np.allclose(pred.affine, truth.affine, atol=1e-3):
            raise SystemExit(f"{case.case_id}: prediction geometry {pred.shape} differs from the scan's {truth.shape}")
        dice = metric.update(lookup[np.asarray(pred.dataobj)], lookup[np.asarray(truth.dataobj)])
        per_case[case.case_id] = {n: round(float(d), 4) for n, d in zip(test.class_names[1:], dice[1:])}
    scores = metric.aggregate()
    return {"dice": {n: round(float(d), 4) for n, d in zip(test.class_names[1:], scores.dice[1:])},
            "mean_foreground_dice": round(scores.mean_dice, 4), "per_case": per_case}


if __name__ == "__main__":
    sys.exit(main())
