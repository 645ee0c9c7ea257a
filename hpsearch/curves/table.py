"""A learning-curve table: the full per-epoch curves of many configurations of one search
space on one task, recorded once and replayed many times.

The research field measures search strategies this way (LCBench, HPOBench, YAHPO Gym,
Syne Tune's blackbox repository): a search replayed against recorded curves costs
milliseconds per epoch instead of seconds, so hundreds of seeded searches fit in minutes.
A replayed trial answers from the recorded configuration *nearest* to the one the sampler
proposed (:meth:`CurveTable.nearest`), in the space's own geometry: log scale for
``loguniform`` and ``int`` with ``log``, linear for ``uniform`` and ``int``, and 0 or 1
for a ``choice``.

Curves are recorded to ``max_epochs`` with ``epochs`` unused (the trainer's learning-rate
schedule counts steps, not epochs, so a shorter run is a prefix of a longer one); a
configuration's sampled ``epochs`` only cuts its curve (:meth:`CurveTable.curve`).

The file is one compressed ``.npz``: the arrays, plus the space, the configurations and
``meta`` (task, data, machine, command, date) as JSON.

Example:
    >>> import numpy as np
    >>> space = {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    ...          "loss": {"type": "choice", "values": ["ce", "dice"]}}
    >>> table = CurveTable("toy", space, [{"learning_rate": 1e-4, "loss": "ce"},
    ...                                   {"learning_rate": 1e-2, "loss": "dice"}],
    ...                    val_dice=np.array([[0.1, 0.2], [0.3, 0.6]]),
    ...                    val_loss=np.array([[1.0, 0.9], [0.8, 0.5]]),
    ...                    epoch_seconds=np.ones((2, 2)))
    >>> table.nearest({"learning_rate": 5e-3, "loss": "dice"}), table.best()
    (1, 0.6)
    >>> table.curve(1, epochs=1)["val_dice"].tolist()
    [0.3]
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.errors import HpsearchError

# Names whose value caps the curve instead of choosing it (see the module docstring).
CAP_PARAMS = frozenset({"epochs"})
CURVE_KEYS = ("val_dice", "val_loss", "epoch_seconds")


@dataclasses.dataclass(frozen=True, eq=False)
class CurveTable:
    """Recorded learning curves of ``configs`` (one row each) in ``space``.

    Attributes:
        name: The table's name, e.g. ``lv-unet``.
        space: The search space the configurations were drawn from, as in
            ``search_spaces/*.yaml`` (plain dicts: ``{"type": ..., "low": ...}``).
        configs: The recorded configurations (the sampled values of ``space``).
        val_dice: ``(n, max_epochs)`` validation Dice after each epoch; NaN after a
            curve ended early (a diverged or failed run).
        val_loss: ``(n, max_epochs)``, the same for validation loss.
        epoch_seconds: ``(n, max_epochs)`` wall seconds each epoch took when recorded.
        meta: How the table was made: task, dataset, machine, command, date.
    """

    name: str
    space: dict[str, dict[str, Any]]
    configs: list[dict[str, Any]]
    val_dice: np.ndarray
    val_loss: np.ndarray
    epoch_seconds: np.ndarray
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        shapes = {key: np.shape(getattr(self, key)) for key in CURVE_KEYS}
        if len(set(shapes.values())) != 1 or len(shapes["val_dice"]) != 2 or shapes["val_dice"][0] != len(self.configs):
            raise ValueError(f"CurveTable {self.name}: curves must all be (len(configs), max_epochs), got {shapes}")
        for key in CURVE_KEYS:
            object.__setattr__(self, key, np.asarray(getattr(self, key), dtype=np.float64))
        object.__setattr__(self, "_coords", np.array([self._coordinates(c) for c in self.configs]).reshape(len(self.configs), -1))

    @property
    def max_epochs(self) -> int:
        return int(self.val_dice.shape[1])

    def __len__(self) -> int:
        return len(self.configs)

    def best(self) -> float:
        """The best validation Dice any configuration reached at any epoch."""
        return float(np.nanmax(self.val_dice))

    def nearest(self, config: dict[str, Any]) -> int:
        """The row of the recorded configuration nearest to ``config`` in the space's geometry."""
        distance = ((self._coords - np.array(self._coordinates(config))) ** 2).sum(axis=1)
        return int(np.argmin(distance))

    def curve(self, row: int, epochs: int | None = None) -> dict[str, np.ndarray]:
        """Row ``row``'s curves, cut at ``epochs`` (and where the recorded run ended)."""
        dice = self.val_dice[row]
        ended = int(np.argmax(np.isnan(dice))) if np.isnan(dice).any() else self.max_epochs
        stop = min(ended, epochs or self.max_epochs)
        return {key: getattr(self, key)[row, :stop] for key in CURVE_KEYS}

    def _coordinates(self, config: dict[str, Any]) -> list[float]:
        coords: list[float] = []
        for name, dist in sorted(self.space.items()):
            if name in CAP_PARAMS:
                continue
            value = config.get(name)
            if dist["type"] == "choice":
                coords.extend(1.0 if value == v else 0.0 for v in dist["values"])
                continue
            low, high = float(dist["low"]), float(dist["high"])
            log = dist["type"] == "loguniform" or dist.get("log", False)
            if value is None or high == low:
                coords.append(0.5)
            elif log:
                coords.append((math.log(float(value)) - math.log(low)) / (math.log(high) - math.log(low)))
            else:
                coords.append((float(value) - low) / (high - low))
        return coords

    def save(self, path: str | Path) -> Path:
        """Write the table as one compressed ``.npz``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"name": self.name, "space": self.space, "configs": self.configs, "meta": self.meta}
        with path.open("wb") as f:
            np.savez_compressed(f, header=np.array(json.dumps(header, default=_plain)),
                                **{key: getattr(self, key).astype(np.float32) for key in CURVE_KEYS})
        return path

    @classmethod
    def load(cls, path: str | Path) -> CurveTable:
        """Read a table written by :meth:`save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as f:
                header = json.loads(str(f["header"]))
                curves = {key: f[key] for key in CURVE_KEYS}
        except (OSError, EOFError, KeyError, ValueError) as exc:  # EOFError: an empty file
            raise HpsearchError(f"{path}: not a learning-curve table ({exc}); record one with "
                                "benchmarks/record_curves.py") from None
        return cls(header["name"], header["space"], header["configs"], meta=header.get("meta", {}), **curves)


def _plain(value: Any) -> Any:
    """JSON for the numpy scalars a sampler may hand back."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
