"""Cross-validation inside a trial: folds in sequence, and the clock ASHA promotes on.

A cross-validated trial trains fold 0 for its ``epochs``, then fold 1, and so on; each fold
is a fresh model on that fold's training cases. What it reports is built here, by a pure
:class:`FoldProgress`, so the rules are testable without Ray:

* ``cv_<metric>`` (the search's objective): while fold 0 trains, that epoch's value, as a
  single-split search reports it; once ``n`` folds are done, the mean of their best values
  (each fold keeps the weights of its best epoch), held until the next fold is done.
* ``budget`` (ASHA's clock): the epoch while fold 0 trains; ``n * max_epochs`` once ``n``
  folds are done, held while the next one trains. Inside fold 0, Ray's ASHA decides at its
  epoch rungs (:func:`fold_rungs` below ``max_epochs``), comparing trials at the same epoch
  as a single-split search does. At every fold boundary after it
  (:class:`~hpsearch.search.schedulers.FoldASHAScheduler`), a trial's mean over its folds goes on
  only if it is in the top ``1 / reduction_factor`` of the latest fold means of the other
  trials that finished fold 0: means over different numbers of folds estimate the same
  cross-validated Dice, so they share one pool, and a trial let through early (when few
  others had finished fold 0) is stopped at its next boundary once better ones have.

Example:
    >>> p = FoldProgress(num_folds=3, max_epochs=4)
    >>> p.budget(epoch=2), p.objective(0.5)
    (2, 0.5)
    >>> p.finish_fold(best_value=0.6, best_epoch=4, best_val_dice=0.6)
    >>> p.budget(epoch=1), p.objective(0.1)      # fold 1 training: fold 0's result held
    (4, 0.6)
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

FOLDS_FILE = "folds.json"  # in a cross-validated trial's checkpoint, beside the current fold's state


def objective_name(metric: str, num_folds: int) -> str:
    """What a search optimises and ranks by: ``metric`` on one split, ``cv_<metric>`` across folds.

    Example:
        >>> objective_name("val_dice", 1), objective_name("val_dice", 5)
        ('val_dice', 'cv_val_dice')
    """
    return f"cv_{metric}" if num_folds > 1 else metric


def fold_rungs(grace_period: int, reduction_factor: float, max_epochs: int, num_folds: int) -> list[float]:
    """The ``budget`` values at which a fold-fidelity ASHA decides (see the module docstring).

    Example:
        >>> fold_rungs(2, 3, 20, 5)
        [2, 6, 18, 20, 40, 60, 80]
    """
    rungs, epoch = set(), grace_period
    while epoch < max_epochs:
        rungs.add(epoch)
        epoch *= reduction_factor
    rungs.update(max_epochs * n for n in range(1, num_folds))
    return sorted(rungs)


def fold_dir(fold: int) -> str:
    """The checkpoint sub-folder of a completed fold (a full :meth:`Trainer.save` folder)."""
    return f"fold_{fold}"


def fold_zero(checkpoint: Path) -> Path:
    """The folder of a trial checkpoint whose model belongs to the recorded split: ``fold_0/``
    in a cross-validated trial's checkpoint (its top level holds its *last* fold, trained on
    other cases), the checkpoint itself otherwise. A search's ``data_info`` is fold 0's."""
    checkpoint = Path(checkpoint)
    return checkpoint / fold_dir(0) if (checkpoint / FOLDS_FILE).is_file() else checkpoint


@dataclasses.dataclass
class FoldProgress:
    """Which fold a trial is on and what its completed folds achieved.

    Attributes:
        num_folds: Folds of the search (k).
        max_epochs: The search's epoch cap per fold (``scheduler.max_epochs``): one fold's
            width on the ``budget`` clock, whatever epochs the trial samples.
        done: One dict per completed fold: ``fold``, ``best_value``, ``best_epoch``,
            ``best_val_dice``, ``dir``.
    """

    num_folds: int
    max_epochs: int
    done: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def current(self) -> int:
        """The fold being trained (``num_folds`` when all are done)."""
        return len(self.done)

    @property
    def finished(self) -> bool:
        return self.current >= self.num_folds

    def finish_fold(self, *, best_value: float, best_epoch: int, best_val_dice: float,
                    intensity: dict | None = None) -> None:
        """Record the current fold's result (``intensity``: its normalisation statistics,
        which patch mode's CT scheme fits on each fold's training cases)."""
        fold = self.current
        self.done.append({"fold": fold, "best_value": float(best_value), "best_epoch": int(best_epoch),
                          "best_val_dice": float(best_val_dice), "dir": fold_dir(fold),
                          **({"intensity": intensity} if intensity else {})})

    def budget(self, epoch: int) -> int:
        """ASHA's clock at ``epoch`` of the current fold (see the module docstring)."""
        return epoch if not self.done else len(self.done) * self.max_epochs

    def objective(self, current_value: float) -> float:
        """``cv_<metric>``: the current fold-0 value, then the mean over completed folds."""
        return current_value if not self.done else self.mean

    @property
    def mean(self) -> float:
        values = [d["best_value"] for d in self.done if math.isfinite(d["best_value"])]
        return statistics.fmean(values) if values else math.nan

    @property
    def std(self) -> float:
        """Spread over completed folds (population std; 0 for one fold)."""
        values = [d["best_value"] for d in self.done if math.isfinite(d["best_value"])]
        return statistics.pstdev(values) if values else math.nan

    def report(self, metric: str, fold: int, epoch: int, current_value: float) -> dict[str, float]:
        """The cross-validation keys of the result of ``epoch`` of ``fold`` (recorded first
        with :meth:`finish_fold` when it was the fold's last)."""
        objective = objective_name(metric, self.num_folds)
        return {
            objective: self.objective(current_value),
            f"{objective}_std": self.std if self.done else math.nan,
            "cv_folds": len(self.done),
            "fold": fold,
            "fold_epoch": epoch,
            "budget": self.budget(epoch),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"num_folds": self.num_folds, "max_epochs": self.max_epochs, "current": self.current,
                "done": list(self.done)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FoldProgress:
        return cls(int(raw["num_folds"]), int(raw["max_epochs"]), list(raw["done"]))
