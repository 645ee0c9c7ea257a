"""Ray's token authentication, as this process's Ray clients use it.

Ray reads ``RAY_AUTH_MODE`` and the token once and caches both, so changing the
environment alone does not reach a client created later in the same process; these
helpers refresh Ray's cached configuration and token as well.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


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


def _refresh() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
