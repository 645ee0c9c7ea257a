"""Retries that a lost node does not use up.

``search.max_failures`` is the number of retries a user grants a trial for *its own*
failures (a bug, a flaky library call). A node that dies under a trial is not the trial's
failure, yet Ray Tune counts it like one, and worse, retries at once: until Ray declares
the node dead (its health checks take seconds), the retry can be placed on the dying node
again and fail in milliseconds. CI saw a trial use up four retries this way within
seconds, with 0 epochs trained.

:class:`NodeLossRetries` fixes both for failures :func:`~hpsearch.failures.classify_failure`
calls ``transient`` (a dead actor, node or raylet, a closed socket): it gives the retry back
(up to ``max_refunds`` times per trial, so a trial that keeps killing its own process is
not retried forever) and waits before the retry is placed, doubling the wait each time, so
the cluster has time to see the node gone. The wait blocks Tune's event loop; trials keep
training meanwhile and their results queue, which is cheap for an event this rare.

A trial can also fail before it starts: with ``reuse_actors`` (hpsearch's default, it saves
TensorFlow's start-up per trial) Tune hands a new trial a finished trial's cached actor and
sends it ``reset``. If that actor's node or process is gone, Ray 2.60 handles the one
failure twice: the actor's error callback retries the trial (it is put back to wait for a
new actor), then the ``reset`` task's error callback finds the trial waiting (``PENDING``)
and ends it as failed, unretried, without ``on_trial_recover``. A ``reset`` that raises on a
live actor ends the trial unretried too, and the trial stays marked as resetting, so a retry
would never get an actor. CI saw the first case after the node-loss test killed a raylet: a
new trial, 0 epochs, "The actor ... is temporarily unavailable". :func:`retry_failed_actor_reuse`
fixes both in ``TuneController._trial_task_failure``; :class:`NodeLossRetries` installs it at
the start of every search.

Example:
    >>> NodeLossRetries(max_refunds=3, first_wait_s=0.5, max_wait_s=1.5).waits()
    [0.5, 1.0, 1.5]
"""

from __future__ import annotations

import logging
import time

from ray.tune import Callback
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial

from hpsearch.failures import TRANSIENT, classify_failure, trial_error_text

log = logging.getLogger(__name__)


class NodeLossRetries(Callback):
    """Gives back the retry a ``transient`` failure used and waits before the retry.

    Args:
        max_refunds: Transient failures per trial that do not count against
            ``max_failures``; those after them count as usual.
        first_wait_s: The wait before the first such retry; it doubles for each next one.
        max_wait_s: The longest wait.
    """

    def __init__(self, max_refunds: int = 8, first_wait_s: float = 2.0, max_wait_s: float = 20.0):
        if max_refunds < 0 or first_wait_s < 0 or max_wait_s < first_wait_s:
            raise ValueError("NodeLossRetries: need max_refunds >= 0 and 0 <= first_wait_s <= max_wait_s")
        self._max_refunds = max_refunds
        self._first_wait_s = first_wait_s
        self._max_wait_s = max_wait_s
        self._refunds: dict[str, int] = {}

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        retry_failed_actor_reuse()

    def waits(self) -> list[float]:
        """The wait before each refunded retry, in order."""
        return [min(self._first_wait_s * 2**n, self._max_wait_s) for n in range(self._max_refunds)]

    def on_trial_recover(self, iteration, trials, trial, **info):
        # Called after Tune counted the failure and decided to retry (should_recover), before
        # the retry is scheduled: the refund counts for the trial's next failure.
        used = self._refunds.get(trial.trial_id, 0)
        if used >= self._max_refunds or classify_failure(trial_error_text(trial)) != TRANSIENT:
            return
        self._refunds[trial.trial_id] = used + 1
        metadata = trial.run_metadata  # Ray's per-trial record, saved with the experiment state
        metadata.num_failures = max(metadata.num_failures - 1, 0)
        metadata.invalidate_cache()
        wait = self.waits()[used]
        log.warning("trial %s lost its process or node; retrying in %.0f s (not counted in max_failures)",
                    trial.trial_id, wait)
        time.sleep(wait)


# Ray's own method, kept to wrap (and for tests that show the failure without the wrapper).
TUNE_TRIAL_TASK_FAILURE = TuneController._trial_task_failure


def _trial_task_failure(controller, trial, exception):
    resetting = getattr(controller, "_resetting_trials", set())
    if trial.status == Trial.PENDING and trial not in getattr(controller, "_trial_to_actor", {trial: None}):
        # The same failure a second time: the actor manager calls the actor's error callback
        # (_actor_failed: RUNNING, failure handled, trial requeued) and then the reset task's,
        # which lands here for a trial already waiting for its retry. Ray ends it if let through.
        log.debug("trial %s: a failure already handled (%s)", trial.trial_id, type(exception).__name__)
        return None
    if trial in resetting:
        # Left in this set, the trial would be taken for "reset under way" on its retry and
        # never get an actor again.
        resetting.discard(trial)
        if trial.status == Trial.PENDING:
            # The reset raised on a live actor: as _actor_failed does for a new actor that died
            # in its constructor, RUNNING (so the failure is retried) and its slot unstaged.
            controller._set_trial_status(trial, Trial.RUNNING)
            controller._unstage_trial_with_resources(trial)
    return TUNE_TRIAL_TASK_FAILURE(controller, trial, exception)


def retry_failed_actor_reuse() -> None:
    """Make Ray Tune retry a trial whose reused actor failed its ``reset`` (see the module
    docstring) instead of ending it unretried. Safe to call any number of times."""
    needed = ("_trial_task_failure", "_set_trial_status", "_unstage_trial_with_resources")
    if not all(hasattr(TuneController, name) for name in needed):  # another Ray: leave it as it is
        log.warning("Ray Tune's TuneController has changed; a failed actor reuse is not retried")
        return
    TuneController._trial_task_failure = _trial_task_failure
