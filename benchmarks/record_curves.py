"""Record a learning-curve table (issue #12): the full curves of sampled configurations of
a search space on a task, for replaying searches in seconds.

Run from the repository root:

    .venv/bin/python benchmarks/record_curves.py --job jobs/demo.yaml --configs 200 --workers 2 \\
        --set dataset.path=/tmp/curves/lv --set dataset.image_size=[48,48] --out benchmarks/curves/lv-unet.npz
    .venv/bin/python benchmarks/record_curves.py --from-mlflow results/demo-lv-20261123-101500 --out t.npz
    .venv/bin/python benchmarks/record_curves.py --smoke-test

An interrupted recording continues where it stopped when run again with the same
arguments (``<out>.partial.jsonl`` holds the finished configurations).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, default=REPO / "jobs" / "demo.yaml")
    parser.add_argument("--space", type=Path, help="search space YAML (default: the job's search_space)")
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes, 1 thread each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", choices=("random", "qmc"), default="random")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a job value, as `hpsearch run --set`")
    parser.add_argument("--out", type=Path, help="the table (.npz)")
    parser.add_argument("--from-mlflow", type=Path, metavar="EXPERIMENT_DIR",
                        help="build the table from a finished search's MLflow runs instead")
    parser.add_argument("--smoke-test", action="store_true", help="3 configurations x 2 epochs on tiny data")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hpsearch.errors import HpsearchError

    try:
        table = _smoke(args) if args.smoke_test else _run(args)
    except HpsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _summary(table, args.out)
    return 0


def _run(args: argparse.Namespace):
    from hpsearch.curves.record import record_curves, table_from_mlflow
    from hpsearch.errors import HpsearchError
    from hpsearch.space import load_space
    from hpsearch.spec import load_job

    if args.out is None:
        raise HpsearchError("--out: missing; name the table's .npz, e.g. benchmarks/curves/lv-unet.npz")
    if args.from_mlflow:
        table = table_from_mlflow(args.from_mlflow)
        return table.save(args.out) and table
    job = load_job(args.job, args.overrides)
    space_file = args.space or job.search_space
    if space_file is None:
        raise HpsearchError(f"{args.job}: search_space: missing; pass --space")
    space = load_space(space_file, job.family)
    meta = {"job_file": str(args.job), "overrides": args.overrides, "space_file": str(space_file)}
    return record_curves(job, space, configs=args.configs, seed=args.seed, workers=args.workers, out=args.out,
                         sampler=args.sampler, meta=meta,
                         on_row=_progress)


def _progress(row: int, record: dict) -> None:
    dice = np.asarray(record["val_dice"], dtype=float)
    best = np.nanmax(dice) if np.isfinite(dice).any() else float("nan")
    print(f"config {row}: best val_dice {best:.4f} in {record['seconds']:.0f}s {record['failure'] or ''}", flush=True)


def _smoke(args: argparse.Namespace):
    work = Path(tempfile.mkdtemp(prefix="hpsearch-curves-smoke-"))
    os.environ["HPSEARCH_CACHE_DIR"] = str(work / "cache")
    args.overrides = [f"dataset.path={work / 'lv'}", "dataset.synthetic_cases=6", "dataset.image_size=[32,32]",
                      "scheduler.max_epochs=2", *args.overrides]
    args.configs, args.out = 3, args.out or work / "smoke.npz"
    started = time.perf_counter()
    table = _run(args)
    print(f"smoke test: {len(table)} configurations x {table.max_epochs} epochs in {time.perf_counter() - started:.1f}s")
    return table


def _summary(table, out: Path) -> None:
    dice = table.val_dice
    failed = int(np.isnan(dice[:, -1]).sum())
    size = out.stat().st_size if out and out.exists() else 0
    print(f"{out}: {len(table)} configurations x {table.max_epochs} epochs, {size:,} bytes; best val Dice "
          f"{table.best():.4f}; {failed} curves end early; {table.meta.get('seconds', '?')} s")


if __name__ == "__main__":
    sys.exit(main())
