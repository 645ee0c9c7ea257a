"""Search-space files: the shipped ones load, broken ones name file, key and reason."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.errors import HpsearchError
from hpsearch.space import Choice, IntRange, LogUniform, load_space, to_optuna

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model", ["unet", "fcn"])
def test_shipped_spaces_cover_the_seeds_parameters(model, tmp_path):
    path = REPO / "search_spaces" / f"{model}.yaml"
    space = load_space(path, model)
    assert {"learning_rate", "decay_rate", "decay_steps", "depth", "base_filters",
            "batch_size", "loss", "dropout", "norm"} <= set(space)
    assert "epochs" not in space  # ASHA owns the epoch budget (README, "Measuring search strategies")
    assert isinstance(space["learning_rate"], LogUniform)
    assert isinstance(space["depth"], IntRange) and isinstance(space["loss"], Choice)
    # the line the file's comment offers for searching `epochs` as the lab does is valid
    (offered,) = [line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#   epochs:")]
    (tmp_path / "space.yaml").write_text(path.read_text() + offered + "\n")
    assert isinstance(load_space(tmp_path / "space.yaml", model)["epochs"], IntRange)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}", "lr: not a hyperparameter of model 'unet'"),
        ("learning_rate: {type: uniform, low: 0.1, high: 0.01}", "low must be below high"),
        ("learning_rate: {type: loguniform, low: 0.0, high: 0.01}", "a log scale needs low > 0"),
        ("learning_rate: {type: loguniform, low: -1, high: 0.01}", "a log scale needs low > 0"),
        ("depth: {type: int, low: 3, high: 3}", "low must be below high"),
        ("depth: {type: int, low: 2, high: 9}", "depth: value 9 is out of range for 'unet'"),
        # Both ends are whole numbers, the values between are not (it crashed the summary).
        ("epochs: {type: uniform, low: 1, high: 2}", "epochs: takes whole numbers; write {type: int, low: 1, high: 2}"),
        ("loss: {type: choice, values: []}", "loss.choice.values"),
        ("loss: {type: choice, values: [ce, focal]}", "loss: value 'focal' is out of range"),
        ("padding: {type: choice, values: [same, valid]}", None),
        ("depth: {type: normal, low: 1, high: 2}", "depth: Input tag 'normal'"),
        ("depth: {type: int, low: 1, high: 2, step: 1}", "depth.int.step: unknown key"),
        ("depth: 3", "depth: Input should be a valid dictionary"),
        ("", "expected a mapping"),
    ],
)
def test_bad_spaces(tmp_path, text, needle):
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    if needle is None:  # valid for unet, but the FCN has no padding option
        load_space(path, "unet")
        with pytest.raises(HpsearchError, match="padding: not a hyperparameter of model 'fcn'"):
            load_space(path, "fcn")
        return
    with pytest.raises(HpsearchError) as info:
        load_space(path, "unet")
    assert str(path) in str(info.value) and needle in str(info.value), str(info.value)


def test_to_optuna_distributions(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
        "decay_rate: {type: uniform, low: 0.5, high: 1.0}\n"
        "base_filters: {type: int, low: 4, high: 64, log: true}\n"
        "loss: {type: choice, values: [ce, dice]}\n"
    )
    dists = to_optuna(load_space(path, "unet"))
    assert dists["learning_rate"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["decay_rate"] == optuna.distributions.FloatDistribution(0.5, 1.0)
    assert dists["base_filters"] == optuna.distributions.IntDistribution(4, 64, log=True)
    assert dists["loss"] == optuna.distributions.CategoricalDistribution(["ce", "dice"])
