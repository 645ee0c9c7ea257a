"""Shared fixtures: real synthetic NIfTI datasets, a private preprocessing cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hpsearch.data.synth import synthesize  # noqa: E402


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
