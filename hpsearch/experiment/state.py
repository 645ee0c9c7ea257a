"""What an experiment folder remembers about its search: ``hpsearch-search.json``, typed.

Written atomically (a temporary file renamed over the old one), so a crash or a full disk
mid-write leaves the previous state, never half a file. A file that does not parse is
refused in one line, not a traceback. Reading needs no Ray, Optuna, MLflow or TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpsearch.errors import HpsearchError
from hpsearch.outcome import SearchStatus

STATE_FILE = "hpsearch-search.json"
FORMAT = 2  # 1: the session-1 file (ids, job, data_info); 2 adds name, status, dataset files


class DataChange(BaseModel):
    """A change of the dataset a user accepted when resuming (``resume --accept-data-change``)."""

    at: str
    digest_before: str
    digest_after: str
    files: list[str]


class Extension(BaseModel):
    """A run of more trials added to a finished search (``hpsearch run --extend``).

    Attributes:
        name: Ray Tune's run folder inside the experiment folder (``extend-1``, ...).
        trials: Trials it adds.
        seed: Its sampler's seed (the search's seed + its number: a random sampler with the
            search's own seed would propose the first trials' configurations again).
        at: When it started (ISO 8601, UTC).
    """

    name: str
    trials: int
    seed: int
    at: str


class SearchState(BaseModel):
    """The experiment folder's record of one search.

    Attributes:
        name: The folder's name, also Ray Tune's experiment name and the parent run's name.
        job: The resolved job (absolute paths) as plain JSON.
        tracking_uri, experiment_id, parent_run_id: Where MLflow keeps the search.
        dataset_digest: SHA-256 of the dataset's content the search started on (or last
            accepted); resume refuses another.
        dataset_files: Per-file SHA-256 behind ``dataset_digest``, to name what changed.
        data_info: The prepared data's description (classes, splits, preprocessing).
        status: ``running``, ``interrupted`` or ``finished``.
        created: When the search started (ISO 8601, UTC).
        data_changes: Dataset changes accepted on resume, oldest first.
        extensions: Runs of more trials added after it finished, oldest first.
    """

    model_config = ConfigDict(extra="ignore")  # a newer hpsearch may add keys

    format: int = FORMAT
    name: str = ""
    job: dict[str, Any]
    tracking_uri: str = Field(min_length=1)
    experiment_id: str | None = None
    parent_run_id: str = Field(min_length=1)
    dataset_digest: str = ""
    dataset_files: dict[str, str] = Field(default_factory=dict)
    data_info: dict[str, Any] = Field(default_factory=dict)
    status: SearchStatus = SearchStatus.RUNNING
    created: str = ""
    data_changes: list[DataChange] = Field(default_factory=list)
    extensions: list[Extension] = Field(default_factory=list)


def read_state(folder: Path) -> SearchState:
    """The state of an experiment folder.

    Raises:
        HpsearchError: No such folder, not an experiment folder, or a damaged state file.
    """
    path = folder / STATE_FILE
    if not folder.is_dir():
        raise HpsearchError(f"{folder}: no such folder; pass the experiment folder `hpsearch run` printed")
    if not path.is_file():
        raise HpsearchError(f"{folder}: not an hpsearch experiment folder (no {STATE_FILE}); "
                            "pass the folder `hpsearch run` printed")
    try:
        raw = json.loads(path.read_text())
        state = SearchState.model_validate(raw)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValidationError is a ValueError
        what = _first_problem(exc)
        raise HpsearchError(f"{path}: damaged ({what}); restore it from a backup, or start the search "
                            "again with `hpsearch run`") from None
    if not state.dataset_digest:  # a format-1 file: the digest is inside data_info
        state.dataset_digest = str(state.data_info.get("digest", ""))
    state.name = state.name or folder.name
    return state


def write_state(folder: Path, state: SearchState) -> None:
    """Replace the state file atomically."""
    write_atomic(folder / STATE_FILE, json.dumps(state.model_dump(mode="json"), indent=2, default=str))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        return f"{where}: {error['msg']}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at line {exc.lineno}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
