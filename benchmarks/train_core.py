"""Segmentation-core speed and memory, measured side by side in one run.

What a search trial pays before and while it trains:

* preprocessing: NIfTI decoding + resampling on a cache miss, versus opening the
  memory-mapped cache entry on a hit (every trial after the first);
* one epoch of the demo U-Net with 1 versus 2 TensorFlow intra-op threads (what a
  trial with 1 or 2 CPUs gets), each in a fresh process since threads are fixed at
  TensorFlow start-up; with peak resident memory of that process.

Run from the repository root:

    .venv/bin/python benchmarks/train_core.py            # the demo job
    .venv/bin/python benchmarks/train_core.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EPOCH_SCRIPT = """
import json, resource, sys, time
from hpsearch.data import load_dataset
from hpsearch.runtime import RuntimeConfig, configure_tensorflow
from hpsearch.spec import load_job
job = load_job(sys.argv[1], sys.argv[3:])
configure_tensorflow(RuntimeConfig(intra_op_threads=int(sys.argv[2]), inter_op_threads=1))
from hpsearch.trainer import Trainer
data, _ = load_dataset(job.dataset)
trainer = Trainer(data, job.model, job.trial_params())
first = trainer.train_epoch().seconds          # includes tracing the train function
steady = [trainer.train_epoch().seconds for _ in range(2)]
print(json.dumps({"first": first, "steady": sum(steady) / len(steady),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(REPO / "jobs" / "demo.yaml"))
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, seconds not minutes")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(tempfile.mkdtemp(prefix="hpsearch-bench-"))
    os.environ["HPSEARCH_CACHE_DIR"] = str(work / "cache")
    overrides = [f"dataset.path={work / 'data'}"]
    if args.smoke_test:
        overrides += ["dataset.image_size=[32,32]", "dataset.synthetic_cases=4", "depth=2", "base_filters=4"]

    from hpsearch.data import load_dataset
    from hpsearch.spec import load_job

    job = load_job(args.job, overrides)
    load_dataset(job.dataset)  # generates the synthetic set, so it is not timed below
    shutil.rmtree(work / "cache")
    started = time.perf_counter()
    data, hit = load_dataset(job.dataset)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    _, hit_again = load_dataset(job.dataset)
    warm = time.perf_counter() - started
    assert not hit and hit_again

    print(f"job {args.job}: {len(data.train_x)} training slices {data.input_shape}, model {job.model}")
    print(f"preprocess  cache miss {cold:7.3f} s   cache hit {warm:7.3f} s   ({cold / warm:.0f}x)")
    results = {}
    for threads in (1, 2):
        out = subprocess.run(
            [sys.executable, "-c", EPOCH_SCRIPT, args.job, str(threads), *overrides],
            capture_output=True, text=True, check=True,
        )
        results[threads] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[threads]
        print(
            f"epoch       {threads} thread(s): first {r['first']:6.2f} s, then {r['steady']:6.2f} s/epoch, "
            f"peak RSS {r['rss_mb']:.0f} MB"
        )
    print(f"speed-up 2 vs 1 thread: {results[1]['steady'] / results[2]['steady']:.2f}x")
    print(f"this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
