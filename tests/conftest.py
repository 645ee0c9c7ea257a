"""Shared fixtures: real synthetic NIfTI datasets, a private preprocessing cache."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import ray

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hpsearch.data.synth import synthesize  # noqa: E402
from helpers import SPAWN_TAG, kill_processes, tagged_processes  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep every test's preprocessing cache out of the user's home."""
    os.environ["HPSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("hpsearch-cache"))


@pytest.fixture(scope="session")
def lv_small(tmp_path_factory) -> Path:
    """8 synthetic cardiac cases, 32x32x6."""
    return synthesize("lv", tmp_path_factory.mktemp("data") / "lv", cases=8, seed=1, shape=(32, 32, 6))


@pytest.fixture(scope="session")
def brats_small(tmp_path_factory) -> Path:
    """4 synthetic BraTS cases, 32x32x8x4, labels 0/1/2/4."""
    return synthesize("brats", tmp_path_factory.mktemp("data") / "brats", cases=4, seed=1, shape=(32, 32, 8))


@pytest.fixture
def spawn():
    """``Popen`` for tests: every process started through it, and everything those start, is
    killed at teardown, also when the test fails.

    The processes are found by a tag in their environment, which their children inherit:
    a tree whose root was killed (orphans) or that left the process group is still found.
    """
    tag = uuid.uuid4().hex

    def start(args, **popen) -> subprocess.Popen:
        env = {**(popen.pop("env", None) or os.environ), SPAWN_TAG: tag}
        return subprocess.Popen([str(a) for a in args], env=env, **popen)

    try:
        yield start
    finally:
        kill_processes(tagged_processes(tag))


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray on 127.0.0.1 with 2 CPUs for one test module, shut down after it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
