"""Contract tests over every sampler through Ray's OptunaSearch (no Ray cluster needed)."""

from __future__ import annotations

import importlib.util
import math

import pytest
from ray.tune.search.optuna import OptunaSearch

from hpsearch.errors import HpsearchError
from hpsearch.search.searchers import make_sampler
from hpsearch.space import parse_space, to_optuna

SPACE = parse_space(
    {
        "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "decay_rate": {"type": "uniform", "low": 0.5, "high": 1.0},
        "depth": {"type": "int", "low": 2, "high": 4},
        "loss": {"type": "choice", "values": ["ce", "dice", "ce_dice"]},
    },
    "unet",
    "test",
)
SAMPLERS = ["tpe", "random", "cmaes", "qmc"] + (["gp"] if importlib.util.find_spec("torch") else [])


def _propose(sampler: str, seed: int, n: int = 14) -> list[dict]:
    """n proposals, each answered (deterministically) before the next, as with one worker."""
    searcher = OptunaSearch(
        space=to_optuna(SPACE), metric="val_dice", mode="max", sampler=make_sampler(sampler, seed, n)
    )
    configs = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        score = 1.0 - abs(math.log10(config["learning_rate"]) + 3) / 2 - 0.05 * config["depth"]
        searcher.on_trial_complete(f"t{i}", {"val_dice": score})
    return configs


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_sequence_and_within_bounds(sampler):
    first = _propose(sampler, seed=3)
    assert _propose(sampler, seed=3) == first
    assert _propose(sampler, seed=4) != first
    for config in first:
        assert 1e-4 <= config["learning_rate"] <= 1e-2 and 0.5 <= config["decay_rate"] <= 1.0
        assert config["depth"] in (2, 3, 4) and config["loss"] in ("ce", "dice", "ce_dice")


def test_tpe_learns_after_startup():
    # After its random start TPE should concentrate near the optimum (lr ~ 1e-3).
    configs = _propose("tpe", seed=0, n=30)
    late = [abs(math.log10(c["learning_rate"]) + 3) for c in configs[-10:]]
    early = [abs(math.log10(c["learning_rate"]) + 3) for c in configs[:7]]
    assert sum(late) / len(late) < sum(early) / len(early)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch installed")
def test_gp_without_torch_is_a_clear_error():
    with pytest.raises(HpsearchError, match=r"pip install 'hpsearch\[gp\]'"):
        make_sampler("gp", 0, 10)
