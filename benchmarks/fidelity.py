"""Does training a trial's first epochs cheaper (``scheduler.fidelity``) lower the compute a search needs?

Issue #12, section 4. Input: learning-curve tables of the same configurations on the same data
and machine (``benchmarks/record_curves.py`` with the same arguments), one recorded at full
fidelity and others with ``--set scheduler.fidelity.resolution=0.5`` and/or
``...case_fraction=0.5``. For each table:

* **without a search**: the cost of the first-rung epochs (recorded seconds of a curve's
  first ``grace_period`` epochs, median over configurations), and how well the first rung
  ranks configurations: Spearman's rank correlation between val Dice after those epochs and
  the configuration's best val Dice in the full-fidelity table (what ASHA's first decision
  rests on);
* **replayed searches** with the default strategy (TPE + ASHA, ``jobs/demo.yaml``) over N
  seeds: compute in recorded training seconds (a low-fidelity epoch costs what it cost when
  recorded), summed over all trials in arrival order, until the best val Dice found reaches
  99% of the full-fidelity table's best; median [interquartile range], searches that never
  reach it count their whole compute and are reported as "not reached".

All figures are replayed validation Dice (a selection metric) on the data the tables were
recorded on. Run from the repository root:

    .venv/bin/python benchmarks/fidelity.py benchmarks/curves/lv64-full.npz benchmarks/curves/lv64-res50.npz ...
    .venv/bin/python benchmarks/fidelity.py --smoke-test     # seconds: synthetic tables, 2 seeds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpsearch.curves import CurveTable, synthetic_table  # noqa: E402
from hpsearch.curves.simulate import replay_search  # noqa: E402
from hpsearch.files import read_yaml  # noqa: E402
from hpsearch.space import parse_space  # noqa: E402
from hpsearch.spec import load_job  # noqa: E402
from search_efficiency import _best_so_far as best_so_far  # noqa: E402  (this folder is on sys.path)

JOB = REPO / "jobs" / "demo.yaml"
TARGET = 0.99


def rung_figures(table: CurveTable, full: CurveTable, rung: int) -> dict:
    """The first rung's cost and how well it ranks configurations (no search needed)."""
    from scipy.stats import spearmanr

    final = np.nanmax(full.val_dice, axis=1)
    at_rung = table.val_dice[:, rung - 1]
    ok = np.isfinite(at_rung) & np.isfinite(final)
    return {"rung_seconds_median": float(np.nanmedian(table.epoch_seconds[:, :rung].sum(axis=1))),
            "curve_seconds_median": float(np.nanmedian(np.nansum(table.epoch_seconds, axis=1))),
            "rung_rank_correlation": float(spearmanr(at_rung[ok], final[ok]).statistic),
            "best": float(table.best())}


def replayed(table: CurveTable, target: float, seeds: int, work: Path, uri: str, overrides: list[str],
             time_scale: float) -> dict:
    """The default strategy's compute, in recorded seconds, to ``target`` val Dice, per seed."""
    space_raw = dict(table.space)
    searches = []
    for seed in range(seeds):
        job = load_job(JOB, [*overrides, f"search.seed={seed}", f"tracking.experiment=fidelity-{table.name}"])
        space = parse_space(space_raw, job.family, f"table {table.name}")
        storage = work / "ray" / f"{table.name}-{seed}"
        search = replay_search(table, job, space, storage=storage, tracking_uri=uri,
                               name=f"{table.name}-seed{seed}", time_scale=time_scale)
        shutil.rmtree(storage, ignore_errors=True)
        seconds = np.cumsum([table.epoch_seconds[a.row, a.epoch - 1] if a.row is not None else 0.0
                             for a in search.arrivals])
        found = best_so_far([a.val_dice for a in search.arrivals])
        reached = np.flatnonzero(found >= target)
        searches.append({"seed": seed, "epochs": len(found), "seconds": float(seconds[-1]),
                         "seconds_to_target": float(seconds[reached[0]]) if reached.size else None,
                         "best_found": float(found[-1])})
        print(f"  {table.name} seed {seed}: {len(found)} epochs, {seconds[-1]:.0f} s, best {found[-1]:.4f}, "
              f"to target: {searches[-1]['seconds_to_target']}", flush=True)
    compute = np.array([s["seconds_to_target"] or s["seconds"] for s in searches])
    q1, median, q3 = np.percentile(compute, [25, 50, 75])
    return {"searches": searches, "seconds_to_target_median": float(median), "iqr": [float(q1), float(q3)],
            "not_reached": sum(s["seconds_to_target"] is None for s in searches),
            "epochs_median": float(np.median([s["epochs"] for s in searches])),
            "best_found_median": float(np.median([s["best_found"] for s in searches]))}


def _label(table: CurveTable) -> str:
    fidelity = (table.meta.get("recording_key") or {}).get("fidelity")
    if not fidelity:
        return "full fidelity"
    parts = [f"{k} {v:g}" for k, v in fidelity.items() if k in ("resolution", "case_fraction") and v < 1]
    return f"{', '.join(parts)} for {fidelity['epochs']} epoch(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", type=Path, help="the full-fidelity table first, then the others")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--time-scale", type=float, default=0.002, help="seconds slept per recorded epoch second")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every search")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--smoke-test", action="store_true", help="two synthetic tables, 2 seeds")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.smoke_test:
        space = {**read_yaml(REPO / "search_spaces" / "unet.yaml"), "epochs": {"type": "int", "low": 3, "high": 6}}
        full = synthetic_table(space, rows=30, max_epochs=6, seed=0)
        cheap = CurveTable("cheap", full.space, full.configs, val_dice=full.val_dice, val_loss=full.val_loss,
                           epoch_seconds=full.epoch_seconds * np.r_[[0.25], np.ones(5)],
                           meta={"recording_key": {"fidelity": {"resolution": 0.5, "case_fraction": 1.0, "epochs": 1}}})
        tables, args.seeds = [full, cheap], 2
        args.set = ["scheduler.max_epochs=6", "scheduler.grace_period=1", "search.num_trials=4", *args.set]
    else:
        if len(args.tables) < 2:
            raise SystemExit("give the full-fidelity table and at least one low-fidelity table of the same configurations")
        tables = [CurveTable.load(p) for p in args.tables]
        if any(t.configs != tables[0].configs for t in tables[1:]):
            raise SystemExit("the tables hold different configurations; record them with the same arguments")
    full = tables[0]
    if not args.smoke_test:  # trials train at most as long as the curves were recorded
        args.set = [f"scheduler.max_epochs={full.max_epochs}", *args.set]
    rung = load_job(JOB, args.set).scheduler.grace_period
    target = TARGET * full.best()

    import ray

    from hpsearch.search.local_ray import init_ray

    started = time.perf_counter()
    init_ray(None)
    work = Path(tempfile.mkdtemp(prefix="fidelity-"))
    report = {"seeds": args.seeds, "rung": rung, "target": target, "overrides": args.set, "tables": []}
    try:
        for table in tables:
            entry = {"table": table.name, "fidelity": _label(table), **rung_figures(table, full, rung),
                     **replayed(table, target, args.seeds, work, f"sqlite:///{work}/mlflow.db", args.set,
                                args.time_scale)}
            report["tables"].append(entry)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    report["wall_seconds"] = time.perf_counter() - started
    reference = report["tables"][0]["seconds_to_target_median"]
    print(f"\nTPE + ASHA (jobs/demo.yaml), {args.seeds} seeds; target {TARGET:.0%} of the full-fidelity best "
          f"({full.best():.4f}); first rung after {rung} epoch(s); replayed val Dice (a selection metric)")
    print("| table | trained | first-rung seconds (median) | rank correlation at the rung | "
          "seconds to target (median [IQR]) | ratio | not reached | best found (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for e in report["tables"]:
        print(f"| {e['table']} | {e['fidelity']} | {e['rung_seconds_median']:.1f} | {e['rung_rank_correlation']:.2f} | "
              f"{e['seconds_to_target_median']:.0f} [{e['iqr'][0]:.0f}-{e['iqr'][1]:.0f}] | "
              f"{e['seconds_to_target_median'] / reference:.2f}x | {e['not_reached']}/{args.seeds} | "
              f"{e['best_found_median']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(f"{report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
