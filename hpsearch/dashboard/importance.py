"""Hyperparameter importance of a search by Optuna's own evaluators.

The finished trials (best value of the metric each, the sampled values and the search
space's distributions) are put into an in-memory Optuna study with
``optuna.trial.create_trial``, so any Optuna evaluator can be asked. Ray's ``OptunaSearch``
keeps its study inside the searcher's pickled state; rebuilding it from MLflow works for
every sampler, for resumed searches, and for searches read on another machine.

Two evaluators, because they answer different questions: fANOVA (how much of the metric's
variance each parameter explains over the whole space, Hutter et al. 2014) and PED-ANOVA
(which parameters set the good trials apart from the rest, Watanabe et al. 2023).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings

from hpsearch.dashboard.collect import Search
from hpsearch.errors import first_line
from hpsearch.space import to_optuna

MIN_TRIALS = 2  # fewer trials cannot tell parameters apart


@dataclasses.dataclass
class Importance:
    """Importances per evaluator, or why there are none.

    Attributes:
        scores: Evaluator name -> parameter -> importance (each evaluator's sum is 1).
        trials: How many finished trials the study held.
        message: Why an evaluator (or all) gave nothing, for the page; "" if all worked.
    """

    scores: dict[str, dict[str, float]]
    trials: int
    message: str = ""


def compute_importance(search: Search, seed: int = 0) -> Importance:
    """Importance of each searched hyperparameter for the search's metric.

    Never raises for thin data: fewer than two finished trials, or parameters that never
    varied, give an :class:`Importance` with a ``message`` instead of scores.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    distributions = to_optuna(search.space) if search.space else {}
    finished = search.finished()
    if not distributions:
        return Importance({}, len(finished), "no search space file found beside the experiment")
    if len(finished) < MIN_TRIALS:
        return Importance({}, len(finished), f"importance needs at least {MIN_TRIALS} finished trials, "
                                             f"this search has {len(finished)}")
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize")
    for trial in finished:
        params = {k: trial.params[k] for k in distributions if k in trial.params}
        try:
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={k: distributions[k] for k in params}, value=trial.best(search.mode)[0]))
        except ValueError:  # a value outside the space (the space file was edited since): leave it out
            continue
    varied = [k for k in distributions
              if len({repr(t.params.get(k)) for t in study.trials if k in t.params}) > 1]
    if not varied:
        return Importance({}, len(study.trials), "no hyperparameter took more than one value in the finished trials")
    scores, problems = {}, []
    evaluators = {"fANOVA": FanovaImportanceEvaluator(seed=seed), "PED-ANOVA": PedAnovaImportanceEvaluator()}
    for name, evaluator in evaluators.items():
        try:
            with warnings.catch_warnings():  # PED-ANOVA is experimental in Optuna: its warning is noise here
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varied)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few distinct values for it
            problems.append(f"{name}: {first_line(exc)}")
            continue
        if found and all(math.isfinite(v) for v in found.values()):
            scores[name] = {k: float(v) for k, v in found.items()}
        else:
            problems.append(f"{name}: no finite importances")
    return Importance(scores, len(study.trials), "; ".join(problems))
