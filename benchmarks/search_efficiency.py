"""How much compute each search strategy needs to find a good model, replayed from learning-curve tables.

Every search goes through the real machinery: ``build_tuner`` (Tuner, OptunaSearch or BOHB,
ConcurrencyLimiter, ASHA/Hyperband), the real MLflowTracker into one real MLflow sqlite store,
and ``results.summarise``; only the epochs are answered from a table
(:mod:`hpsearch.curves.replay`). The job is ``jobs/demo.yaml`` (16 trials, 2 at a time, TPE,
ASHA grace 2, reduction 3, 20 epochs) with each strategy's overrides; the search space is the
table's own. Per strategy and table, over ``--seeds`` seeds:

* compute (epochs summed over all trials, in the order results arrived) until the best
  val Dice found reaches 99% of the table's best; a search that never does counts its total
  compute and is reported as "not reached k/N"; median, IQR, and the ratio to random search
  without early stopping (the reference);
* the best val Dice found within fixed budgets (40, 80, 160 epochs), median;
* total epochs, and the wall time of one search.

Outputs ``benchmarks/results/search_efficiency.{json,md,png}`` (the plot: median regret,
table best minus best found, against compute), and keeps each finished search in
``search_efficiency.progress.jsonl`` there, so an interrupted run goes on where it stopped
(keyed by table, strategy, overrides and time scale, not by hpsearch's code: delete the file
after changing the searchers or schedulers).
Run from the repository root:

    .venv/bin/python benchmarks/search_efficiency.py benchmarks/curves/lv-unet.npz benchmarks/curves/brats-unet.npz
    .venv/bin/python benchmarks/search_efficiency.py --synthetic            # a parametric table, no recording needed
    .venv/bin/python benchmarks/search_efficiency.py --smoke-test           # seconds: 2 strategies x 2 seeds
"""

from __future__ import annotations

import argparse
import importlib.util
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

from hpsearch.curves import CAP_PARAMS, CurveTable, synthetic_table  # noqa: E402
from hpsearch.curves.simulate import replay_search  # noqa: E402
from hpsearch.files import read_yaml  # noqa: E402
from hpsearch.space import parse_space  # noqa: E402
from hpsearch.spec import load_job  # noqa: E402

JOB = REPO / "jobs" / "demo.yaml"
REFERENCE = "random, no early stopping"
BUDGETS = (40, 80, 160)
TARGET = 0.99
# The default, its study first filled with the ended trials of a finished default search with
# another seed (what `search.warm_start` does); that earlier search's compute is not counted.
WARM = "TPE + ASHA, warm start from another seed's search"
# name -> (job overrides, whether the space keeps `epochs`). The first four and Hyperband/BOHB are
# the usual alternatives; "TPE + ASHA (default)" is jobs/demo.yaml's strategy on the table's space
# as recorded (with `epochs`); since session 10 the shipped spaces do not sample `epochs`, so
# today's default is the "epochs not sampled" row. The rest are proposals.
STRATEGIES: dict[str, tuple[list[str], bool]] = {
    REFERENCE: (["search.sampler=random", "scheduler.type=none"], True),
    "random + ASHA": (["search.sampler=random"], True),
    "TPE, no early stopping": (["scheduler.type=none"], True),
    "TPE + ASHA (default)": ([], True),
    "Hyperband (random)": (["search.sampler=random", "scheduler.type=hyperband"], True),
    "BOHB": (["scheduler.type=bohb"], True),
    "TPE + ASHA, epochs not sampled": ([], False),
    "TPE + ASHA, grace 5": (["scheduler.grace_period=5"], True),
    "TPE + ASHA, 32 trials": (["search.num_trials=32"], True),
    "TPE + ASHA, 8 start-up trials": (["search.startup_trials=8"], True),
    "TPE + ASHA, stopped told pruned": (["search.stopped_trials=pruned"], True),
    "TPE + ASHA, epochs not sampled, grace 5, 32 trials": (["scheduler.grace_period=5", "search.num_trials=32"], False),
    WARM: ([], True),
}
SMOKE = [REFERENCE, "TPE + ASHA (default)"]
# Drawn bold: the reference, the strategy of jobs/demo.yaml on the recorded space, and today's default.
HIGHLIGHT = (REFERENCE, "TPE + ASHA (default)", "TPE + ASHA, epochs not sampled")


def run_strategy(table: CurveTable, name: str, seeds: int, work: Path, uri: str, time_scale: float,
                 extra: list[str], cpus_per_trial: float, progress: Path | None = None) -> dict:
    """Every seed of one strategy on one table; the per-search measures and their summary.

    Each finished search is appended to ``progress`` (JSON lines), and a search found there
    is not run again: a long benchmark interrupted goes on where it stopped.
    """
    overrides, keep_epochs = STRATEGIES[name]
    space_raw = {k: v for k, v in table.space.items() if keep_epochs or k not in CAP_PARAMS}
    done = _finished_searches(progress, table.name, name, [*overrides, *extra], time_scale)
    searches = []
    for seed in range(seeds):
        if seed in done:
            searches.append(done[seed])
            continue
        job = load_job(JOB, [*overrides, *extra, f"search.seed={seed}", f"resources.cpus_per_trial={cpus_per_trial}",
                             f"tracking.experiment=search-efficiency-{table.name}"])
        space = parse_space(space_raw, job.family, f"table {table.name}")
        storage = work / "ray" / f"{_slug(name)}-{seed}"
        study = _warm_study(table, job, space, work, uri, seed, time_scale) if name == WARM else None
        search = replay_search(table, job, space, storage=storage, tracking_uri=uri,
                               name=f"{table.name}-{_slug(name)}-seed{seed}", time_scale=time_scale, study=study)
        shutil.rmtree(storage, ignore_errors=True)  # checkpoints: not needed once the search ended
        found = _best_so_far([a.val_dice for a in search.arrivals])
        reached = np.flatnonzero(found >= TARGET * table.best())
        searches.append({"seed": seed, "seconds": search.seconds, "total_epochs": len(found),
                         "compute_to_target": int(reached[0]) + 1 if reached.size else None,
                         "best_found": float(found[-1]) if found.size else None, "best_so_far": found.tolist()})
        if progress is not None:
            with progress.open("a") as out:
                out.write(json.dumps({"table": table.name, "strategy": name, "overrides": [*overrides, *extra],
                                      "time_scale": time_scale, **searches[-1]}) + "\n")
        print(f"  {table.name} | {name} | seed {seed}: {len(found)} epochs, best {searches[-1]['best_found']:.4f}, "
              f"to {TARGET:.0%}: {searches[-1]['compute_to_target']}, {search.seconds:.1f} s", flush=True)
    return {"searches": searches, **_summary(searches, table.best())}


def _finished_searches(progress: Path | None, table: str, name: str, overrides: list[str],
                       time_scale: float) -> dict[int, dict]:
    """The searches of this table, strategy and settings that ``progress`` holds, by seed."""
    if progress is None or not progress.exists():
        return {}
    found = {}
    for line in progress.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interruption
            continue
        if (entry.pop("table"), entry.pop("strategy"), entry.pop("overrides"), entry.pop("time_scale")) == (
                table, name, overrides, time_scale):
            found[entry["seed"]] = entry
    return found


def _warm_study(table: CurveTable, job, space: dict, work: Path, uri: str, seed: int, time_scale: float) -> dict:
    """A study holding the ended trials of a default search with seed ``seed + 1000``."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(work / f"warm-{table.name}-{seed}.journal")))
    prior = {"storage": storage, "study_name": "prior"}
    earlier = job.model_copy(update={"search": job.search.model_copy(update={"seed": seed + 1000})})
    replay_search(table, earlier, space, storage=work / "ray" / f"prior-{seed}", tracking_uri=uri,
                  name=f"{table.name}-prior-seed{seed}", time_scale=time_scale, study=prior)
    shutil.rmtree(work / "ray" / f"prior-{seed}", ignore_errors=True)
    ended = optuna.load_study(**prior).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    warm = optuna.create_study(storage=storage, study_name="warm", direction="maximize" if job.search.mode == "max"
                               else "minimize")
    warm.add_trials([optuna.trial.create_trial(
        state=t.state, value=t.value if t.state is TrialState.COMPLETE else None, params=t.params,
        distributions=t.distributions, intermediate_values=t.intermediate_values) for t in ended])
    return {"storage": storage, "study_name": "warm"}


def oracle_epochs(table: CurveTable) -> int | None:
    """The least compute any search could need: the fewest epochs in which one recorded
    configuration reaches the target (a search that knew the table would train only that one)."""
    reached = table.val_dice >= TARGET * table.best()  # NaN (a curve ended) compares False
    firsts = [int(np.argmax(row)) + 1 for row in reached if row.any()]
    return min(firsts) if firsts else None


def _best_so_far(values: list[float]) -> np.ndarray:
    finite = np.where(np.isfinite(values), values, -np.inf)
    return np.maximum.accumulate(finite) if finite.size else finite


def _summary(searches: list[dict], best: float) -> dict:
    compute = np.array([s["compute_to_target"] or s["total_epochs"] for s in searches], dtype=float)
    q1, median, q3 = np.percentile(compute, [25, 50, 75])
    # A search that stops early and never reaches the target must not look cheap: with
    # "not reached" as never, the median is finite only if more than half the searches reach it.
    never = np.array([s["compute_to_target"] or np.inf for s in searches], dtype=float)
    censored = float(np.median(never)) if len(never) else np.inf
    at = {}
    for budget in BUDGETS:
        values = [s["best_so_far"][min(budget, len(s["best_so_far"])) - 1] for s in searches if s["best_so_far"]]
        at[str(budget)] = float(np.median(values)) if values else None
    return {"compute_median": float(median), "compute_iqr": [float(q1), float(q3)],
            "compute_median_unreached_never": censored if np.isfinite(censored) else None,
            "not_reached": sum(s["compute_to_target"] is None for s in searches), "seeds": len(searches),
            "best_at_budget": at, "total_epochs_median": float(np.median([s["total_epochs"] for s in searches])),
            "best_found_median": float(np.median([s["best_found"] or 0.0 for s in searches])),
            "seconds_per_search_median": float(np.median([s["seconds"] for s in searches]))}


def regret_curve(searches: list[dict], best: float, horizon: int) -> np.ndarray:
    """Median over seeds of (table best - best found) after 1..horizon epochs of compute."""
    rows = []
    for s in searches:
        found = np.array(s["best_so_far"] or [0.0])
        padded = np.concatenate([found, np.full(max(0, horizon - len(found)), found[-1])])[:horizon]
        rows.append(best - np.where(np.isfinite(padded), padded, 0.0))
    return np.median(np.array(rows), axis=0)


def write_outputs(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_efficiency.json").write_text(json.dumps(report, indent=1))
    lines = [f"# Search efficiency (replayed learning curves)\n",
             f"{report['seeds']} seeds per strategy; compute = epochs summed over all trials in arrival order; "
             f"target = {TARGET:.0%} of the table's best val Dice; ratio = median compute / the reference's "
             f"({REFERENCE}). Wall time: {report['wall_seconds']:.0f} s for the whole run.\n"]
    for table in report["tables"]:
        reaching = table.get("rows_reaching_target")
        hard = f"; {reaching} of them reach the target at some epoch" if reaching is not None else ""
        if (oracle := table.get("oracle_epochs")) and (ref := table["strategies"].get(REFERENCE, {}).get("compute_median")):
            hard += f"; the fastest reaches it in {oracle} epochs ({oracle / ref:.2f}x the reference)"
        lines += [f"## {table['name']} (best val Dice {table['best']:.4f}, {table['rows']} configurations{hard})\n",
                  "| strategy | compute to 99% (median [IQR]) | ratio | not reached | median, not reached = never | "
                  + " | ".join(f"best @{b}" for b in BUDGETS) + " | total epochs | s/search |",
                  "|---|---|---|---|---|" + "---|" * len(BUDGETS) + "---|---|"]
        reference = table["strategies"].get(REFERENCE, {}).get("compute_median")
        for name, r in table["strategies"].items():
            if "skipped" in r:
                lines.append(f"| {name} | skipped: {r['skipped']} |")
                continue
            ratio = f"{r['compute_median'] / reference:.2f}x" if reference else "-"
            at = " | ".join("-" if r["best_at_budget"][str(b)] is None else f"{r['best_at_budget'][str(b)]:.4f}"
                            for b in BUDGETS)
            lines.append(f"| {name} | {r['compute_median']:.0f} [{r['compute_iqr'][0]:.0f}-{r['compute_iqr'][1]:.0f}] "
                         f"| {ratio} | {r['not_reached']}/{r['seeds']} | {_never(r)} | {at} | {r['total_epochs_median']:.0f} "
                         f"| {r['seconds_per_search_median']:.1f} |")
        lines.append("")
    (out / "search_efficiency.md").write_text("\n".join(lines))
    _plot(report, out / "search_efficiency.png")


def _never(summary: dict) -> str:
    """The censored median of a strategy's summary, as the report shows it."""
    value = summary.get("compute_median_unreached_never")
    return "never (half or more miss it)" if value is None else f"{value:.0f}"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = report["tables"]
    fig, axes = plt.subplots(1, len(tables), figsize=(7 * len(tables), 4.5), squeeze=False)
    for ax, table in zip(axes[0], tables):
        ran = {n: r for n, r in table["strategies"].items() if "skipped" not in r}
        horizon = max(max(s["total_epochs"] for s in r["searches"]) for r in ran.values())
        for i, (name, r) in enumerate(ran.items()):
            ax.plot(np.arange(1, horizon + 1), regret_curve(r["searches"], table["best"], horizon), label=name,
                    lw=2.5 if name in HIGHLIGHT else 1.2, ls="-" if i < 10 else "--")
        ax.axhline((1 - TARGET) * table["best"], color="grey", ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="compute (epochs, all trials)", ylabel="median regret (val Dice)",
               title=f"{table['name']} ({report['seeds']} seeds)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", type=Path, help="learning-curve tables (.npz, benchmarks/record_curves.py)")
    parser.add_argument("--synthetic", action="store_true", help="add a parametric table on search_spaces/unet.yaml")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--strategies", help="names separated by ';' (default: all)")
    parser.add_argument("--time-scale", type=float, default=0.002, help="seconds slept per recorded epoch second")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every search")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--progress", type=Path, help="JSON lines of finished searches: appended to, and searches "
                        "found there are not run again (default: OUT/search_efficiency.progress.jsonl)")
    parser.add_argument("--smoke-test", action="store_true", help="2 strategies x 2 seeds on a small table")
    args = parser.parse_args()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no per-search configuration boxes
    logging.getLogger("ray").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = read_yaml(REPO / "search_spaces" / "unet.yaml")
    names = [n.strip() for n in args.strategies.split(";")] if args.strategies else list(STRATEGIES)
    tables = [CurveTable.load(p) for p in args.tables]
    if args.smoke_test:
        names, args.seeds = SMOKE, 2
        args.set = ["scheduler.max_epochs=6", "scheduler.grace_period=1", "search.num_trials=4", *args.set]
        tables = [synthetic_table({**space, "epochs": {"type": "int", "low": 3, "high": 6}}, rows=30, max_epochs=6)]
        args.out = Path(tempfile.mkdtemp(prefix="search-efficiency-smoke-"))
    elif args.synthetic or not tables:
        tables.append(synthetic_table(space, rows=300, max_epochs=20, seed=0))
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise SystemExit(f"--strategies: unknown {unknown}; choose from {list(STRATEGIES)}")

    args.out.mkdir(parents=True, exist_ok=True)
    progress = args.progress or args.out / "search_efficiency.progress.jsonl"

    import ray

    from hpsearch.search.local_ray import init_ray

    started = time.perf_counter()
    init_ray(None)
    concurrent = load_job(JOB, args.set).search.max_concurrent
    cpus_per_trial = ray.cluster_resources()["CPU"] / concurrent  # Hyperband's concurrency is Ray's CPUs
    work = Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    uri = f"sqlite:///{work}/mlflow.db"
    have_bohb = all(importlib.util.find_spec(m) for m in ("hpbandster", "ConfigSpace"))
    report = {"seeds": args.seeds, "time_scale": args.time_scale, "overrides": args.set, "tables": []}
    try:
        for table in tables:
            entry = {"name": table.name, "best": table.best(), "rows": len(table), "meta": table.meta, "strategies": {},
                     # how hard the target is: a search must find one of these configurations
                     "rows_reaching_target": int((np.nanmax(table.val_dice, axis=1) >= TARGET * table.best()).sum()),
                     "oracle_epochs": oracle_epochs(table)}
            for name in names:
                if name == "BOHB" and not have_bohb:
                    print("BOHB skipped: hpbandster and ConfigSpace are not installed (pip install 'hpsearch[bench]')")
                    entry["strategies"][name] = {"skipped": "hpbandster/ConfigSpace not installed"}
                    continue
                entry["strategies"][name] = run_strategy(table, name, args.seeds, work, uri, args.time_scale,
                                                         args.set, cpus_per_trial, progress)
            report["tables"].append(entry)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    report["wall_seconds"] = time.perf_counter() - started
    write_outputs(report, args.out)
    print((args.out / "search_efficiency.md").read_text())
    print(f"wrote {args.out}/search_efficiency.{{json,md,png}} in {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
