"""What a search shows while it runs: trials ended of total, running, best so far, time.

On a terminal, a live ``rich`` progress bar (redrawn in place, a few times a second at
most); elsewhere (CI, ``hpsearch logs``, a file) one plain line per ended trial, since a
redrawn bar turns into thousands of lines there. Both say the same: ended/total, how many
run, the best value so far, elapsed time and an estimate of the rest (from the mean time
per ended trial at the current concurrency).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from ray import tune

from hpsearch.outcome import FAILURE_KEY

Echo = Callable[[str], None]


class SearchProgress(tune.Callback):
    """A Tune callback reporting a search's progress.

    Args:
        total: Trials the search will run (``search.num_trials``).
        metric, mode: The search metric, for "best so far".
        echo: Where plain lines go (the console by default).
        live: A live bar (default: when stdout is a terminal).
    """

    def __init__(self, total: int, metric: str, mode: str, echo: Echo = print, live: bool | None = None):
        self.total, self.metric, self.mode, self.echo = total, metric, mode, echo
        self.live = sys.stdout.isatty() if live is None else live
        self.ended, self.running, self.best = 0, set(), math.nan
        self._best_folds = 0  # cross-validation: the best is a mean over the most folds any trial finished
        self.started = time.monotonic()
        self._bar = self._task = None

    def __getstate__(self):  # Tune pickles callbacks into its experiment state: not the console
        return {"total": self.total, "metric": self.metric, "mode": self.mode}

    def __setstate__(self, state):
        self.__init__(**state)

    # Tune hooks

    def setup(self, **info):
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), transient=False, refresh_per_second=2)
            self._task = self._bar.add_task(self._status(), total=self.total)
            self._bar.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value, folds = result.get(self.metric), int(result.get("cv_folds", 1))
        if folds == 0 or folds < self._best_folds:  # fold 0 in progress, or fewer folds: not comparable
            value = None
        if isinstance(value, (int, float)) and math.isfinite(value) and (
                math.isnan(self.best) or folds > self._best_folds
                or (value > self.best if self.mode == "max" else value < self.best)):
            self.best, self._best_folds = float(value), folds
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        failure = (trial.last_result or {}).get(FAILURE_KEY)
        self._ended(trial, f"failed ({failure})" if failure else "ended")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, "failed")

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.stop()

    # the display

    def _ended(self, trial, outcome: str) -> None:
        self.ended += 1
        self.running.discard(trial.trial_id)
        last = trial.last_result or {}
        if last.get("cv_folds") == 0:  # cross-validated, stopped inside fold 0: no mean over folds
            best = "no fold finished"
        else:
            folds = f" over {last['cv_folds']} fold(s)" if last.get("cv_folds") else ""
            best = f"best {self.metric} {last.get(f'best_{self.metric}', math.nan):.4f}{folds}"
        line = f"  trial {trial.trial_id} {outcome} after {last.get('training_iteration', 0)} epoch(s): {best} | " \
               f"{self._status()}"
        if self._bar is not None:
            self._bar.console.print(line, highlight=False)
        else:
            self.echo(line)
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.ended, description=self._status())

    def _status(self) -> str:
        elapsed = time.monotonic() - self.started
        folds = f" ({self._best_folds} folds)" if self._best_folds > 1 else ""
        text = f"{self.ended}/{self.total} ended, {len(self.running)} running, best {self.metric} {self.best:.4f}{folds}, "
        text += f"elapsed {_duration(elapsed)}"
        if self.ended and self.ended < self.total:
            # Trials end at about (ended / elapsed) per second at the current concurrency.
            text += f", about {_duration(elapsed / self.ended * (self.total - self.ended))} left"
        return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
