"""StudySearch (Ray's OptunaSearch over the search's own study) with real Optuna storage."""

from __future__ import annotations

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from hpsearch.search.searchers import StudySearch
from hpsearch.space import parse_space, to_optuna

SPACE = {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}


def _searcher(storage) -> StudySearch:
    return StudySearch(space=to_optuna(parse_space(SPACE, "unet", "space.yaml")), metric="val_dice", mode="max",
                       sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name="search")


def test_a_trial_rerun_after_the_study_finished_it_changes_nothing(tmp_path):
    """A killed driver's search resumes from Ray's last experiment snapshot; a trial that ended
    after it runs again, but the study (a journal file, never rolled back) has it finished."""
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    searcher = _searcher(storage)
    assert searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val_dice": 0.5, "training_iteration": 1})
    searcher.save(str(tmp_path / "snapshot.pkl"))  # Ray's snapshot: the trial still running
    searcher.on_trial_complete("t1", {"val_dice": 0.7, "training_iteration": 2})

    resumed = _searcher(storage)
    resumed.restore(str(tmp_path / "snapshot.pkl"))
    for epoch, value in ((1, 0.4), (2, 0.6)):  # the rerun's results: the study keeps the first run's
        resumed.on_trial_result("t1", {"val_dice": value, "training_iteration": epoch})
    resumed.on_trial_complete("t1", {"val_dice": 0.6, "training_iteration": 2})
    trial, = optuna.load_study(storage=storage, study_name="search").trials
    assert trial.state is optuna.trial.TrialState.COMPLETE and trial.value == 0.7
    assert trial.intermediate_values == {1: 0.5, 2: 0.7}
    assert resumed.suggest("t2")  # the search goes on
