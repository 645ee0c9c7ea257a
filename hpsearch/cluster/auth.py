"""Ray's token authentication, as this process's Ray clients use it.

Ray reads ``RAY_AUTH_MODE`` and the token once and caches both, so changing the
environment alone does not reach a client created later in the same process; these
helpers refresh Ray's cached configuration and token as well.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from hpsearch.errors import HpsearchError

TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def create_token_file(path: Path) -> Path:
    """A new Ray token in ``path``, created mode 600 (never readable by others, not even briefly).

    An existing file is kept, once checked by :func:`check_token_file`.
    """
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return check_token_file(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(generate_new_authentication_token())
    return path


def check_token_file(path: Path) -> Path:
    """``path``, if only its owner can read it.

    Raises:
        HpsearchError: Group or others may read or write it.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise HpsearchError(f"{path}: Ray token readable by other users (mode {mode:o}); `chmod 600 {path}`")
    return path


def enable_token_if_given() -> None:
    """Token mode when the user exported a token but not ``RAY_AUTH_MODE``.

    A user who exported ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` clearly means to use it.
    """
    if "RAY_AUTH_MODE" not in os.environ and any(v in os.environ for v in TOKEN_VARIABLES):
        os.environ["RAY_AUTH_MODE"] = "token"
        _refresh()


@contextlib.contextmanager
def token_env(token_path: Path) -> Iterator[None]:
    """Ray client calls inside use the token in ``token_path``; the environment is restored."""
    values = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    _refresh()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _refresh()


def use_token_file(path: Path) -> None:
    """Token mode with the token in ``path``, for this process and every process it starts."""
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)})
    _refresh()


def _refresh() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
