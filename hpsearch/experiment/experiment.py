"""The Experiment: the one owner of a search's state.

A search lives in an experiment folder ``STORAGE/<job name>-<stamp>``: Ray Tune's state
and checkpoints, hpsearch's :mod:`state <hpsearch.experiment.state>` file, the copies of
the job and search space it ran with, its Optuna study (``optuna.journal``), and, once it
has finished, ``results.json``. Trials added later (``hpsearch run --extend``) run as Ray
Tune runs of their own in sub-folders (``extend-1``, ...); :attr:`Experiment.ray_runs`
lists them all. Its
MLflow parent and child runs are reached through :attr:`Experiment.runs`. The driver,
resume, export, the dashboard and the cluster commands all go through this class; none
of them builds a path into the folder or an MLflow query of its own.

Example:
    >>> experiment = Experiment.open(Path("results/demo-lv-20261202-101500"))  # doctest: +SKIP
    >>> experiment.status, experiment.job.search.metric                        # doctest: +SKIP
    (<SearchStatus.FINISHED: 'finished'>, 'val_dice')
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.errors import HpsearchError
from hpsearch.experiment.state import (
    STATE_FILE,
    DataChange,
    Extension,
    SearchState,
    read_state,
    write_atomic,
    write_state,
)
from hpsearch.outcome import SearchStatus

if TYPE_CHECKING:
    from hpsearch.search.results import TrialSummary
    from hpsearch.spec import Job
    from hpsearch.tracking.runs import SearchRuns

RESULTS_FILE = "results.json"
# The search's Optuna study: a journal file (one appended line per change), not SQLite: a
# per-epoch report costs ~0.5 ms of driver CPU instead of ~4 ms, and it works on NFS.
STUDY_FILE = "optuna.journal"
EXTENSION_PREFIX = "extend-"
JOB_COPY, SPACE_COPY = "job.yaml", "search_space.yaml"
SPLITS_FILE = "splits_final.json"  # the search's folds in nnU-Net's format
# The locked test split's one evaluation (hpsearch.search.holdout): the chosen model, its
# predictions on the test cases, the summary and the per-case table.
MODEL_DIR, TEST_PREDICTIONS = "model", "test_predictions"
TEST_RESULTS, TEST_CASES = "test_results.json", "test_cases.csv"
MAX_NAME_TRIES = 1000


class Experiment:
    """One search's folder, state and MLflow runs. Create with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, state: SearchState):
        self.path, self.state = Path(path), state

    # -- life cycle -------------------------------------------------------------------

    @staticmethod
    def claim_folder(storage: Path, base_name: str) -> Path:
        """Create a new, empty experiment folder ``storage/base_name`` (or ``base_name-2``,
        ``-3``, ... if taken) and return it.

        ``mkdir`` either creates the folder or fails because it exists, atomically, also on
        NFS: two searches started in the same second, in one process or on two machines
        sharing the storage, never get the same folder.
        """
        storage.mkdir(parents=True, exist_ok=True)
        for n in range(1, MAX_NAME_TRIES + 1):
            folder = storage / (base_name if n == 1 else f"{base_name}-{n}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return folder
        raise HpsearchError(f"storage.path {storage}: {MAX_NAME_TRIES} folders named {base_name}* exist; "
                            "clean it up or use another storage.path")

    @classmethod
    def create(cls, folder: Path, state: SearchState, files: dict[str, Path]) -> Experiment:
        """Record a new search in a folder from :meth:`claim_folder`: its state and copies of
        ``files`` (name in the folder -> source), so a resume runs what the search ran."""
        for name, source in files.items():
            shutil.copyfile(source, folder / name)
        state.name = folder.name
        state.created = state.created or _now()
        write_state(folder, state)
        return cls(folder, state)

    @classmethod
    def open(cls, path: Path) -> Experiment:
        """The experiment in an existing folder (reads only its state file).

        Raises:
            HpsearchError: Not an experiment folder, or a damaged state file.
        """
        path = Path(os.path.realpath(Path(path).expanduser()))  # Path.resolve raises on a loop
        return cls(path, read_state(path))

    @staticmethod
    def release_folder(folder: Path) -> None:
        """Give back a claimed folder a search could not start in (only if still empty)."""
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: something was written there, keep it

    # -- what it is ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def status(self) -> SearchStatus:
        return self.state.status

    @functools.cached_property
    def job(self) -> Job:
        """The resolved job the search runs (absolute paths)."""
        from pydantic import ValidationError

        from hpsearch.spec import Job

        try:
            return Job.model_validate(self.state.job)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(["job", *map(str, error["loc"])])
            raise HpsearchError(f"{self.path / STATE_FILE}: {where}: {error['msg']}; the file is damaged or "
                                "from another hpsearch version") from None

    @functools.cached_property
    def runs(self) -> SearchRuns:
        """The search's MLflow runs (parent and children)."""
        from hpsearch.tracking.runs import SearchRuns

        return SearchRuns(self.state.tracking_uri, self.state.parent_run_id, self.state.experiment_id)

    def set_status(self, status: SearchStatus) -> None:
        self.state.status = status
        write_state(self.path, self.state)

    @property
    def study_file(self) -> Path:
        """The Optuna journal file holding the search's study (named :attr:`name`)."""
        return self.path / STUDY_FILE

    @property
    def ray_runs(self) -> list[Path]:
        """Ray Tune's run folders of this search, oldest first: the folder itself, then one
        per extension. The latest is the one ``hpsearch resume`` continues."""
        return [self.path, *(self.path / ext.name for ext in self.state.extensions)]

    def add_extension(self, trials: int) -> Extension:
        """Record a run of ``trials`` more trials (``hpsearch run --extend``) and mark the
        search running again; return it (its Ray Tune run goes in ``path / name``)."""
        number = len(self.state.extensions) + 1
        extension = Extension(name=f"{EXTENSION_PREFIX}{number}", trials=trials,
                              seed=self.job.search.seed + number, at=_now())
        self.state.extensions.append(extension)
        self.set_status(SearchStatus.RUNNING)
        return extension

    def space_file(self) -> Path | None:
        """The search space the search ran with (the copy in the folder if it is there)."""
        copy = self.path / SPACE_COPY
        original = self.state.job.get("search_space")
        return copy if copy.is_file() else (Path(original) if original else None)

    # -- the dataset --------------------------------------------------------------------

    def check_dataset(self, digest: str, files: dict[str, str], *, accept: bool = False) -> list[str]:
        """Refuse a dataset whose content differs from the one the search ran on, unless
        ``accept``: then record the change (state and parent run) and go on with it.

        Returns:
            The names of the changed files (empty when nothing changed).

        Raises:
            HpsearchError: The content changed and the change was not accepted.
        """
        from hpsearch.data.cache import changed_files

        if not self.state.dataset_digest or digest == self.state.dataset_digest:
            return []
        changed = changed_files(self.state.dataset_files, files) if self.state.dataset_files else []
        dataset = self.state.job.get("dataset", {}).get("path", "the dataset")
        if not accept:
            shown = ", ".join(changed[:5]) + (f" (+{len(changed) - 5} more)" if len(changed) > 5 else "")
            raise HpsearchError(
                f"{dataset}: changed since the search started ({shown or 'content differs'}); trials would "
                f"score on different data. Restore it, or resume with --accept-data-change to go on "
                f"(recorded in {self.path.name})")
        self.state.data_changes.append(DataChange(at=_now(), digest_before=self.state.dataset_digest,
                                                  digest_after=digest, files=changed))
        self.state.dataset_digest, self.state.dataset_files = digest, files
        write_state(self.path, self.state)
        self.runs.set_parent_tags({"hpsearch.data_changed": f"{len(self.state.data_changes)} accepted change(s), "
                                   f"last {self.state.data_changes[-1].at}: {', '.join(changed[:20])}"})
        return changed

    def data_info_for(self, digest: str) -> dict[str, Any]:
        """The data description of a checkpoint trained on ``digest``: the current one, or an
        earlier content the user accepted a change from (same classes and preprocessing)."""
        info = dict(self.state.data_info)
        if digest and digest != info.get("digest") and any(
                c.digest_before == digest for c in self.state.data_changes):
            info["digest"] = digest
        return info

    def update_data_info(self, info: dict[str, Any]) -> None:
        self.state.data_info = dict(info)
        write_state(self.path, self.state)

    @property
    def num_folds(self) -> int:
        """Folds the search cross-validates over (1: a single split, or cross_validation off)."""
        splits = self.state.data_info.get("splits") or {}
        off = self.state.job.get("search", {}).get("cross_validation") == "off"
        return 1 if off else max(1, len(splits.get("folds", ())))

    @property
    def objective(self) -> str:
        """What the search ranks by: ``search.metric``, or ``cv_<metric>`` across folds."""
        from hpsearch.search.folds import objective_name

        return objective_name(self.job.search.metric, self.num_folds)

    @property
    def test_cases(self) -> list[str]:
        """The locked test split's case ids (empty when the search has none)."""
        return list((self.state.data_info.get("splits") or {}).get("test", ()))

    def file(self, name: str) -> Path:
        """A file or folder of the experiment by its constant name (``SPLITS_FILE``, ``MODEL_DIR``, ...)."""
        return self.path / name

    # -- results ------------------------------------------------------------------------

    def write_results(self, rows: list[TrialSummary], metric: str, mode: str) -> Path:
        """Write ``results.json`` (best first) and mark the search finished."""
        payload = {
            "metric": metric,
            "mode": mode,
            "best": dataclasses.asdict(rows[0]) if rows else None,
            "trials": [dataclasses.asdict(row) for row in rows],
        }
        # NaN (a trial with no finite score) stays NaN: Python's json reads it back.
        path = self.path / RESULTS_FILE
        write_atomic(path, json.dumps(payload, indent=2, default=str))
        self.set_status(SearchStatus.FINISHED)
        return path

    def results(self) -> dict[str, Any]:
        """The results of a finished search.

        Raises:
            HpsearchError: The search has not finished (interrupted or still running), or
                its results file is damaged.
        """
        path = self.path / RESULTS_FILE
        if not path.is_file():
            state = "was interrupted" if self.status is SearchStatus.INTERRUPTED else "has not finished"
            raise HpsearchError(f"{self.path}: the search {state}; run `hpsearch resume {self.path}` first")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise HpsearchError(f"{path}: damaged ({str(exc)[:100]}); rewrite it with "
                                f"`hpsearch resume {self.path}`") from None

    def write_test_results(self, payload: dict[str, Any]) -> Path:
        """Write the locked test split's evaluation summary (``test_results.json``)."""
        path = self.path / TEST_RESULTS
        write_atomic(path, json.dumps(payload, indent=2, default=str))
        return path

    def test_results(self) -> dict[str, Any] | None:
        """The locked test split's evaluation, once it has run (else ``None``)."""
        path = self.path / TEST_RESULTS
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def checkpoints(self) -> dict[str, str]:
        """Trial id -> its best checkpoint folder, for a finished search (else empty)."""
        try:
            rows = self.results().get("trials", [])
        except HpsearchError:
            return {}
        return {row["trial_id"]: row.get("checkpoint", "") for row in rows if "trial_id" in row}


def base_name(job_name: str, now: dt.datetime | None = None) -> str:
    """``<job name>-YYYYmmdd-HHMMSS``: the experiment folder's name before any collision suffix."""
    return f"{job_name}-{(now or dt.datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

