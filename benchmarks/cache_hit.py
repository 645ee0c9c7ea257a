"""What verifying a preprocessing-cache entry costs on a hit, on the demo's data.

Every trial opens the cache entry of its dataset; since entries carry checksums, each
open first checks the size and SHA-256 of every file (:func:`hpsearch.data.cache.entry_problem`)
and then memory-maps the arrays. This measures, on the demo dataset (24 synthetic LV
cases, 96x96 slices) and a private cache folder:

* the entry's size;
* a whole cache hit (``prepare_cached``: dataset digest from the memo, verification,
  memory-mapping), and the verification alone, so the hit without it is the difference;
* the throughput of the hash functions hashlib offers, which picked SHA-256.

Usage::

    .venv/bin/python benchmarks/cache_hit.py [--repeat 30] [--cases 24]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from hpsearch.data import PreprocessConfig, prepare_cached, read_index, synthesize
from hpsearch.data.cache import entry_problem


def _median_ms(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--cases", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize("lv", Path(tmp) / "demo-lv", cases=args.cases, seed=0)
        cache = Path(tmp) / "cache"
        config = PreprocessConfig(image_size=(96, 96), val_fraction=0.2)
        index = read_index(root)
        prepare_cached(index, config, cache)  # the miss that builds the entry
        [entry] = [p for p in cache.glob("prepared-*") if p.is_dir()]
        size = sum(p.stat().st_size for p in entry.iterdir())
        hit = _median_ms(lambda: prepare_cached(index, config, cache), args.repeat)
        verify = _median_ms(lambda: entry_problem(entry), args.repeat)
        print(f"entry {size / 1e6:.1f} MB ({len(list(entry.iterdir()))} files), median of {args.repeat}:")
        print(f"  cache hit            {hit:7.2f} ms")
        print(f"  of which verifying   {verify:7.2f} ms")
        print(f"  hit without verifying{hit - verify:7.2f} ms")
        blob = (entry / "train_x.npy").read_bytes()
        for name in ("sha256", "blake2b", "md5", "sha1"):
            ms = _median_ms(lambda: hashlib.new(name, blob).digest(), args.repeat)
            print(f"  {name:8s} {len(blob) / ms / 1e3:7.0f} MB/s")


if __name__ == "__main__":
    main()
