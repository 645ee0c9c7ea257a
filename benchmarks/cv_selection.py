"""Does choosing a configuration by cross-validation pick a better one than a single split?

Issue #11 asks, on a small dataset over several search seeds: how often the configuration
chosen with 5-fold cross-validation beats the one chosen on one train/validation split on a
locked test set, the mean test Dice and the validation-to-test optimism of each, and the
compute of a 5-fold fold-fidelity search against a single-split search of as many trials
(target: at most 2x). This script measures that end to end with the real commands:

1. a synthetic LV dataset (:func:`hpsearch.data.synthesize`) of ``--train-cases`` cases, and
   ``--test-cases`` more made with another generator seed, copied into its
   ``imagesTs/labelsTs`` (case ids ``lvtest_*``): the locked test split of every search;
2. for each seed ``s``: ``hpsearch run`` of a single-split search (``val_fraction 0.2``) and
   of a ``--folds``-fold fold-fidelity search, both with ``split_seed s``, sampler seed
   ``s``, weight-init seed ``s``, the same search space, trials and ASHA settings; each
   run ends with ``hpsearch evaluate`` of its chosen trial on the locked test split
   (``test_results.json``: for the cross-validated search the ensemble of its fold models
   when the chosen trial finished every fold);
3. so that the comparison is not only "ensemble vs single model", the cross-validated
   choice's fold-0 model alone: ``hpsearch export`` (fold 0) + ``hpsearch evaluate``;
4. per search: validation estimate of the chosen trial, its test Dice, optimism
   (estimate - test), epochs trained (sum of ``epochs_run`` over trials), wall seconds.

Printed as markdown tables and written to ``--out`` (``.json`` and ``.md``). Everything
else (data, cache, MLflow, results) goes under ``--work``. Run from the repository root:

    nice -n 10 .venv/bin/python benchmarks/cv_selection.py --out benchmarks/results/cv_selection
    .venv/bin/python benchmarks/cv_selection.py --smoke-test        # 1 seed, 2 trials, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a source tree

from hpsearch.data import synthesize  # noqa: E402
from hpsearch.processes import stop_group  # noqa: E402

# Ranges a 48x48 U-Net can show differences in within a few epochs; the learning rate matters.
SPACE = """\
learning_rate: {type: loguniform, low: 1.0e-4, high: 3.0e-2}
base_filters:  {type: choice, values: [8, 16]}
depth:         {type: int, low: 2, high: 3}
loss:          {type: choice, values: [dice, ce_dice]}
"""

JOB = """\
name: {name}
dataset: {{path: {data}, image_size: [{size}, {size}], val_fraction: 0.2, split_seed: {seed}{folds}}}
model: unet
params: {{epochs: {epochs}, depth: 2, base_filters: 8, batch_size: 8, learning_rate: 1.0e-3}}
runtime: {{intra_op_threads: 1, inter_op_threads: 1, seed: {seed}}}
search_space: space.yaml
search: {{sampler: tpe, num_trials: {trials}, max_concurrent: {concurrent}, seed: {seed}, dashboard: false}}
scheduler: {{type: asha, max_epochs: {epochs}, grace_period: {grace}, reduction_factor: {rf}}}
resources: {{cpus_per_trial: 1}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results-{name}
"""

HPSEARCH = [sys.executable, "-m", "hpsearch"]


def make_data(work: Path, train: int, test: int, size: int, depth: int) -> Path:
    """Training cases (generator seed 0) plus a labelled test split (seed 1000) in imagesTs/labelsTs."""
    shape = (size, size, depth)
    data = synthesize("lv", work / "data" / "lv", train, seed=0, shape=shape)
    source = synthesize("lv", work / "test-source", test, seed=1000, shape=shape)
    for sub, dest in (("imagesTr", "imagesTs"), ("labelsTr", "labelsTs")):
        (data / dest).mkdir()
        for path in sorted((source / sub).glob("lv_*.nii.gz")):
            shutil.copy(path, data / dest / path.name.replace("lv_", "lvtest_"))
    manifest = json.loads((data / "dataset.json").read_text())
    manifest["test"] = [f"./imagesTs/{p.name}" for p in sorted((data / "imagesTs").iterdir())]
    manifest["numTest"] = len(manifest["test"])
    (data / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(source)
    return data


def run(command: list[str], cwd: Path, log: Path, marker: str | None = None) -> tuple[float, float | None]:
    """Run in its own process group with output to ``log``; wall seconds and seconds until ``marker``."""
    print(f"$ (cd {cwd} && {' '.join(command)})", flush=True)
    started, seen = time.perf_counter(), None
    with open(log, "w") as out:
        child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        try:
            for line in child.stdout:
                out.write(line)
                if seen is None and marker and line.startswith(marker):
                    seen = time.perf_counter() - started
            code = child.wait()
        finally:
            stop_group(child)  # also on Ctrl-C: no orphaned Ray or TensorFlow processes
    if code != 0:
        raise SystemExit(f"{command[3]} failed with exit code {code}; see {log}")
    return time.perf_counter() - started, seen


def search(work: Path, name: str, settings: dict, folds: int | None) -> dict:
    """One ``hpsearch run`` (ending with its locked-test evaluation); what it chose and cost."""
    folder = work / name
    folder.mkdir()
    (folder / "space.yaml").write_text(SPACE)
    (folder / "job.yaml").write_text(JOB.format(name=name, folds=f", folds: {folds}" if folds else "", **settings))
    wall, search_s = run([*HPSEARCH, "run", "job.yaml"], folder, folder / "run.log", marker="best:")
    (experiment,) = (folder / f"results-{name}").glob(f"{name}-*/")
    results = json.loads((experiment / "results.json").read_text())
    tested = json.loads((experiment / "test_results.json").read_text())
    row = {
        "experiment": str(experiment), "trial": tested["trial_id"],
        "params": results["best"]["params"], "model": tested["model"],
        "validation": results["best"]["best_value"], "folds_of_choice": results["best"].get("folds", 1),
        "test_dice": tested["test"]["test_dice"], "optimism": tested["optimism"],
        "epochs": sum(t["epochs_run"] for t in results["trials"]),
        # cross-validated: how many trials completed 0, 1, ... folds (ASHA's promotions)
        "trials_per_folds": _count([t.get("folds", 0) for t in results["trials"]]) if folds else None,
        "wall_s": wall, "search_s": search_s,
    }
    if folds:  # the chosen configuration's fold-0 model alone, on the same test cases
        model, scored = folder / "fold0-model", folder / "fold0-test"
        run([*HPSEARCH, "export", str(experiment), "--out", str(model)], folder, folder / "export.log")
        run([*HPSEARCH, "evaluate", str(model), str(settings["data"]), "--out", str(scored)],
            folder, folder / "evaluate.log")
        row["fold0_test_dice"] = json.loads((scored / "evaluation.json").read_text())["summary"]["mean_dice"]
        row["fold0_validation"] = fold0_validation(results)
        row["fold0_optimism"] = row["fold0_validation"] - row["fold0_test_dice"]
    return row


def fold0_validation(results: dict) -> float:
    """The chosen trial's best fold-0 ``val_dice``: the validation Dice of the exported fold-0 model."""
    return max(h["val_dice"] for h in results["best"]["history"] if h.get("fold") == 0)


def _count(values: list[int]) -> dict[str, int]:
    return {str(v): values.count(v) for v in sorted(set(values))}


def summarise(rows: list[dict]) -> dict:
    """Wins of CV over the single split on test Dice, means of Dice and optimism, compute ratio."""
    single, cv = [r["single"] for r in rows], [r["cv"] for r in rows]
    ratios = [c["epochs"] / s["epochs"] for s, c in zip(single, cv)]
    walls = [c["search_s"] / s["search_s"] for s, c in zip(single, cv)]
    mean = statistics.mean
    return {
        "seeds": len(rows),
        "cv_wins": sum(c["test_dice"] > s["test_dice"] for s, c in zip(single, cv)),
        "cv_fold0_wins": sum(c["fold0_test_dice"] > s["test_dice"] for s, c in zip(single, cv)),
        "same_configuration": sum(s["params"] == c["params"] for s, c in zip(single, cv)),
        "mean_test_dice": {"single": mean(s["test_dice"] for s in single), "cv": mean(c["test_dice"] for c in cv),
                           "cv_fold0": mean(c["fold0_test_dice"] for c in cv)},
        "mean_optimism": {"single": mean(s["optimism"] for s in single), "cv": mean(c["optimism"] for c in cv),
                          "cv_fold0": mean(c["fold0_optimism"] for c in cv)},
        "epoch_ratio": {"mean": mean(ratios), "min": min(ratios), "max": max(ratios)},
        "search_wall_ratio": {"mean": mean(walls), "min": min(walls), "max": max(walls)},
    }


def _short(params: dict) -> str:
    return ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def _folds(counts: dict | None) -> str:
    """``{"0": 6, "5": 1}`` -> ``6 x 0, 1 x 5``: how many trials completed how many folds."""
    return ", ".join(f"{n} x {k}" for k, n in counts.items()) if counts else "-"


def markdown(settings: dict, rows: list[dict], summary: dict, label: str) -> str:
    lines = [f"## CV vs single-split selection ({label})", "",
             "| seed | search | chosen configuration | chosen model | validation | test Dice | optimism | epochs "
             "| trials x folds done | search s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for kind in ("single", "cv"):
            x = r[kind]
            lines.append(f"| {r['seed']} | {kind} | {_short(x['params'])} | {x['model']} | {x['validation']:.4f} | {x['test_dice']:.4f} | "
                         f"{x['optimism']:+.4f} | {x['epochs']} | {_folds(x['trials_per_folds'])} | {x['search_s']:.0f} |")
        c = r["cv"]
        lines.append(f"| {r['seed']} | cv, fold 0 alone | same as cv | single model (fold 0) | {c['fold0_validation']:.4f} | "
                     f"{c['fold0_test_dice']:.4f} | {c['fold0_optimism']:+.4f} | | | |")
    s, n = summary, summary["seeds"]
    lines += ["", f"- CV choice beats single-split choice on test Dice: {s['cv_wins']}/{n} seeds "
              f"(CV choice's fold-0 model alone: {s['cv_fold0_wins']}/{n}); same configuration chosen: "
              f"{s['same_configuration']}/{n}",
              "- mean test Dice: single {single:.4f}, CV {cv:.4f}, CV fold-0 model {cv_fold0:.4f}".format(
                  **s["mean_test_dice"]),
              ("- mean optimism (validation - test): single {single:+.4f}, CV (mean-over-folds estimate vs ensemble) "
               "{cv:+.4f}, CV fold-0 model (its own validation) {cv_fold0:+.4f}").format(**s["mean_optimism"]),
              "- compute CV/single, epochs trained: mean {mean:.2f}x (range {min:.2f}-{max:.2f})".format(
                  **s["epoch_ratio"]),
              "- search wall time CV/single: mean {mean:.2f}x (range {min:.2f}-{max:.2f})".format(
                  **s["search_wall_ratio"]),
              "", "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items() if k != "data")]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--grace", type=int, default=2)
    parser.add_argument("--reduction-factor", type=float, default=3)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--train-cases", type=int, default=20)
    parser.add_argument("--test-cases", type=int, default=20)
    parser.add_argument("--size", type=int, default=48, help="in-plane size of the synthetic scans and of training")
    parser.add_argument("--work", type=Path, help="new work folder (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md (default: WORK/cv_selection)")
    parser.add_argument("--smoke-test", action="store_true", help="1 seed, 2 trials, 2 folds, 1 epoch, 32x32")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only rewrite JSON's .md from its rows")
    args = parser.parse_args()
    if args.render:  # e.g. after changing the table layout, without rerunning the searches
        record = json.loads(args.render.read_text())
        text = markdown({**record["settings"], "folds": record["folds"]}, record["rows"], summarise(record["rows"]),
                        record["label"]) + f"Total wall time {record['wall_s'] / 60:.1f} min.\n"
        args.render.with_suffix(".md").write_text(text)
        print(text)
        return 0
    if args.smoke_test:
        args.seeds, args.trials, args.folds, args.max_epochs, args.grace = [0], 2, 2, 1, 1
        args.train_cases, args.test_cases, args.size = 6, 2, 32
    work = (args.work or Path(tempfile.mkdtemp(prefix="hpsearch-cvsel-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        parser.error(f"--work {work}: not empty; give a new folder")
    out = (args.out or work / "cv_selection").resolve()
    os.environ.update(HPSEARCH_CACHE_DIR=str(work / "cache"), TF_CPP_MIN_LOG_LEVEL="2",
                      PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    settings = {"data": make_data(work, args.train_cases, args.test_cases, args.size, 4 if args.smoke_test else 8),
                "size": args.size, "epochs": args.max_epochs, "trials": args.trials, "grace": args.grace,
                "rf": args.reduction_factor, "concurrent": args.max_concurrent}
    label = (f"synthetic LV, {args.train_cases} training cases, {args.test_cases} locked test cases, "
             f"validation = selection metric, {args.folds}-fold fidelity vs val_fraction 0.2")
    rows = []
    for seed in args.seeds:
        arm = dict(settings, seed=seed)
        rows.append({"seed": seed, "single": search(work, f"single-s{seed}", arm, None),
                     "cv": search(work, f"cv-s{seed}", arm, args.folds)})
        print(f"seed {seed}: " + json.dumps({k: {m: rows[-1][k][m] for m in ("test_dice", "epochs", "search_s")}
                                            for k in ("single", "cv")}), flush=True)
        # Written after every seed: an interrupted benchmark keeps the seeds it finished.
        text = write(out, label, settings, args, rows, time.perf_counter() - started, work)
    print("\n" + text)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def write(out: Path, label: str, settings: dict, args, rows: list[dict], wall_s: float, work: Path) -> str:
    """Write OUT.json and OUT.md for the seeds done so far; the markdown text."""
    summary = summarise(rows)
    record = {"label": label, "settings": {k: str(v) if k == "data" else v for k, v in settings.items()},
              "folds": args.folds, "space": SPACE, "rows": rows, "summary": summary,
              "wall_s": wall_s, "smoke_test": args.smoke_test}
    text = markdown({**settings, "folds": args.folds}, rows, summary, label)
    text += f"Total wall time {wall_s / 60:.1f} min (work folder {work}).\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
