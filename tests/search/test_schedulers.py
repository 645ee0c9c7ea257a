"""Hyperband and BOHB searches end, also when trials end on their own between milestones.

Ray 2.60's ``HyperBandScheduler`` left trials paused at a milestone for good when the round's
last trial ended on its own (its sampled ``epochs`` cap, a diverged run) instead of reaching
the milestone: the search never ended (see ``hpsearch.search.schedulers._EveryRound``). Each
case replays a seeded random search, one trial at a time (``cpus_per_trial`` = Ray's 2 CPUs),
so it takes the same path every run; both hung before the fix:

* ``last round``: max_t 8, reduction 3: the second bracket's last milestone is 6, below
  max_t; a trial paused at 6 waited for one capped at 3, 4 or 5.
* ``middle round``: max_t 9: the third bracket's second milestone is 3; a trial paused
  at 3 waited for one capped at 2 (or at 3: a trial's last result goes to
  ``on_trial_complete``, never to ``on_trial_result``).

The cases run in one child process (tagged and killed with all it started, as the ``spawn``
fixture does), one Ray for all, each search in a thread given ``DEADLINE`` seconds: a search
that hangs fails its test instead of blocking CI, and ends the child (a Tune run left
hanging disturbs the next one), so the cases after it fail as not run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml"
DEADLINE = 45      # seconds per search; each takes about 5-10 s (on 2 busy cores)
RAY_START = 60     # seconds for the child's imports and Ray's start (4 s on a quiet machine, 15 s on a busy one)
ENDED = {"completed", "stopped_early", "failed"}
HAVE_BOHB = all(importlib.util.find_spec(m) for m in ("hpbandster", "ConfigSpace"))
# name -> (scheduler, max_epochs, lowest sampled epochs, trials, seed); trials enough to reach the bracket
CASES = {"hyperband-last-round": ("hyperband", 8, 3, 8, 1), "hyperband-middle-round": ("hyperband", 9, 2, 17, 0)}
if HAVE_BOHB:  # Ray's BOHB did not hang on these (it judges any bracket once no trial runs); kept ending
    CASES.update({"bohb-last-round": ("bohb", 8, 3, 8, 1), "bohb-middle-round": ("bohb", 9, 2, 17, 0)})


def _search(scheduler: str, max_epochs: int, low: int, trials: int, seed: int, work: Path) -> dict:
    """In the child: one replayed search; what every trial's MLflow run and summary row say."""
    from hpsearch.curves import synthetic_table
    from hpsearch.curves.simulate import replay_search
    from hpsearch.space import parse_space
    from hpsearch.spec import load_job
    from hpsearch.tracking.runs import SearchRuns

    space = {"learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
             "norm": {"type": "choice", "values": ["none", "batch"]},
             "epochs": {"type": "int", "low": low, "high": max_epochs}}
    job = load_job(DEMO, ["search.sampler=random", f"scheduler.type={scheduler}", f"search.seed={seed}",
                          f"search.num_trials={trials}", f"scheduler.max_epochs={max_epochs}",
                          "scheduler.reduction_factor=3", "resources.cpus_per_trial=2"])
    uri = f"sqlite:///{work}/mlflow.db"
    search = replay_search(synthetic_table(space, rows=40, max_epochs=max_epochs, seed=3), job,
                           parse_space(space, job.family, "space.yaml"), storage=work / "ray",
                           tracking_uri=uri, name="hb", time_scale=0.001)
    children = SearchRuns(uri, search.parent_run_id).children()
    return {"runs": [[run.data.tags.get("hpsearch.status"), run.info.status] for run in children],
            "rows": [[row.status, row.epochs_run] for row in search.rows],
            "resumed": sum(a.restored for a in search.arrivals), "seconds": round(search.seconds, 1)}


def _child(work: Path) -> None:
    """Every case in turn, one JSON line each; after a hang, stop (a hung Tune run keeps running)."""
    import threading

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    for name, case in CASES.items():
        report: dict = {}
        thread = threading.Thread(target=lambda: report.update(_search(*case, work / name)), daemon=True)
        thread.start()
        thread.join(DEADLINE)
        print(json.dumps({"case": name, **(report if not thread.is_alive() else {"hung": True})}), flush=True)
        if thread.is_alive():
            break
    ray.shutdown()
    os._exit(0)     # not waiting for a hung search's thread


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Case name -> what its search did (or ``hung``), from one child process: killed with
    everything it started (Ray) at the end, as the ``spawn`` fixture does for one test."""
    from helpers import SPAWN_TAG, kill_processes, tagged_processes

    tag = uuid.uuid4().hex
    try:
        proc = subprocess.Popen([sys.executable, __file__, str(tmp_path_factory.mktemp("hyperband"))],
                                env={**os.environ, SPAWN_TAG: tag, "RAY_AIR_NEW_OUTPUT": "0"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=RAY_START + DEADLINE * len(CASES))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"case"')]
        yield {line.pop("case"): line for line in lines} or {"error": err[-3000:]}
    finally:
        kill_processes(tagged_processes(tag))


@pytest.mark.parametrize("name", list(CASES))
def test_the_search_ends_with_every_trial_ended(reports, name):
    assert "error" not in reports, reports.get("error")
    assert name in reports, "not run: an earlier case hung"
    report = reports[name]
    assert not report.get("hung"), f"the search did not end within {DEADLINE} s: trials left paused"
    trials = CASES[name][3]
    assert len(report["runs"]) == len(report["rows"]) == trials
    assert all(tag in ENDED and status in ("FINISHED", "FAILED") for tag, status in report["runs"]), report["runs"]
    assert {status for status, _ in report["rows"]} <= ENDED
    # the case means something only if Hyperband paused trials and resumed some
    assert report["resumed"] > 0
    assert any(status == "stopped_early" for status, _ in report["rows"])


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
