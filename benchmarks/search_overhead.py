"""What the search machinery costs: bare `hpsearch train` vs. the same trials in `hpsearch run`.

Side by side, in one run, on the same machine state:

* **bare**: N times ``hpsearch train`` of one configuration (a fresh process each, as a
  user would run them by hand), ``--threads C``;
* **search**: one ``hpsearch run`` of N trials of that same configuration (a search space
  with a single-value choice), one at a time, ``cpus_per_trial: C``, no early stopping,
  with everything on: Ray, Optuna, checkpoints (every 30 s of training and at the end),
  MLflow logging; only the dashboard is off (``search.dashboard: false``): it is a report
  bare training does not make, written once after the search (13-15 s, measured on its own
  in the README), not a cost of the search machinery.

Reported: total wall time of each, the overhead per trial, and the time from the command
to the first finished epoch.

``--throughput`` measures instead what a second concurrent trial adds: the same trials
with 1 CPU each, one at a time and then two at a time, in epochs per second while trials
train (first result to last, so Ray's start is not counted). Two trials share the
object store's copy of the data, so the ratio should approach 2 on a 2-core machine.
Beside it, the machine's own ratio: one bare ``hpsearch train --threads 1`` alone, then
two at once (epochs per second from their epoch times, the first epoch's tracing left
out). Two processes on two cores do not give 2x when they share caches and memory
bandwidth; the search can only be judged against that.
Run from the repository root:

    .venv/bin/python benchmarks/search_overhead.py                 # ~30 s trials
    .venv/bin/python benchmarks/search_overhead.py --smoke-test    # seconds
    .venv/bin/python benchmarks/search_overhead.py --throughput --trials 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HPSEARCH = Path(sys.executable).with_name("hpsearch")

JOB = """\
name: overhead
dataset: {{path: {data}, synthetic: lv, synthetic_cases: {cases}, image_size: [{size}, {size}]}}
model: unet
params: {{epochs: {epochs}, depth: {depth}, base_filters: 16, batch_size: 8, learning_rate: 1.0e-3}}
runtime: {{intra_op_threads: {cpus}, inter_op_threads: 1}}
search_space: space.yaml
search: {{sampler: random, num_trials: {trials}, max_concurrent: {concurrent}, seed: 0, max_failures: 0,
         dashboard: false}}
scheduler: {{type: none, max_epochs: {epochs}}}
resources: {{cpus_per_trial: {cpus}}}
tracking: {{uri: sqlite:///mlflow.db}}
storage: results
"""


def timed(command: list[str], cwd: Path, marker: str, epochs: list[float] | None = None):
    """Wall time of a command and the time until a line containing `marker` appeared.

    Epoch lines of `hpsearch train` ("epoch  3 ... 3.2s") add their seconds to `epochs`.
    """
    started = time.perf_counter()
    first = None
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        for line in proc.stdout:
            if first is None and marker in line:
                first = time.perf_counter() - started
            if epochs is not None and line.startswith("epoch "):
                epochs.append(float(line.rsplit(maxsplit=1)[-1].rstrip("s")))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}")
    return time.perf_counter() - started, first


def search_throughput(work: Path, trials: int, epochs: int, size: int, depth: int, cases: int) -> None:
    """Epochs per second with 1 and with 2 concurrent 1-CPU trials, side by side."""
    rates = {}
    for concurrent in (1, 2):
        (work / "job.yaml").write_text(JOB.format(data=work / "data", cases=cases, size=size, epochs=epochs, depth=depth,
                                                  cpus=1, trials=trials, concurrent=concurrent))
        before = set((work / "results").glob("overhead-*")) if (work / "results").exists() else set()
        timed([str(HPSEARCH), "run", "job.yaml"], work, "best:")
        experiment = next(iter(set((work / "results").glob("overhead-*")) - before))
        rows = [json.loads(line) for trial in experiment.glob("trial_*")
                for line in (trial / "result.json").read_text().splitlines()]
        start = min(row["timestamp"] - row["time_this_iter_s"] for row in rows)
        rates[concurrent] = len(rows) / (max(row["timestamp"] for row in rows) - start)
        print(f"{concurrent} trial(s) at a time, 1 CPU each: {len(rows)} epochs, {rates[concurrent]:.3f} epochs/s")
    bare = bare_throughput(work)
    print(f"throughput, 2 concurrent vs 1: search {rates[2] / rates[1]:.2f}x (target >= 1.9x), "
          f"bare `hpsearch train` {bare:.2f}x")


def bare_throughput(work: Path) -> float:
    """Epochs per second of two concurrent bare 1-thread trainings over one alone."""
    command = [str(HPSEARCH), "train", "job.yaml", "--threads", "1"]
    alone: list[float] = []
    timed(command, work, "epoch   1", alone)
    together: list[list[float]] = [[], []]
    runs = [threading.Thread(target=timed, args=(command, work, "epoch   1", seconds)) for seconds in together]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    rate_alone = 1 / statistics.median(alone[1:])
    rate_together = sum(1 / statistics.median(seconds[1:]) for seconds in together)
    print(f"bare `hpsearch train --threads 1`: median epoch {statistics.median(alone[1:]):.2f} s alone, "
          f"{', '.join(f'{statistics.median(s[1:]):.2f}' for s in together)} s two at once")
    return rate_together / rate_alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--throughput", action="store_true", help="1 vs 2 concurrent 1-CPU trials")
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    size, depth, cases = (96, 4, 24) if not args.smoke_test else (32, 2, 6)
    epochs = args.epochs if not args.smoke_test else 2
    work = Path(tempfile.mkdtemp(prefix="hpsearch-overhead-"))
    os.environ["HPSEARCH_CACHE_DIR"] = str(work / "cache")
    (work / "space.yaml").write_text("learning_rate: {type: choice, values: [1.0e-3]}\n")
    (work / "job.yaml").write_text(
        JOB.format(data=work / "data", cases=cases, size=size, epochs=epochs, depth=depth,
                   cpus=args.cpus, trials=args.trials, concurrent=1)
    )
    # Warm-up: generate the data and fill the preprocessing cache, so neither side pays it.
    timed([str(HPSEARCH), "train", "job.yaml", "--set", "epochs=1"], work, "epoch")
    if args.throughput:
        search_throughput(work, max(args.trials, 2), epochs, size, depth, cases)
        return

    bare_total, bare_first, bare_epochs = 0.0, [], []
    for _ in range(args.trials):
        command = [str(HPSEARCH), "train", "job.yaml", "--threads", str(args.cpus)]
        wall, first = timed(command, work, "epoch   1", bare_epochs)
        bare_total += wall
        bare_first.append(first)

    started = time.time()
    search_total, _ = timed([str(HPSEARCH), "run", "job.yaml"], work, "best:")
    experiment = next((work / "results").glob("overhead-*"))
    first_results, search_epochs, spans = [], [], []
    for trial in experiment.glob("trial_*"):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        first_results.append(rows[0]["timestamp"])
        search_epochs += [row["epoch_seconds"] for row in rows]
        spans.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]))
    search_first = min(first_results) - started
    spans.sort()
    gaps = [later[0] - earlier[1] for earlier, later in zip(spans, spans[1:])]

    overhead = (search_total - bare_total) / args.trials
    print(f"{args.trials} trials x {epochs} epochs, {size}x{size}, U-Net depth {depth}, {args.cpus} CPU(s) per trial")
    print(f"bare `hpsearch train` x{args.trials}: {bare_total:7.1f} s  ({bare_total / args.trials:.1f} s per trial)")
    print(f"`hpsearch run`:              {search_total:7.1f} s  ({search_total / args.trials:.1f} s per trial)")
    print(f"search vs bare: {100 * (search_total / bare_total - 1):+.1f}% wall time, {overhead:+.2f} s per trial")
    print(f"command to first epoch: bare {min(bare_first):.1f} s, search {search_first:.1f} s")
    print(f"median epoch: bare {statistics.median(bare_epochs):.2f} s, in a trial {statistics.median(search_epochs):.2f} s")
    if gaps:
        print(f"between consecutive trials (reset, checkpoint, tracking): {statistics.mean(gaps):.2f} s")


if __name__ == "__main__":
    main()
