"""A replayed search interrupted by Ctrl-C is not a finished search.

Ray Tune catches SIGINT, stops the search and returns from ``fit()`` as if it had ended;
``replay_search`` returned those cut searches as results, and ``benchmarks/search_efficiency.py``
stored one of 26 epochs and one of 0 as finished searches. The child process replays a slow
search; the test interrupts it once its first epoch is reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml"
SPACE = {"learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}}


def _child(work: Path) -> None:
    import ray

    from hpsearch.curves import synthetic_table
    from hpsearch.curves.simulate import replay_search
    from hpsearch.space import parse_space
    from hpsearch.spec import load_job

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    job = load_job(DEMO, ["search.num_trials=8", "scheduler.type=none", "scheduler.max_epochs=6"])
    table = synthetic_table(SPACE, rows=10, max_epochs=6, seed=0)
    try:
        replay_search(table, job, parse_space(SPACE, job.family, "space.yaml"), storage=work / "ray",
                      tracking_uri=f"sqlite:///{work}/mlflow.db", name="cut", time_scale=0.2,
                      echo=lambda line: print(f"progress {line}", flush=True))
        print("returned as finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        ray.shutdown()


def test_an_interrupted_replay_raises_instead_of_returning_a_cut_search(spawn, tmp_path):
    child = spawn([sys.executable, __file__, tmp_path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                  env={**os.environ, "RAY_AIR_NEW_OUTPUT": "0"})
    lines: list[str] = []
    under_way = threading.Event()  # the first reported epoch

    def read():  # a thread, so a silent child cannot block the test past its deadlines
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith("progress"):
                under_way.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert under_way.wait(120), lines
    child.send_signal(signal.SIGINT)
    child.wait(timeout=120)
    reader.join(10)
    assert "interrupted" in lines and "returned as finished" not in lines, lines


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
