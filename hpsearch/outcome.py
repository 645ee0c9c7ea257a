"""How a trial ended: the one vocabulary every part of hpsearch uses, and the one rule.

The words are what MLflow's ``hpsearch.status`` tag, ``results.json``, the results table
and the dashboard show; :func:`decide_outcome` is the only place that turns what a trial
did into one of them.

Example:
    >>> decide_outcome(epochs_run=4, epoch_cap=20)
    <Outcome.STOPPED_EARLY: 'stopped_early'>
    >>> decide_outcome(epochs_run=20, epoch_cap=20)
    <Outcome.COMPLETED: 'completed'>
    >>> decide_outcome(epochs_run=3, epoch_cap=20, failed=True)
    <Outcome.FAILED: 'failed'>
    >>> Outcome.STOPPED_EARLY.scored, Outcome.FAILED.ended
    (True, True)
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """A trial's state as recorded in MLflow and ``results.json``.

    * ``running``: started and not ended (an interrupted search's unfinished trial);
    * ``completed``: trained every epoch it was given;
    * ``stopped_early``: stopped by the scheduler (ASHA) before its last epoch;
    * ``failed``: raised, after its retries (``hpsearch.error``, ``hpsearch.failure`` say why);
    * ``lost``: started by a driver that was killed before Ray saved the trial; the resumed
      search proposed another trial in its place.
    """

    COMPLETED = "completed"
    STOPPED_EARLY = "stopped_early"
    FAILED = "failed"
    LOST = "lost"
    RUNNING = "running"

    @property
    def ended(self) -> bool:
        """Whether the trial will not train again in this search."""
        return self is not Outcome.RUNNING

    @property
    def scored(self) -> bool:
        """Whether the trial's best value counts when picking the search's best trial."""
        return self in (Outcome.COMPLETED, Outcome.STOPPED_EARLY)

    @classmethod
    def parse(cls, text: str | None) -> Outcome:
        """The outcome a tag or file names; an unknown or missing word reads as ``running``."""
        try:
            return cls(text)
        except ValueError:
            return cls.RUNNING


ENDED = frozenset(o for o in Outcome if o.ended)
# Result keys of a trial that met a failure a retry cannot fix: it reports them and ends
# instead of raising, so Ray does not retry it (see hpsearch.failures).
FAILURE_KEY, ERROR_KEY = "hpsearch_failure", "hpsearch_error"


def decide_outcome(*, epochs_run: int, epoch_cap: int | None, failed: bool = False,
                   stopped_by_scheduler: bool = False) -> Outcome:
    """The outcome of a trial that has ended.

    Args:
        epochs_run: Epochs the trial trained.
        epoch_cap: Epochs it was given (its sampled ``epochs``, at most the scheduler's
            ``max_epochs``); None when unknown, then ``stopped_by_scheduler`` decides.
        failed: It raised and Ray gave up on it, or it reported a recurring failure.
        stopped_by_scheduler: Ray Tune's scheduler or a stopper ended it (Tune sets
            ``done`` on its last result).
    """
    if failed:
        return Outcome.FAILED
    if epoch_cap:
        return Outcome.COMPLETED if epochs_run >= epoch_cap else Outcome.STOPPED_EARLY
    return Outcome.STOPPED_EARLY if stopped_by_scheduler else Outcome.COMPLETED


class SearchStatus(enum.StrEnum):
    """A whole search's state: the parent run's ``hpsearch.status`` and the experiment folder's.

    ``running`` while a driver works on it (or was killed: only a live driver can tell),
    ``interrupted`` after Ctrl-C or ``hpsearch stop`` (resume continues it), ``finished``
    once every trial has ended and the results are written.
    """

    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FINISHED = "finished"
