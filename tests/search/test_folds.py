"""What a cross-validated trial reports, epoch by epoch (the rules ASHA and the ranking rely on)."""

import math

import pytest

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from hpsearch.search.folds import FoldProgress, fold_rungs, objective_name
from hpsearch.search.results import TrialSummary, sort_rows


def _run(progress: FoldProgress, epochs: int, fold_values: list[list[float]]):
    """Feed per-epoch values fold by fold; return each epoch's report."""
    reports = []
    for fold, values in enumerate(fold_values):
        for epoch, value in enumerate(values, start=1):
            if epoch == epochs:
                progress.finish_fold(best_value=max(values), best_epoch=values.index(max(values)) + 1,
                                     best_val_dice=max(values))
            reports.append(progress.report("val_dice", fold, epoch, value))
    return reports


def test_budget_is_epochs_in_fold_zero_then_whole_folds():
    # max_epochs 4, a trial sampling 3 epochs: fold 0 ends at budget 4 (one fold's width).
    reports = _run(FoldProgress(3, max_epochs=4), 3, [[0.1, 0.3, 0.2], [0.5, 0.6, 0.4], [0.2, 0.7, 0.1]])
    assert [r["budget"] for r in reports] == [1, 2, 4, 4, 4, 8, 8, 8, 12]
    assert [r["cv_folds"] for r in reports] == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert [r["fold"] for r in reports] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_objective_is_the_epoch_value_then_the_mean_of_fold_bests_held_between_folds():
    reports = _run(FoldProgress(3, max_epochs=3), 3, [[0.1, 0.3, 0.2], [0.5, 0.6, 0.4], [0.2, 0.9, 0.1]])
    cv = [r["cv_val_dice"] for r in reports]
    assert cv[:2] == [0.1, 0.3]                       # fold 0 in progress: as a single split reports
    assert cv[2:5] == pytest.approx([0.3] * 3)        # fold 0's best, held while fold 1 trains
    assert cv[5:8] == pytest.approx([0.45] * 3)       # mean of 0.3 and 0.6
    assert cv[8] == pytest.approx(0.6)                # mean of 0.3, 0.6, 0.9
    assert reports[8]["cv_val_dice_std"] == pytest.approx(math.sqrt(((0.3) ** 2 + 0 + 0.3**2) / 3))
    assert math.isnan(reports[0]["cv_val_dice_std"])


def test_round_trip_through_a_checkpoint():
    progress = FoldProgress(5, max_epochs=2)
    progress.finish_fold(best_value=0.8, best_epoch=2, best_val_dice=0.8)
    again = FoldProgress.from_dict(progress.to_dict())
    assert again == progress and again.current == 1 and not again.finished


@pytest.mark.parametrize("folds, expected", [(1, "val_dice"), (2, "cv_val_dice"), (5, "cv_val_dice")])
def test_objective_name(folds, expected):
    assert objective_name("val_dice", folds) == expected


def _row(trial, value, folds, status="completed"):
    return TrialSummary(trial, {}, value, 0, 1, 1, status, folds=folds)


def test_more_folds_rank_first_then_the_value():
    rows = [_row("lucky", 0.95, 1, "stopped_early"), _row("five", 0.80, 5), _row("five-better", 0.82, 5),
            _row("none", 0.99, 0, "stopped_early"), _row("failed", float("nan"), 0, "failed")]
    assert [r.trial_id for r in sort_rows(rows, "max")] == ["five-better", "five", "lucky", "none", "failed"]


@pytest.mark.parametrize("grace, factor, max_epochs, folds, expected", [
    (2, 3, 20, 5, [2, 6, 18, 20, 40, 60, 80]),     # epoch rungs in fold 0, then every fold boundary
    (1, 2, 2, 3, [1, 2, 4]),
    (4, 2, 4, 2, [4]),                              # grace = max_epochs: fold 0 trains whole
])
def test_fold_rungs(grace, factor, max_epochs, folds, expected):
    assert fold_rungs(grace, factor, max_epochs, folds) == expected


def test_the_real_asha_decides_in_fold_0_then_at_every_fold_boundary():
    from hpsearch.search.schedulers import FoldASHAScheduler

    scheduler = FoldASHAScheduler([1, 2, 4], 2, time_attr="budget", max_t=6, grace_period=1, reduction_factor=2,
                                  metric="cv_val_dice", mode="max")
    assert [m for m, _ in scheduler._brackets[0]._rungs] == [1]   # Ray's bracket: the epoch rungs of fold 0
    early, good, best, bad = (Trial("trainable", stub=True, trial_id=t) for t in ("early", "good", "best", "bad"))
    for trial in (early, good, best, bad):
        scheduler.on_trial_add(None, trial)

    def report(trial, budget, value):
        return scheduler.on_trial_result(None, trial, {"budget": budget, "cv_val_dice": value})

    assert report(early, 1, 0.4) == TrialScheduler.CONTINUE
    assert report(early, 2, 0.5) == TrialScheduler.CONTINUE   # fold 0 done, nobody to compare with: fold 1
    assert report(early, 2, 0.5) == TrialScheduler.CONTINUE   # fold 1 training: budget held, no new decision
    assert report(bad, 1, 0.1) == TrialScheduler.STOP         # epoch rung in fold 0: below the early trial
    assert report(good, 1, 0.5) == TrialScheduler.CONTINUE
    assert report(good, 2, 0.8) == TrialScheduler.CONTINUE
    assert report(best, 1, 0.6) == TrialScheduler.CONTINUE
    assert report(best, 2, 0.9) == TrialScheduler.CONTINUE
    # The early trial's 2-fold mean meets the 1-fold means of better trials: no third fold.
    assert report(early, 4, 0.5) == TrialScheduler.STOP
    assert report(good, 4, 0.85) == TrialScheduler.CONTINUE   # top half of the others' {0.5, 0.9}: above 0.7
    assert report(best, 4, 0.88) == TrialScheduler.CONTINUE
    assert report(best, 6, 0.87) == TrialScheduler.STOP       # every fold done


def test_progress_shows_the_best_mean_over_the_most_folds():
    from hpsearch.search.progress import SearchProgress

    lines = []
    progress = SearchProgress(3, "cv_val_dice", "max", echo=lines.append, live=False)
    a, b, c = (Trial("trainable", stub=True, trial_id=t) for t in "abc")
    progress.on_trial_result(0, [], a, {"cv_val_dice": 0.95, "cv_folds": 0})   # fold 0 in progress: no estimate
    assert math.isnan(progress.best)
    progress.on_trial_result(0, [], a, {"cv_val_dice": 0.90, "cv_folds": 1})
    progress.on_trial_result(0, [], b, {"cv_val_dice": 0.80, "cv_folds": 2})   # more folds win over a higher 1-fold mean
    progress.on_trial_result(0, [], c, {"cv_val_dice": 0.99, "cv_folds": 1})
    assert (progress.best, progress._status().split(", ")[2]) == (0.80, "best cv_val_dice 0.8000 (2 folds)")
    c.update_last_result({"training_iteration": 2, "cv_folds": 0, "cv_val_dice": 0.5})
    progress.on_trial_complete(0, [], c)
    assert lines[-1].startswith("  trial c ended after 2 epoch(s): no fold finished | 1/3 ended")
