"""The one rule that names how a trial ended, table-tested."""

from __future__ import annotations

import pytest

from hpsearch.outcome import ENDED, Outcome, decide_outcome


@pytest.mark.parametrize(
    "epochs_run, epoch_cap, failed, stopped, expected",
    [
        (20, 20, False, False, Outcome.COMPLETED),
        (4, 20, False, True, Outcome.STOPPED_EARLY),
        (4, 20, False, False, Outcome.STOPPED_EARLY),  # below its cap: something stopped it
        (4, 4, False, True, Outcome.COMPLETED),        # a sampled epochs=4 is complete at 4
        (3, 20, True, False, Outcome.FAILED),
        (0, 0, True, False, Outcome.FAILED),           # never reported an epoch
        (5, None, False, True, Outcome.STOPPED_EARLY),  # cap unknown: Tune's stop decides
        (5, None, False, False, Outcome.COMPLETED),
    ],
)
def test_decide_outcome(epochs_run, epoch_cap, failed, stopped, expected):
    assert decide_outcome(epochs_run=epochs_run, epoch_cap=epoch_cap, failed=failed,
                          stopped_by_scheduler=stopped) is expected


def test_words_are_the_tag_values_and_unknown_reads_as_running():
    assert [o.value for o in Outcome] == ["completed", "stopped_early", "failed", "lost", "running"]
    assert Outcome.parse("stopped_early") is Outcome.STOPPED_EARLY and "stopped_early" == Outcome.STOPPED_EARLY
    assert Outcome.parse(None) is Outcome.RUNNING and Outcome.parse("bogus") is Outcome.RUNNING
    assert ENDED == {Outcome.COMPLETED, Outcome.STOPPED_EARLY, Outcome.FAILED, Outcome.LOST}
    assert [o for o in Outcome if o.scored] == [Outcome.COMPLETED, Outcome.STOPPED_EARLY]
