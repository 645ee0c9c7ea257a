"""What the search driver costs per result: many replayed trials through the real Tuner and tracker.

Replayed trials (:mod:`hpsearch.curves.replay`, no sleep) report as fast as Ray can carry
their results, so the driver (Ray Tune's loop, OptunaSearch, ASHA off, the real
``MLflowTracker`` into a real MLflow sqlite store) is the bottleneck and its cost shows:

* driver CPU seconds per result (the process's CPU time over ``Tuner.fit``, divided by the
  results), for the tracker sending every epoch at once and batching a trial's epochs at most
  once a second and at each experiment snapshot (what ``hpsearch run`` and replays do);
* the driver's resident memory, sampled every second: flat, or growing with results;
* no result lost or duplicated: every child run's ``val_dice`` history holds each epoch its
  trial reported exactly once.

Issue #12's target: 1,000 trials of 20 epochs (20,000 results) at no more than 5 ms of driver
CPU per result, memory flat. Run from the repository root:

    .venv/bin/python benchmarks/driver_overhead.py                    # 1,000 trials x 20 epochs
    .venv/bin/python benchmarks/driver_overhead.py --smoke-test       # 20 trials x 5 epochs
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpsearch.curves import synthetic_table  # noqa: E402
from hpsearch.curves.simulate import replay_search  # noqa: E402
from hpsearch.files import read_yaml  # noqa: E402
from hpsearch.space import parse_space  # noqa: E402
from hpsearch.spec import load_job  # noqa: E402


class MemorySampler(threading.Thread):
    """The process's resident memory once a second, in MB."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self._done = threading.Event()

    def run(self):
        process = psutil.Process()
        while not self._done.wait(1.0):
            self.samples.append(process.memory_info().rss / 2**20)

    def stop(self) -> list[float]:
        self._done.set()
        self.join()
        return self.samples


def measure(trials: int, epochs: int, send_interval_s: float, work: Path) -> dict:
    """One search of ``trials`` replayed trials of ``epochs`` epochs; its driver cost."""
    from mlflow import MlflowClient

    space_raw = {k: v for k, v in read_yaml(REPO / "search_spaces" / "unet.yaml").items() if k != "epochs"}
    table = synthetic_table(space_raw, rows=300, max_epochs=epochs, seed=0, noise=0.0)
    job = load_job(REPO / "jobs" / "demo.yaml", [
        "search.sampler=random", "scheduler.type=none", f"search.num_trials={trials}", "search.max_concurrent=2",
        f"scheduler.max_epochs={epochs}", f"params.epochs={epochs}", "tracking.experiment=driver-overhead"])
    space = parse_space(space_raw, job.family, "search_spaces/unet.yaml")
    uri = f"sqlite:///{work}/mlflow-{send_interval_s}.db"
    memory = MemorySampler()
    memory.start()
    cpu = time.process_time()
    search = replay_search(table, job, space, storage=work / f"ray-{send_interval_s}", tracking_uri=uri,
                           name=f"overhead-{send_interval_s}", send_interval_s=send_interval_s)
    cpu = time.process_time() - cpu
    rss = memory.stop()
    client = MlflowClient(uri)
    children = client.search_runs([search.experiment_id], max_results=50_000,
                                  filter_string=f"tags.`mlflow.parentRunId` = '{search.parent_run_id}'")
    reported: dict[str, set[int]] = {}
    for arrival in search.arrivals:  # what the driver received, per trial (a diverged row ends early)
        reported.setdefault(arrival.trial_id, set()).add(arrival.epoch)
    wrong = [run.info.run_id for run in children
             if sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_dice"))
             != sorted(reported.get(run.data.tags.get("hpsearch.trial_id"), ()))]
    results = len(search.arrivals)
    quarter = max(1, len(rss) // 4)
    return {"send_interval_s": send_interval_s, "results": results, "wall_s": search.seconds, "cpu_s": cpu,
            "cpu_ms_per_result": 1000 * cpu / max(results, 1), "child_runs": len(children),
            "runs_not_exactly_once": len(wrong),
            "rss_first_quarter_mb": sum(rss[:quarter]) / quarter if rss else None,
            "rss_last_quarter_mb": sum(rss[-quarter:]) / quarter if rss else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--send-intervals", type=lambda text: [float(x) for x in text.split(",")], default=[0.0, 1.0],
                        help="tracker send intervals to measure, comma-separated seconds (default: 0,1)")
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    if args.smoke_test:
        args.trials, args.epochs = 20, 5
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray").setLevel(logging.ERROR)
    import optuna
    import ray

    from hpsearch.search.local_ray import init_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="driver-overhead-"))
    init_ray(None)
    try:
        rows = [measure(args.trials, args.epochs, interval, work) for interval in args.send_intervals]
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.trials} replayed trials x {args.epochs} epochs, 2 at a time, MLflow sqlite")
    for r in rows:
        print(f"tracker send interval {r['send_interval_s']:.0f} s: {r['results']} results in {r['wall_s']:.0f} s, "
              f"driver CPU {r['cpu_ms_per_result']:.1f} ms/result (target <= 5), child runs {r['child_runs']}, "
              f"not exactly once {r['runs_not_exactly_once']}, driver RSS {r['rss_first_quarter_mb']:.0f} MB "
              f"(first quarter) -> {r['rss_last_quarter_mb']:.0f} MB (last quarter)")


if __name__ == "__main__":
    main()
