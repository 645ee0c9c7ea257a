"""When a trial saves a checkpoint: once its last one is ``interval_s`` of training old, and
when it ends (``CheckpointConfig(checkpoint_at_end=True)``: completed, or stopped by ASHA).

Every epoch was the rule before, and at scale it was the driver's largest cost: each
checkpoint is a Ray task and a file upload, and Ray saves an experiment snapshot (every
trial's state, so its cost grows with the number of trials) each time a trial has saved
``num_to_keep`` checkpoints since the last one. With 1,000 replayed trials of 20 epochs the
driver spent 98.5 ms of CPU per result (``benchmarks/driver_overhead.py``). By time, a lost
node or killed driver costs a trial at most ``interval_s`` of training; 0 keeps every epoch.

Example:
    >>> clock = CheckpointClock(interval_s=0)
    >>> clock.mark({"val_dice": 0.5})
    {'val_dice': 0.5, 'should_checkpoint': True}
    >>> CheckpointClock(interval_s=3600).mark({"val_dice": 0.5})
    {'val_dice': 0.5}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune.result import SHOULD_CHECKPOINT


class CheckpointClock:
    """Asks Tune for a checkpoint (``should_checkpoint`` in a result) once one is due.

    Args:
        interval_s: Seconds after the last checkpoint (or the trial's start or restore)
            from which the next epoch's result asks for one; 0: every epoch.
        now: The clock, in seconds (a replayed trial counts its recorded epoch seconds).
    """

    def __init__(self, interval_s: float, now: Callable[[], float] = time.monotonic):
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.interval_s, self._now = interval_s, now
        self.restart()

    def restart(self) -> None:
        """A checkpoint was saved or restored, or a trial started: count from now."""
        self._since = self._now()

    def mark(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result``, asking for a checkpoint if one is due."""
        if self._now() - self._since >= self.interval_s:
            result[SHOULD_CHECKPOINT] = True
        return result
