"""Reading YAML files and turning validation errors into one line per problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hpsearch.errors import HpsearchError


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, or an :class:`HpsearchError` saying why not."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HpsearchError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HpsearchError(f"{path}: cannot read ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HpsearchError(f"{path}:{where}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise HpsearchError(f"{path}: expected a mapping of keys at the top level")
    return raw


def format_validation_error(path: Path, exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``file: key.path: reason (got value)``."""
    lines = []
    for error in exc.errors():
        parts = [prefix] if prefix else []
        parts += [str(part) for part in error["loc"] if not _is_wrapper(part)]
        location = ".".join(parts)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key; check the spelling or remove it"
        elif "input" in error and error["type"] != "missing" and _short(error["input"]):
            message = f"{message} (got {error['input']!r})"
        lines.append(f"{path}: {location or '(top level)'}: {message}")
    return "\n".join(lines)


def _is_wrapper(part: Any) -> bool:
    # Pydantic adds the validator kind (e.g. "function-after[...]") to some locations.
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _short(value: Any) -> bool:
    return not isinstance(value, (dict, list)) or len(repr(value)) < 60
